"""Voice tuning: the codec's decoder fine-tuned on the voice sample itself, once per voice.

Trained on 23 real speakers, the decoder renders each sound of a new voice the way its training voices make it, and
the voice is in exactly that: how this speaker shapes each sound, the slow part of the envelope (EXPERIMENTS.md,
"where the voice is missing"). The voice sample is a training pair for this one voice, since its tokens and its
analysed frames are both known, so a few hundred Adam steps on the decoder's weights teach it this speaker's
rendering, and, through the decoder's shared weights, also of the sounds the sample lacks (test-time adaptation; the
calibration only moves each frame by its nearest measured errors). The loss is the training reconstruction with the
envelope split in two: its slow part (a 5-frame average) is pulled to the sample's, its fast part held at the
untuned decoder's, so the fit learns the voice rather than the sample's frame-by-frame detail by heart (measured:
more voice for the words it costs than the whole reconstruction). It still buys voice with words, so it is a
setting, off by default. The sample is decoded with its middle as the voice memory, as speaking reads it. The tuned
weights replace the shipped ones in the same ONNX graph (by initializer name), so a tuned voice streams through the
same graph and its frames equal an offline decode's; they are kept in the user cache, once per voice.
"""

from __future__ import annotations

import copy
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tldr_core.codec.features import ENV
from tldr_core.codec.model import Codec, normalise, weighted
from tldr_core.errors import SaveError
from tldr_core.files import atomic_path

# every module the decoder graph runs (the tokenizer and the training-only phone head stay as they are)
DECODER_PARTS = ("dec_in", "cond", "memory", "dec_blocks", "up", "frame_cond", "frame_blocks", "out")
KEPT_VOICES = 32  # tuned decoders kept in the user cache (~9 MB each), the least recently used go first
SLOW_FRAMES = 5  # the envelope's slow part: its average over 50 ms, where the voice is


@dataclass(frozen=True)
class Tuning:
    """How a voice is tuned: Adam `steps` at `lr` on the sample's middle `max_frames`. Off (0 steps) by default: it
    buys voice with words (EXPERIMENTS.md, "Voice tuning"), so it is the user's choice (settings.VOICE_TUNINGS)."""

    steps: int = 0
    lr: float = 3e-4
    max_frames: int = 3000  # 30 s of sample; a step then takes about 0.1 s on one CPU core

    def key(self) -> str:
        return f"slow{SLOW_FRAMES}-{self.steps}-{self.lr:g}-{self.max_frames}"


def tune(codec: Codec, tokens: np.ndarray, frames: np.ndarray, memory: tuple[np.ndarray, np.ndarray],
         embedding: np.ndarray, stats: np.ndarray, tuning: Tuning, progress: Callable[[float], None] | None = None,
         cancel: Callable[[], bool] | None = None) -> dict[str, np.ndarray] | None:
    """The decoder's weights tuned on one voice sample: its (N,) token ids and (fN, dim) frames, the voice memory's
    (token ids, frames), its embedding and statistics -> {initializer name "codec.<parameter>": array} of every
    decoder weight; None when `cancel` said so. `codec` itself is not changed; `progress` hears the fraction done."""
    model = copy.deepcopy(codec)
    fpt = model.cfg.frames_per_token
    whole = min(len(tokens), len(frames) // fpt)
    n = min(whole, tuning.max_frames // fpt)
    start = (whole - n) // 2
    q = model.pad_window(model.fsq.from_index(torch.from_numpy(tokens[start:start + n].astype(np.int64))[None]))
    target = torch.from_numpy(frames[start * fpt:(start + n) * fpt].astype(np.float32))[None]
    stats_t = torch.from_numpy(stats.astype(np.float32))[None]
    cond = model.conditioning(torch.from_numpy(embedding.astype(np.float32))[None], stats_t)
    memory_q = model.fsq.from_index(torch.from_numpy(memory[0].astype(np.int64))[None])
    memory_frames = torch.from_numpy(memory[1].astype(np.float32))[None]

    def decoded() -> torch.Tensor:
        memory_read = (model.remember(memory_q, memory_frames, stats_t, torch.tensor([memory_frames.shape[1]]))
                       if model.memory is not None else None)
        return model.decode_normalised(q, cond, memory=memory_read)[0]

    with torch.no_grad():
        untuned = decoded()[..., ENV]
    slow_target = slow((normalise(target, stats_t) / model.scale)[..., ENV])
    untuned_fast = untuned - slow(untuned)
    decoder = {name: p for name, p in model.named_parameters() if name.split(".")[0] in DECODER_PARTS}
    for name, p in model.named_parameters():
        p.requires_grad_(name in decoder)
    optimiser = torch.optim.Adam(decoder.values(), lr=tuning.lr)
    with torch.enable_grad():  # also when the caller decodes under no_grad
        for step in range(tuning.steps):
            if cancel is not None and cancel():
                return None
            pred = decoded()
            parts = model.reconstruction(pred, target, stats_t, torch.tensor([target.shape[1]]))
            envelope = pred[..., ENV]
            smooth = slow(envelope)
            parts["env"] = (smooth - slow_target).abs().mean() + (envelope - smooth - untuned_fast).abs().mean()
            loss = weighted(parts)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if progress is not None:
                progress((step + 1) / tuning.steps)
    return {f"codec.{name}": p.detach().numpy().copy() for name, p in decoder.items()}


def slow(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, dim) frames -> their average over SLOW_FRAMES frames around each (fewer at the ends)."""
    return F.avg_pool1d(frames.transpose(1, 2), SLOW_FRAMES, 1, SLOW_FRAMES // 2,
                        count_include_pad=False).transpose(1, 2)


def read_tuned(path: Path) -> dict[str, np.ndarray] | None:
    """A voice's tuned weights kept by `keep_tuned`, or None when there are none or they are damaged (the voice is
    then tuned again)."""
    try:
        with np.load(path) as kept:
            weights = {name: kept[name] for name in kept.files}
        path.touch()  # recently used: kept longest
        return weights
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def keep_tuned(path: Path, weights: dict[str, np.ndarray]) -> None:
    """Keep a voice's tuned weights (whole or not at all), and only the KEPT_VOICES most recently used; a cache that
    cannot be written (read-only, full disk) only costs tuning the voice again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as part:
            with open(part, "wb") as file:
                np.savez(file, **weights)
        for old in sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)[KEPT_VOICES:]:
            old.unlink(missing_ok=True)
    except (OSError, SaveError):
        pass
