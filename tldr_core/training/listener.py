"""A phone listener over vocoder frames: the codec decoder's intelligibility loss (training only).

The decoder is trained with L1 on the frames, so where the tokens leave a sound open it decodes the mean of the
candidates: an envelope between two phones that Whisper hears as neither. The listener is a small
convolutional network that reads the manifest's phones (CTC) from the *original* frames of the training clips,
speaker-normalised as the decoder outputs them. Frozen, it then listens to the *decoded* frames of the same
clips, and its CTC loss joins the decoder's (`train codec --listener-weight W`): the decoder is pulled toward
frames whose phones can be told apart, while the reconstruction loss keeps them close to the original.

It never sees the judges (Whisper, the evaluation speaker encoder), it is not exported, and nothing at run time
needs it. It learns from the codec's feature cache and its own frames only, so one listener serves any codec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tldr_core.codec.features import CONFIG as FEATURES
from tldr_core.codec.model import PHONES, Batch, ResBlock, fit_scales, normalise, phone_error_rate
from tldr_core.errors import ModelError
from tldr_core.files import atomic_path
from tldr_core.model_store import read_checkpoint
from tldr_core.training.codec_data import collate, sample_batch
from tldr_core.training.trainer import CHECKPOINT, Optimisation, Process, Task, Trainer

LISTENER = "listener.pt"


@dataclass
class ListenerConfig:
    """Sizes and the training recipe (`steps` of `batch` whole clips); stored in its file."""

    channels: int = 192
    blocks: int = 6               # dilations 1, 2, 4, 8, 1, 2 at 50 frames/s: about half a second each side
    steps: int = 2000
    batch: int = 12
    lr: float = 2e-3
    warmup: int = 100
    scale: list[float] | None = None  # per-dimension spread of the training frames (set by `train_listener`)


class Listener(nn.Module):
    """Speaker-normalised frames (B, T, dim), voicing as a probability -> phone CTC log-probabilities at 50/s."""

    def __init__(self, cfg: ListenerConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.register_buffer("scale", torch.tensor(cfg.scale or [1.0] * FEATURES.dim, dtype=torch.float32))
        self.inp = nn.Conv1d(FEATURES.dim, c, 5, padding=2)
        self.down = nn.Conv1d(c, c, 4, stride=2, padding=1)  # 100 -> 50 frames/s: still ~4 per phone
        self.blocks = nn.ModuleList([ResBlock(c, 3, 2 ** (i % 4), causal=False) for i in range(cfg.blocks)])
        self.out = nn.Conv1d(c, 1 + len(PHONES), 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.down(F.gelu(self.inp((frames / self.scale).transpose(1, 2))))
        for block in self.blocks:
            h, _ = block(h)
        return self.out(F.gelu(h)).transpose(1, 2).log_softmax(-1)

    def ctc(self, frames: torch.Tensor, batch: Batch) -> torch.Tensor:
        """CTC loss of the batch's phones as heard in `frames` (the batch's own, or decoded from its tokens)."""
        log_probs = self(frames).transpose(0, 1)
        return F.ctc_loss(log_probs, batch.phones, (batch.lengths + 1) // 2, batch.phone_lengths, blank=0,
                          zero_infinity=True)

    def phone_error_rate(self, clips: list[tuple[torch.Tensor, np.ndarray]]) -> float:
        """Greedy phone error rate (%) over (frames (1, T, dim), phone ids) pairs."""
        with torch.no_grad():
            return phone_error_rate((self(frames)[0], phones) for frames, phones in clips)


def heard_frames(batch: Batch) -> torch.Tensor:
    """The batch's original frames as the listener hears them: speaker-normalised, like the decoder's output."""
    return normalise(batch.frames, batch.stats)


class ListenerObjective(nn.Module):
    """A batch -> the CTC loss of its phones as the listener hears its original frames."""

    def __init__(self, listener: Listener):
        super().__init__()
        self.listener = listener

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.listener.ctc(heard_frames(batch), batch)


class ListenerTask(Task):
    """The listener learns to read the phones of the training clips' original frames."""

    def __init__(self, model: Listener, train: list[dict], valid: list[dict], seed: int):
        self.model, self.objective = model, ListenerObjective(model)
        self.trainable = list(model.parameters())
        self.train, self.seed = train, seed
        self.held_out = [(heard_frames(collate([item])), item["phones"]) for item in valid]

    def batch(self, step: int, process: Process) -> Batch:
        return sample_batch(self.train, self.model.cfg.batch, np.random.default_rng([self.seed, 1, step]))

    def validate(self) -> dict[str, float]:
        return {"val_per": self.model.phone_error_rate(self.held_out)}

    def describe(self) -> dict:
        return {"listener_config": asdict(self.model.cfg)}


def train_listener(train: list[dict], valid: list[dict], out: Path, cfg: ListenerConfig, seed: int = 0) -> None:
    """Train a listener on cached clips (`codec_data.load_split` items) and write it atomically to `out`
    (`load_listener` gives it back, frozen). Its checkpoints go to a folder beside `out` (OUT/listener/), so an
    interrupted listener resumes; validation (every 500 steps) gives the phone error rate on held-out voices'
    original frames."""
    run = out.with_suffix("")
    state = (read_checkpoint(run / CHECKPOINT, "listener checkpoint", "Delete the folder and rerun.")
             if (run / CHECKPOINT).exists() else None)
    cfg = ListenerConfig(**state["listener_config"]) if state is not None else cfg
    cfg.scale = cfg.scale or fit_scales([item["frames"] for item in train])
    torch.manual_seed(seed)
    model = Listener(cfg)
    if state is not None:
        model.load_state_dict(state["model"])
    opt = Optimisation(steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, floor=0.05, weight_decay=1e-4,
                       validate_every=500)
    Trainer(opt, run, desc="training listener").run(ListenerTask(model, train, valid, seed), state)
    with atomic_path(out) as tmp:
        torch.save({"listener_config": asdict(cfg), "model": model.state_dict()}, tmp)


def load_listener(path: Path) -> Listener:
    """A trained listener, frozen, or a clear error for a missing or foreign file."""
    state = read_checkpoint(path, "listener", "Delete it and rerun: `train codec --listener-weight` trains one.")
    try:
        model = Listener(ListenerConfig(**state["listener_config"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"'{path}' is not a TLDR Voice listener or is damaged ({error}).") from None
    for param in model.parameters():
        param.requires_grad = False
    return model.eval()
