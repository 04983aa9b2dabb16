"""`tldr-voice train own-tokens`: the codec's decoder fine-tuned on the speech model's own tokens.

Every earlier decoder stage learns from recordings' tokens, but in use the decoder hears the speech model's: the
same vocabulary, used differently (sequences no recording makes, sounds held or cut short). Here the speech model
speaks the corpus's training sentences (token level and TLDR k=4, each in the voice of another clip of its
speaker), and the decoder learns to make those tokens heard: each sentence is decoded in its voice (voice memory),
corrected by the voice calibration as the app corrects it, and the frozen phone listener of the decoder's training
(training/listener.py) reads the sentence's phones in the frames, half as decoded and half as corrected. There is
no frame target for the model's tokens, so an L1 anchor holds the frames near the starting decoder's. The
recording's own tokens can be a third kind of each sentence (`kinds` 0), heard the same way (measured: it keeps the
codec's round trip and gives back most of the gain). The tokenizer stays as it is, so the speech model that spoke
stays valid (its codec fingerprint is the tokenizer's); the checkpoint is a codec checkpoint, exported by
`tldr-voice codec export` like any other (docs/EXPERIMENTS.md, "The decoder fine-tuned on the speech model's own
tokens").

Two steps, both resumable: `speak_sentences` keeps one file per sentence in OUT/spoken (tokens, phones and the
voice they were spoken in: a few seconds each on a CPU), then the Trainer runs the decoder's fine-tuning.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tldr_core import audio
from tldr_core.codec.model import Batch, Codec, Memory, phone_targets
from tldr_core.codec.store import load_codec
from tldr_core.codec.tuning import DECODER_PARTS
from tldr_core.corpus import read_split
from tldr_core.errors import AudioInputError, CorpusError
from tldr_core.evaluation.model_eval import pick_rows
from tldr_core.files import atomic_path
from tldr_core.model_store import read_checkpoint
from tldr_core.settings import VOICE_MATCHES
from tldr_core.synthesis import BASELINE, TLDR, Synthesizer
from tldr_core.training.listener import load_listener
from tldr_core.training.trainer import CHECKPOINT, Optimisation, Process, Task, Trainer

SPOKEN = "spoken"  # OUT/spoken/<utterance id>.npz: one sentence as the speech model said it


@dataclass
class OwnTokensConfig:
    """The recipe; stored in the checkpoint (the defaults made the shipped decoder, run ot1: docs/EXPERIMENTS.md)."""

    sentences: int = 300          # training sentences spoken (round-robin over the train speakers)
    valid_sentences: int = 8      # validation speakers' sentences, for the validation figures
    # how each sentence is said: 1 = the model token by token, k = TLDR patches of k, 0 = the recording's own tokens
    kinds: tuple[int, ...] = (1, 4)
    min_voice_seconds: float = 3.0  # the other clip that gives the voice is at least this long
    steps: int = 300              # one sentence in one way per step
    lr: float = 1e-4              # constant (no warm-up, no decay): a small move from a trained decoder
    listener_weight: float = 0.5
    anchor: float = 2.0           # weight of the L1 distance to the starting decoder's frames
    calibrate: int = VOICE_MATCHES[0]  # the app's default voice match: neighbours of the calibration
    validate_every: int = 100
    seed: int = 0
    threads: int = 2
    shippable_only: bool = True   # only rows whose licence lets trained weights ship

    @classmethod
    def from_dict(cls, d: dict) -> "OwnTokensConfig":
        return cls(**{**d, "kinds": tuple(d["kinds"])})


# ------------------------------------------------------------------------------------ the model speaks

def speak_sentences(synth: Synthesizer, corpus: Path, split: str, count: int, spoken: Path, cfg: OwnTokensConfig
                    ) -> list[Path]:
    """The first `count` sentences of a split (round-robin over speakers, as `evaluate` picks them; only those that
    may ship, unless `cfg.shippable_only` is off) said in every kind of `cfg.kinds`, the model speaking each in the
    voice of another clip of its speaker: one file per sentence in `spoken`, made only where it is not there yet
    (so an interrupted run goes on)."""
    corpus = Path(corpus)
    rows = read_split(corpus, split, cfg.shippable_only)
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row)
    allowed = {row["id"] for row in rows}
    sentences = [row for row, _ in pick_rows(corpus, split, sys.maxsize) if row["id"] in allowed]  # all, in order
    rng = np.random.default_rng(cfg.seed)
    paths = []
    for n, row in enumerate(tqdm(sentences[:count], desc=f"speaking {split} sentences", unit="sentence")):
        others = [other for other in by_speaker[row["speaker"]] if other["id"] != row["id"]]
        if not others:
            continue  # no other clip of this speaker to give the voice
        # a random other clip long enough to be a voice sample, else the longest
        long_enough = [other for other in others if other["duration"] >= cfg.min_voice_seconds]
        choices = long_enough or [max(others, key=lambda other: other["duration"])]
        reference = choices[int(rng.integers(len(choices)))]  # drawn before the skip: a resumed run draws the same
        path = spoken / f"{row['id']}.npz"
        try:
            _speak_one(synth, corpus, row, reference, seed=n, path=path, cfg=cfg)
        except AudioInputError as error:  # e.g. a voice clip with too little speech: this sentence is left out
            tqdm.write(f"left out {row['id']}: {error}")
            continue
        paths.append(path)
    if not paths:
        raise CorpusError(f"None of the {split} sentences of '{corpus}' could be spoken: each needs another clip of "
                          f"its speaker with at least 2 s of speech as the voice.")
    return paths


def _speak_one(synth: Synthesizer, corpus: Path, row: dict, reference: dict, seed: int, path: Path,
               cfg: OwnTokensConfig) -> None:
    """Make what `path` lacks of one sentence (all of it, or the kinds added to the recipe since) and keep it."""
    kept = dict(np.load(path)) if path.exists() else {}
    missing = [k for k in cfg.kinds if f"k{k}" not in kept]
    if not missing:
        return
    if "embedding" not in kept or any(k > 0 for k in missing):  # the voice: the model speaks in it
        voice = synth.prepare_voice(audio.load_reference_clip(corpus / reference["path"]).samples)
        memory_tokens, memory_frames = voice.timbre.memory(synth.codec.backend.frames_per_token)
        kept.update(phones=phone_targets(row["phonemes"]), embedding=voice.embedding, stats=voice.stats,
                    memory_tokens=memory_tokens, memory_frames=memory_frames, reference=reference["id"])
    for k in missing:
        if k == 0:
            kept["k0"] = synth.codec.encode(audio.to_model_rate(*audio.read_audio(corpus / row["path"])))[0]
        else:
            kept[f"k{k}"] = synth.speech_tokens(row["text"], voice, BASELINE if k == 1 else TLDR, k, seed=seed)
    with atomic_path(path) as part:
        with open(part, "wb") as file:
            np.savez(file, **kept)


@dataclass
class Sentence:
    """One spoken sentence as the decoder trains on it: the ways it was said, its phones and its voice."""

    said: dict[int, torch.Tensor]  # kind (OwnTokensConfig.kinds) -> (1, N) token ids
    phones: torch.Tensor           # (1, L)
    embedding: torch.Tensor        # (1, 256)
    stats: torch.Tensor            # (1, 2 + n_env)
    memory_tokens: torch.Tensor    # (1, M): the voice clip's middle, as the voice memory and calibration read it
    memory_frames: torch.Tensor    # (1, fM, dim)

    @property
    def memory_lengths(self) -> torch.Tensor:
        return torch.tensor([self.memory_frames.shape[1]])

    @classmethod
    def load(cls, path: Path) -> "Sentence":
        with np.load(path) as f:
            said = {int(name[1:]): torch.from_numpy(f[name].astype(np.int64))[None] for name in f.files
                    if name.startswith("k")}
            return cls(said, torch.from_numpy(f["phones"].astype(np.int64))[None],
                       *(torch.from_numpy(f[name].astype(np.float32))[None] for name in ("embedding", "stats")),
                       torch.from_numpy(f["memory_tokens"].astype(np.int64))[None],
                       torch.from_numpy(f["memory_frames"].astype(np.float32))[None])


# ---------------------------------------------------------------------------------- the decoder learns

class OwnTokensObjective(nn.Module):
    """(a sentence, the kind it was said in) -> listener loss + anchor, for the decoder being trained."""

    def __init__(self, codec: Codec, start: Codec, listener: nn.Module, cfg: OwnTokensConfig):
        super().__init__()
        self.codec, self.cfg = codec, cfg
        self.frozen = [start, listener]  # judges, not parts of the model (a list: not registered as submodules)
        self.figures: dict[str, float] = {}

    def forward(self, item: tuple[Sentence, int]) -> torch.Tensor:
        sentence, k = item
        start, listener = self.frozen
        cond, memory = self._voice(self.codec, sentence)
        pred = self._decode(self.codec, sentence.said[k], cond, memory)
        with torch.no_grad():
            anchor_frames = self._decode(start, sentence.said[k], *self._voice(start, sentence))
        corrected = self.codec.calibrate(pred, self.codec.fsq.from_index(sentence.memory_tokens),
                                         sentence.memory_frames, sentence.stats, cond, memory,
                                         sentence.memory_lengths, self.cfg.calibrate)
        heard = Batch(frames=pred, embedding=sentence.embedding, stats=sentence.stats,
                      lengths=torch.tensor([pred.shape[1]]), phones=sentence.phones,
                      phone_lengths=torch.tensor([sentence.phones.shape[1]]))
        listened = sum(listener.ctc(self.codec.heard(y), heard) for y in (pred, corrected)) / 2
        anchor = (pred - anchor_frames).abs().mean()
        self.figures = {"listener": float(listened.detach()), "anchor": float(anchor.detach())}
        return self.cfg.listener_weight * listened + self.cfg.anchor * anchor

    @staticmethod
    def _voice(codec: Codec, sentence: Sentence) -> tuple[torch.Tensor, Memory]:
        """The sentence's voice as `codec` reads it: its conditioning and its voice memory of the voice clip."""
        memory = codec.remember(codec.fsq.from_index(sentence.memory_tokens), sentence.memory_frames,
                                sentence.stats, sentence.memory_lengths)
        return codec.conditioning(sentence.embedding, sentence.stats), memory

    @staticmethod
    def _decode(codec: Codec, tokens: torch.Tensor, cond: torch.Tensor, memory: Memory) -> torch.Tensor:
        """A whole sentence's normalised frames, decoded in its voice as the app decodes it."""
        return codec.decode_normalised(codec.pad_window(codec.fsq.from_index(tokens)), cond, memory=memory)[0]


