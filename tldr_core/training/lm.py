"""`tldr-voice train backbone`, `train tldr` and `train aligner`: the speech LM's recipes for the Trainer.

Both train from the corpus's LM tokens (lm_data.py), single process or under torchrun (trainer.py does the
distribution, the schedule and the checkpoints): the backbone from random weights or from --init, a TLDR adapter
(compressor, LoRA, extractor) on a frozen backbone. Batches come from a generator seeded by (seed, step, rank).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tldr_core.errors import CorpusError, ModelError
from tldr_core.files import file_sha256
from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig, max_prompt_tokens
from tldr_core.model_store import load_backbone, load_weights, read_checkpoint
from tldr_core.training import lm_data
from tldr_core.training.objectives import AlignerObjective, BackboneObjective, TldrObjective
from tldr_core.training.trainer import CHECKPOINT, Optimisation, Process, Task, Trainer, start_process


@dataclass
class TrainConfig:
    """The recipe, stored in every checkpoint."""

    steps: int = 2000
    batch: int = 8                 # utterances per process and step
    max_prompt: int = 0            # prompt tokens at most; 0: PROMPT_MILLISECONDS at the tokens' rate
    alignment_prior: float = 0.0   # backbone: fraction of the steps over which the alignment prior fades to zero
    self_feed: float = 0.0         # backbone: share of its input tokens replaced by its own samples (objectives.py)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    validate_every: int = 200
    seed: int = 0
    threads: int = 1               # torch threads per process on CPU
    precision: str = "auto"        # "bfloat16" autocast, "float32", or "auto": bfloat16 where the hardware has it
    shippable_only: bool = True    # train only on rows whose licence lets the weights ship
    batches: str = "similar"       # "similar": utterances of similar length (less padding, ~1.3x faster a step);
                                   # "random": a random mix (learns more per step: docs/EXPERIMENTS.md)

    def __post_init__(self) -> None:
        # refused here, before a run spends minutes tokenizing the corpus
        if self.batches not in ("similar", "random"):
            raise ValueError(f"batches must be similar or random, not {self.batches!r}")


def _prior(cfg: TrainConfig, step: int) -> float:
    """Strength of the backbone's alignment prior: 1 at the start, fading linearly to 0 at alignment_prior x steps."""
    return max(0.0, 1 - step / (cfg.alignment_prior * cfg.steps)) if cfg.alignment_prior else 0.0


