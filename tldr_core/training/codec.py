"""`tldr-voice train codec`: the codec's recipe for the Trainer (training/trainer.py).

The codec learns from the feature cache (codec_data.py) on whole clips: its reconstruction loss, the phone CTC loss
whose weight rises over `phone_warmup` steps, and optionally a frozen phone listener's loss on the decoded frames
(listener.py, `listener_weight`), trained first in the same folder from the same cache if OUT/listener.pt is not
there yet. best.pt keeps the step with the lowest validation reconstruction loss (the phone loss on held-out
voices rises once the phone head overfits, while reconstruction still improves).

`decoder_only_from` trains only the decoder of an existing codec, its tokenizer frozen: the tokens stay
the same, so a speech model trained on them stays valid (the codec fingerprint is the tokenizer's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tldr_core.codec.model import Batch, Codec, CodecConfig, fit_scales, phone_error_rate
from tldr_core.codec.store import load_codec
from tldr_core.codec.whisper_weights import load_whisper_encoder
from tldr_core.errors import CorpusError
from tldr_core.model_store import read_checkpoint
from tldr_core.training.codec_data import (add_whisper_features, build_cache, by_speaker, collate, collate_references,
                                          load_split, reference_piece, sample_batch)
from tldr_core.training.listener import LISTENER, Listener, ListenerConfig, load_listener, train_listener
from tldr_core.training.perceiver import Perceiver
from tldr_core.training.trainer import CHECKPOINT, Optimisation, Process, Task, Trainer


@dataclass
class TrainConfig:
    """The recipe; stored in every checkpoint next to the model's CodecConfig."""

    steps: int = 3000
    batch: int = 12               # whole clips
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    validate_every: int = 200
    seed: int = 0
    jobs: int = 2                 # processes analysing the corpus into the feature cache
    threads: int = 1             # torch threads; more than the idle cores makes each step many times slower
    phone_warmup: int = 0         # steps over which the phone (CTC) loss weight rises from 0 to its full value
    listener_weight: float = 0.0  # weight of the phone listener's loss on the decoded frames (0: no listener)
    listener_steps: int = 2000    # steps of the listener's own training, when OUT/listener.pt does not exist
    calibrate: int = 0            # > 0: the listener also hears the frames the voice calibration corrects with k
    perceiver_weight: float = 0.0  # weight of Whisper's hearing of the decoded frames (perceiver.py; 0: none)
    perceiver_clips: int = 4      # clips of each batch the perceiver hears (Whisper's encoder is the costly part)
    perceiver_frames: int = 400   # the middle frames of each (4 s)
    shippable_only: bool = True   # only rows whose licence lets trained weights ship (`--all-rows`: every row)


def phone_weight_at(step: int, full: float, warmup: int) -> float:
    """Phone (CTC) loss weight at a step: rising linearly from 0 over `warmup` steps, so that the codes form before
    the phone loss pulls on them (weight 1.0 from step 0 collapsed them in run 4)."""
    return full * min(1.0, (step + 1) / max(1, warmup))


class CodecObjective(nn.Module):
    """A batch -> the codec's training loss: reconstruction + weighted phone CTC (+ weighted listener, + weighted
    perceiver)."""

    def __init__(self, codec: Codec, listener: Listener | None, cfg: TrainConfig, perceiver: Perceiver | None = None):
        super().__init__()
        self.codec, self.calibrate = codec, cfg.calibrate
        self.hear = listener.ctc if listener is not None else None  # frozen judges, not parts of the model
        self.perceiver = perceiver
        self.listener_weight, self.perceiver_weight = cfg.listener_weight, cfg.perceiver_weight
        self.phone_weight = 0.0

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = self.codec.loss(batch, self.hear, self.calibrate, self.perceiver)
        objective = parts["recon"] + self.phone_weight * parts["ctc"]
        if self.hear is not None:
            objective = objective + self.listener_weight * parts["listener"]
        if self.perceiver is not None:
            objective = objective + self.perceiver_weight * parts["perceiver"]
        return objective


def validate(model: Codec, items: list[dict], listener: Listener | None = None,
             phone_head: bool = True, references: bool = False, seed: int = 0, calibrate: int = 0,
             perceiver: Perceiver | None = None) -> dict[str, float]:
    """Mean losses over whole validation clips (one at a time: no padding), and the greedy phone error rate.

    `phone_head=False` (a decoder-only run: the phone head is not trained, nor exported) leaves out the figures
    that read it: its CTC loss, the total that includes it, and the phone error rate. `references`: each clip
    decoded in the voice of a piece of another clip of its speaker, the same pieces at every validation."""
    sums: dict[str, float] = {}
    readings = []
    speakers = by_speaker(items)
    with torch.no_grad():
        for i, item in enumerate(items):
            batch = collate([item])
            if references:
                rng = np.random.default_rng([seed, i])
                batch.reference = collate_references([reference_piece(item, speakers[item["speaker"]], rng,
                                                                     model.cfg.frames_per_token)])
            for k, v in model.loss(batch, listener.ctc if listener else None, calibrate, perceiver).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if phone_head:
                q = model.encode(batch.frames, batch.stats, batch.features)
                readings.append((model.phone_log_probs(q)[0], item["phones"]))
    scores = {k: v / len(items) for k, v in sums.items()}
    if not phone_head:
        return {k: v for k, v in scores.items() if k not in ("ctc", "total")}
    return {**scores, "per": phone_error_rate(readings)}