class OwnTokensTask(Task):
    def __init__(self, codec: Codec, start: Codec, listener: nn.Module, train: list[Sentence],
                 valid: list[Sentence], cfg: OwnTokensConfig):
        self.model, self.train, self.valid, self.cfg = codec, train, valid, cfg
        self.objective = OwnTokensObjective(codec, start, listener, cfg)
        for name, param in codec.named_parameters():
            param.requires_grad = name.split(".")[0] in DECODER_PARTS
        self.trainable = [param for param in codec.parameters() if param.requires_grad]

    def batch(self, step: int, process: Process) -> tuple[Sentence, int]:
        rng = np.random.default_rng([self.cfg.seed, step, *([process.rank] if process.rank else [])])
        return self.train[int(rng.integers(len(self.train)))], self.cfg.kinds[int(rng.integers(
            len(self.cfg.kinds)))]

    def validate(self) -> dict[str, float]:
        sums = {"listener": 0.0, "anchor": 0.0}
        for sentence in self.valid:
            for k in self.cfg.kinds:
                self.objective((sentence, k))
                for name, value in self.objective.figures.items():
                    sums[name] += value
        return {f"val_{name}": value / (len(self.valid) * len(self.cfg.kinds)) for name, value in sums.items()}

    def describe(self) -> dict:
        # what a codec checkpoint holds, so `codec export` and `load_codec` read this one like any other
        return {"codec_config": self.model.cfg.to_dict(), "train_config": asdict(self.cfg), "frozen_tokenizer": True}