def validation_batches(items: list[lm_data.Utterance], cfg: TrainConfig) -> Iterator[lm_data.Batch]:
    """Up to 8 batches of the held-out speakers, the same ones at every validation (a fixed seed)."""
    rng = np.random.default_rng([cfg.seed, 999])
    index = lm_data.speakers_index(items)
    for _ in range(max(1, min(8, len(items) // cfg.batch))):
        yield lm_data.sample_batch(items, index, cfg.batch, cfg.max_prompt, rng)


def validate(objective: torch.nn.Module, items: list[lm_data.Utterance], cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Mean loss over fixed batches of the held-out speakers (the same batches at every validation), its parts
    (an objective's `figures`), and the loss over the same batches with each utterance given another one's text
    (and durations): the gap is what the model has learnt from reading the text (zero while it only continues
    the prompt's voice)."""
    right, wrong, parts = [], [], {}
    for batch in validation_batches(items, cfg):
        right.append(float(objective(batch.to(device))))
        for name, value in getattr(objective, "figures", {}).items():
            parts.setdefault(f"validation_{name}", []).append(value)
        swapped = replace(batch, text_ids=batch.text_ids[1:] + batch.text_ids[:1],
                          durations=batch.durations and batch.durations[1:] + batch.durations[:1])
        wrong.append(float(objective(swapped.to(device))))
    return {"validation": float(np.mean(right)), "validation_wrong_text": float(np.mean(wrong)),
            **{name: float(np.mean(values)) for name, values in parts.items()}}


class LmTask(Task):
    """The backbone or one TLDR adapter (`weights`), learning through its objective (objectives.py)."""

    def __init__(self, objective: torch.nn.Module, weights: torch.nn.Module, describe: dict,
                 train_items: list[lm_data.Utterance], valid_items: list[lm_data.Utterance], cfg: TrainConfig,
                 process: Process):
        self.objective, self.model, self.trainable = objective, weights, list(weights.parameters())
        self.train_items, self.valid_items, self.cfg = train_items, valid_items, cfg
        self.process = process
        self.index = lm_data.speakers_index(train_items)
        self._describe = {**describe, "train_config": asdict(cfg)}

    def batch(self, step: int, process: Process) -> lm_data.Batch:
        rng = np.random.default_rng([self.cfg.seed, step, process.rank])
        return lm_data.sample_batch(self.train_items, self.index, self.cfg.batch, self.cfg.max_prompt, rng,
                                    similar_length=self.cfg.batches == "similar").to(process.device)

    def at_step(self, step: int) -> None:
        if isinstance(self.objective, BackboneObjective):
            self.objective.prior = _prior(self.cfg, step)
            draws = np.random.default_rng([self.cfg.seed, step, self.process.rank, 1])
            self.objective.seed = int(draws.integers(2 ** 62))

    def validate(self) -> dict[str, float]:
        return validate(self.objective, self.valid_items, self.cfg, self.process.device)

    def describe(self) -> dict:
        return self._describe


def run(objective: torch.nn.Module, weights: torch.nn.Module, describe: dict, train_items, valid_items,
        cfg: TrainConfig, out: Path, process: Process, state: dict | None, desc: str) -> list[dict]:
    """Train `weights` (the backbone, or one Tldr) through `objective` with the Trainer; `describe` goes into
    every checkpoint next to them."""
    return run_task(LmTask(objective, weights, describe, train_items, valid_items, cfg, process), cfg, out,
                    process, state, desc)


def run_task(task: LmTask, cfg: TrainConfig, out: Path, process: Process, state: dict | None,
             desc: str) -> list[dict]:
    """The speech LM's optimisation (every model over its tokens trains alike) for a task, with the Trainer."""
    opt = Optimisation(steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, floor=0.1, weight_decay=cfg.weight_decay,
                       betas=(0.9, 0.95), validate_every=cfg.validate_every, precision=cfg.precision)
    return Trainer(opt, out, process, desc).run(task, state)


def backbone_tokens(backbone_path: Path, out: Path) -> Path:
    """The tokens folder a model trained on a backbone reads: the backbone run's own when it is at hand (the very
    tokens the backbone saw), else OUT/tokens."""
    shared = Path(backbone_path).parent / "tokens"
    return shared if (shared / "codec.sha256").exists() else Path(out) / "tokens"


def prepare_run(corpus: Path, codec: Path | None, out: Path, cfg: TrainConfig, resume: bool, jobs: int,
                process: Process, tokens: Path) -> tuple[list, list, dict | None]:
    out.mkdir(parents=True, exist_ok=True)
    if (out / CHECKPOINT).exists() and not resume:
        raise CorpusError(f"'{out}' already holds a checkpoint: pass --resume to continue it, or choose another "
                          f"--out folder.")
    torch.set_num_threads(cfg.threads)
    if process.main:
        lm_data.tokenize_corpus(corpus, codec, tokens, ("train", "validation"), cfg.shippable_only, jobs)
    if process.world > 1:
        dist.barrier()
    if not cfg.max_prompt:  # resolved here, where the tokens' rate is known; the checkpoint records the number
        cfg.max_prompt = max_prompt_tokens(lm_data.tokens_per_second(tokens))
    train = lm_data.load_utterances(corpus, tokens, "train", cfg.shippable_only)
    valid = lm_data.load_utterances(corpus, tokens, "validation", cfg.shippable_only)
    state = (read_checkpoint(out / CHECKPOINT, "training checkpoint",
                             "Start again in a new --out folder (without --resume).")
             if resume and (out / CHECKPOINT).exists() else None)
    return train, valid, state


def starting_weights(state: dict | None, init: Path | None, kind: str, what: str) -> tuple[dict | None, dict | None]:
    """The weights a run starts from, and the record of where they came from: a resumed run's own checkpoint;
    else --init's (a training checkpoint or a packed model file, e.g. the shipped model's: training continues
    across machines whose /tmp is gone); else none, i.e. random weights."""
    if state is not None:
        return state, state.get("init")
    if init is None:
        return None, None
    start = read_checkpoint(init, what, "Name a checkpoint.pt or a packed model file with --init.")
    if start.get("kind") != kind:
        raise ModelError(f"'{init}' is not a {what} (it holds a {start.get('kind', 'file of another kind')}): "
                         f"name a {what} with --init.")
    return start, {"path": str(init), "sha256": file_sha256(init)}


def with_durations(model_cfg: ModelConfig, tokens: Path, aligner: Path | None, *splits: list) -> None:
    """A model with alignment hints trains on durations: from `aligner` (a codec checkpoint), or kept in
    `tokens` by its backbone's run."""
    if model_cfg.alignment_hints:
        for items in splits:
            lm_data.align_utterances(items, tokens, aligner)


def train_backbone(corpus: Path, out: Path, cfg: TrainConfig, model_cfg: ModelConfig, codec: Path | None = None,
                   resume: bool = False, jobs: int = 2, device: str = "auto", init: Path | None = None,
                   aligner: Path | None = None) -> list[dict]:
    process = start_process(device)
    if model_cfg.alignment_hints and aligner is None and not resume and init is None:
        raise CorpusError("A backbone with alignment hints learns from durations: name the checkpoint of the "
                          "codec that makes its tokens with --aligner.")
    train, valid, state = prepare_run(corpus, codec, Path(out), cfg, resume, jobs, process, Path(out) / "tokens")
    codec_sha256 = (Path(out) / "tokens" / "codec.sha256").read_text().strip()
    start, started_from = starting_weights(state, init, "backbone", "backbone")
    if state is None and start is not None and start.get("codec_sha256") != codec_sha256:
        raise CorpusError(f"The backbone '{init}' was trained on the tokens of another codec than '{codec}': "
                          f"continue it with the codec it was trained on (--codec).")
    if start is not None:
        model_cfg = ModelConfig(**start["model_config"])
    else:
        model_cfg.tokens_per_phoneme = lm_data.tokens_per_phoneme(train)
        model_cfg.speech_vocab = lm_data.codec_vocab_size(codec)
    with_durations(model_cfg, Path(out) / "tokens", aligner, train, valid)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    backbone = Backbone(model_cfg)
    if start is not None:
        load_weights(backbone, start)
    backbone.to(process.device)
    describe = {"kind": "backbone", "model_config": model_cfg.to_dict(), "codec_sha256": codec_sha256,
                "init": started_from}
    return run(BackboneObjective(backbone, self_feed=cfg.self_feed), backbone, describe, train, valid, cfg, Path(out),
               process, state, "training backbone")


def train_tldr(corpus: Path, backbone_path: Path, out: Path, cfg: TrainConfig, tldr_cfg: TldrConfig,
               codec: Path | None = None, resume: bool = False, jobs: int = 2, device: str = "auto",
               init: Path | None = None, aligner: Path | None = None) -> list[dict]:
    process = start_process(device)
    tokens = backbone_tokens(backbone_path, out)
    train, valid, state = prepare_run(corpus, codec, Path(out), cfg, resume, jobs, process, tokens)
    backbone = load_backbone(backbone_path).to(process.device)
    with_durations(backbone.cfg, tokens, aligner, train, valid)
    start, started_from = starting_weights(state, init, "tldr", "TLDR adapter")  # --init: a head start, not a match
    if state is None and start is not None and start["tldr_config"]["patch_size"] != tldr_cfg.patch_size:
        raise CorpusError(f"'{init}' is an adapter for patch size {start['tldr_config']['patch_size']}, "
                          f"not {tldr_cfg.patch_size}: name the adapter of the same patch size.")
    if start is not None:
        tldr_cfg = TldrConfig(**start["tldr_config"])
    torch.manual_seed(cfg.seed)
    tldr = Tldr(backbone, tldr_cfg)
    if start is not None:
        load_weights(tldr, start)
    tldr.to(process.device)
    describe = {"kind": "tldr", "tldr_config": tldr_cfg.to_dict(), "backbone_sha256": file_sha256(backbone_path),
                "init": started_from}
    return run(TldrObjective(backbone, tldr), tldr, describe, train, valid, cfg, Path(out), process, state,
               f"training TLDR k={tldr_cfg.patch_size}")


def train_aligner(corpus: Path, codec_path: Path | None, out: Path, cfg: TrainConfig, resume: bool = False,
                  jobs: int = 2, device: str = "auto") -> list[dict]:
    """`tldr-voice train aligner`: the phone head of an exported codec (whose head was not exported), trained on
    the corpus's tokens of that codec; OUT/checkpoint.pt is then a codec checkpoint to align with (--aligner)."""
    from tldr_core.codec.store import load_codec

    process = start_process(device)
    codec_path = codec_path or lm_data.default_codec()
    train, valid, state = prepare_run(corpus, codec_path, Path(out), cfg, resume, jobs, process, Path(out) / "tokens")
    codec = load_codec(codec_path)
    if state is not None:
        codec.load_state_dict(state["model"])
    codec.to(process.device)
    describe = {"kind": "codec", "codec_config": codec.cfg.to_dict(), "aligner_of": str(codec_path)}
    task = LmTask(AlignerObjective(codec), codec, describe, train, valid, cfg, process)
    task.trainable = list(codec.ctc_head.parameters())
    return run_task(task, cfg, Path(out), process, state, "training aligner")