class CodecTask(Task):
    best_by = "val_recon"

    def __init__(self, model: Codec, frozen: bool, listener: Listener | None, train: list[dict],
                 valid: list[dict], cfg: TrainConfig, perceiver: Perceiver | None = None):
        self.model, self.frozen, self.listener, self.train, self.valid, self.cfg = (model, frozen, listener, train,
                                                                                    valid, cfg)
        self.perceiver = perceiver
        self.objective = CodecObjective(model, listener, cfg, perceiver)
        self.trainable = _freeze_tokenizer(model) if frozen else list(model.parameters())
        self.speakers = by_speaker(train) if model.memory is not None else None  # where reference pieces come from

    def batch(self, step: int, process: Process) -> Batch:
        rank = [process.rank] if process.rank else []  # rank 0 draws what a single process draws
        return sample_batch(self.train, self.cfg.batch, np.random.default_rng([self.cfg.seed, step, *rank]),
                            self.speakers, self.model.cfg.frames_per_token)

    def at_step(self, step: int) -> None:
        # fixed codes: the phone loss has no use
        self.objective.phone_weight = (0.0 if self.frozen
                                       else phone_weight_at(step, self.model.cfg.ctc_weight, self.cfg.phone_warmup))

    def validate(self) -> dict[str, float]:
        scores = validate(self.model, self.valid, self.listener, phone_head=not self.frozen,
                          references=self.model.memory is not None, seed=self.cfg.seed, calibrate=self.cfg.calibrate,
                          perceiver=self.perceiver)
        return {f"val_{k}": v for k, v in scores.items()}

    def describe(self) -> dict:
        return {"codec_config": self.model.cfg.to_dict(), "train_config": asdict(self.cfg),
                "frozen_tokenizer": self.frozen}


def _with_memory(model: Codec, memory_dim: int) -> Codec:
    """The codec with a voice memory of that width added to its decoder (new, at zero output: it decodes as
    before until the memory learns), every other weight kept."""
    cfg = CodecConfig.from_dict({**model.cfg.to_dict(), "memory_dim": memory_dim})
    grown = Codec(cfg).train()
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("memory.") for name in missing), (missing, unexpected)
    return grown


def _freeze_tokenizer(model: Codec) -> list[torch.nn.Parameter]:
    """Stop the tokenizer's parameters from learning; returns the ones that still do (the decoder's)."""
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith("enc_")
    return [param for param in model.parameters() if param.requires_grad]


def train_codec(corpus: Path, out: Path, cfg: TrainConfig, resume: bool = False,
                codec_cfg: CodecConfig | None = None, decoder_only_from: Path | None = None,
                cache: Path | None = None) -> list[dict]:
    """Train (or resume) a codec on the corpus's train split; returns the validation history.

    With `decoder_only_from` (a checkpoint or an exported folder) only that codec's decoder learns further.
    `cache`: the corpus's feature cache (default OUT/cache); runs on one corpus can share one."""
    corpus, out = Path(corpus), Path(out)
    cache = Path(cache) if cache is not None else out / "cache"
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise CorpusError(f"'{out}' already holds a codec checkpoint: pass --resume to continue it, or choose "
                          f"another --out folder.")
    build_cache(corpus, cache, cfg.shippable_only, cfg.jobs)
    train = load_split(corpus, cache, "train", cfg.shippable_only)
    valid = load_split(corpus, cache, "validation", cfg.shippable_only)
    listener = None
    if cfg.listener_weight > 0:
        if not (out / LISTENER).exists():
            train_listener(train, valid, out / LISTENER, ListenerConfig(steps=cfg.listener_steps, batch=cfg.batch),
                           cfg.seed)
        listener = load_listener(out / LISTENER)  # frozen, whether just trained or kept from an earlier run

    state = (read_checkpoint(checkpoint, "training checkpoint", "Start again in a new --out folder (without --resume).")
             if resume and checkpoint.exists() else None)
    frozen = state.get("frozen_tokenizer", False) if state is not None else decoder_only_from is not None
    torch.manual_seed(cfg.seed)
    if state is not None:
        model = Codec(CodecConfig.from_dict(state["codec_config"]))
        model.load_state_dict(state["model"])
    elif decoder_only_from is not None:
        model = load_codec(decoder_only_from).train()
        if codec_cfg is not None and codec_cfg.memory_dim and codec_cfg.memory_dim != model.cfg.memory_dim:
            model = _with_memory(model, codec_cfg.memory_dim)
    else:
        codec_cfg = codec_cfg or CodecConfig()
        codec_cfg.scale = fit_scales([item["frames"] for item in train])
        model = Codec(codec_cfg)
    if model.cfg.source == "whisper":
        add_whisper_features(corpus, cache, cfg.shippable_only, cfg.jobs, train, valid)
    perceiver = (Perceiver(load_whisper_encoder(), cfg.perceiver_clips, cfg.perceiver_frames)
                 if cfg.perceiver_weight > 0 else None)
    task = CodecTask(model, frozen, listener, train, valid, cfg, perceiver)
    opt = Optimisation(steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, floor=0.05, weight_decay=cfg.weight_decay,
                       validate_every=cfg.validate_every)
    return Trainer(opt, out, desc="training codec").run(task, state)