def train_own_tokens(corpus: Path, codec_dir: Path, model_dir: Path, listener_path: Path, out: Path,
                     cfg: OwnTokensConfig, resume: bool = False) -> list[dict]:
    """Speak the sentences (what is missing of them), then fine-tune the decoder of `codec_dir` (the codec the
    model in `model_dir` speaks) on them; returns the validation history. The checkpoint goes to OUT/checkpoint.pt."""
    corpus, out = Path(corpus), Path(out)
    torch.set_num_threads(cfg.threads)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise CorpusError(f"'{out}' already holds a checkpoint: pass --resume to continue it, or choose another "
                          f"--out folder.")
    state = (read_checkpoint(checkpoint, "training checkpoint", "Start again in a new --out folder (without --resume).")
             if resume and checkpoint.exists() else None)
    if state is not None:
        cfg = OwnTokensConfig.from_dict(state["train_config"])  # a resumed run keeps its recipe
    listener = load_listener(listener_path)
    synth = Synthesizer(model_dir, device="cpu", codec_dir=codec_dir)
    spoken = out / SPOKEN
    train = [Sentence.load(p) for p in speak_sentences(synth, corpus, "train", cfg.sentences, spoken, cfg)]
    valid = [Sentence.load(p) for p in speak_sentences(synth, corpus, "validation", cfg.valid_sentences, spoken, cfg)]
    del synth
    start = load_codec(codec_dir)
    for param in start.parameters():
        param.requires_grad = False
    codec = copy.deepcopy(start).train()
    if state is not None:
        codec.load_state_dict(state["model"])
    (out / "source.json").write_text(json.dumps({"codec": str(codec_dir), "model": str(model_dir),
                                                 "listener": str(listener_path)}, indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    task = OwnTokensTask(codec, start, listener, train, valid, cfg)
    opt = Optimisation(steps=cfg.steps, lr=cfg.lr, warmup=0, floor=1.0, weight_decay=0.0,
                       validate_every=cfg.validate_every)
    return Trainer(opt, out, desc="decoder on own tokens").run(task, state)
