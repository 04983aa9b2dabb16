"""`tldr-voice train backbone` and `tldr-voice train tldr`: one training loop, single process or torchrun.

Under torchrun (RANK / WORLD_SIZE set) every process draws its own batches, DistributedDataParallel
averages the gradients (NCCL on GPUs, gloo on CPUs), and rank 0 alone validates, writes checkpoints and
shows the progress bar. Batches come from a generator seeded by (seed, step, rank), so `--resume`
continues exactly the run that was interrupted. Checkpoints are written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tldr_core.errors import CorpusError, ModelError
from tldr_core.files import atomic_path, file_sha256
from tldr_core.model import MAX_PROMPT_TOKENS, Backbone, ModelConfig, Tldr, TldrConfig
from tldr_core.model_store import load_backbone, load_weights, read_checkpoint
from tldr_core.training import data
from tldr_core.training.objectives import BackboneObjective, TldrObjective
from tldr_core.training.schedule import warmup_cosine

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """The recipe, stored in every checkpoint."""

    steps: int = 2000
    batch: int = 8                 # utterances per process and step
    max_prompt: int = MAX_PROMPT_TOKENS
    alignment_prior: float = 0.0   # backbone: fraction of the steps over which the alignment prior fades to zero
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    validate_every: int = 200
    seed: int = 0
    threads: int = 1               # torch threads per process on CPU
    precision: str = "auto"        # "bfloat16" autocast, "float32", or "auto": bfloat16 where the hardware has it
    shippable_only: bool = True    # train only on rows whose licence lets the weights ship
    batches: str = "similar"       # "similar": utterances of similar length (less padding, ~1.3x faster a step);
                                   # "random": a random mix (learns more per step: docs/MODEL.md)

    def __post_init__(self) -> None:
        # refused here, before a run spends minutes tokenizing the corpus
        if self.batches not in ("similar", "random"):
            raise ValueError(f"batches must be similar or random, not {self.batches!r}")


# ------------------------------------------------------------------------------------------ processes

@dataclass
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_process(device: str) -> Process:
    """Join the torchrun group when launched by torchrun; otherwise a group of one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Process(rank, world, dev)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast on CUDA, and on CPUs with native bfloat16 (AMX or AVX-512 BF16: matrix products ~4x,
    a whole training step ~1.4x faster than float32 here); float32 on other CPUs, where bfloat16 is emulated and
    slower. Weights, optimiser and losses stay float32 either way."""
    if precision == "auto":
        native = device.type == "cuda" or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        precision = "bfloat16" if native else "float32"
    if precision not in ("bfloat16", "float32"):
        raise ValueError(f"precision must be auto, bfloat16 or float32, not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


# ---------------------------------------------------------------------------------------------- loop

def _prior(cfg: TrainConfig, step: int) -> float:
    """Strength of the backbone's alignment prior: 1 at the start, fading linearly to 0 at alignment_prior x steps."""
    return max(0.0, 1 - step / (cfg.alignment_prior * cfg.steps)) if cfg.alignment_prior else 0.0


@torch.no_grad()
def validate(objective: torch.nn.Module, items: list[data.Utterance], cfg: TrainConfig,
             device: torch.device) -> tuple[float, float]:
    """Mean loss over fixed batches of the held-out speakers (the same batches at every validation), and over
    the same batches with each utterance given another one's text: the gap between the two is what the model
    has learnt from reading the text (zero while it only continues the prompt's voice)."""
    objective.eval()  # also: no alignment prior, the model as inference will use it
    rng = np.random.default_rng([cfg.seed, 999])
    index = data.speakers_index(items)
    right, wrong = [], []
    for _ in range(max(1, min(8, len(items) // cfg.batch))):
        batch = data.sample_batch(items, index, cfg.batch, cfg.max_prompt, rng)
        right.append(float(objective(batch.to(device))))
        swapped = replace(batch, text_ids=batch.text_ids[1:] + batch.text_ids[:1])
        wrong.append(float(objective(swapped.to(device))))
    objective.train()
    return float(np.mean(right)), float(np.mean(wrong))


def train_step(module: torch.nn.Module, batch: data.Batch, optimiser: torch.optim.Optimizer,
               trainable: list[torch.nn.Parameter], amp: torch.autocast) -> torch.Tensor:
    """One update: the loss under `amp`, its gradients, clipped to norm 1, and the optimiser's step."""
    with amp:
        loss = module(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimiser.step()
    return loss


def run(objective: torch.nn.Module, weights: torch.nn.Module, describe: dict, train_items, valid_items,
        cfg: TrainConfig, out: Path, process: Process, state: dict | None, desc: str) -> list[dict]:
    """The loop shared by both commands: trains `weights` (the backbone, or one Tldr) through `objective`;
    `describe` goes into every checkpoint next to them."""
    trainable = list(weights.parameters())
    module = objective
    if process.world > 1:
        module = DistributedDataParallel(objective, device_ids=[process.device.index] if process.device.type == "cuda"
                                         else None)
    optimiser = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, history = 0, []
    if state is not None:
        optimiser.load_state_dict(state["optimiser"])
        step, history = state["step"], state["history"]
    index = data.speakers_index(train_items)
    amp = autocast(cfg.precision, process.device)

    def save() -> None:
        with atomic_path(out / CHECKPOINT) as tmp:
            torch.save({**describe, "model": weights.state_dict(), "optimiser": optimiser.state_dict(),
                        "step": step, "history": history, "train_config": asdict(cfg)}, tmp)

    bar = tqdm(total=cfg.steps, initial=step, desc=desc, unit="step", disable=not process.main)
    started = time.time()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step, process.rank])
        batch = data.sample_batch(train_items, index, cfg.batch, cfg.max_prompt, rng,
                                  similar_length=cfg.batches == "similar").to(process.device)
        for group in optimiser.param_groups:
            group["lr"] = warmup_cosine(step, peak=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, floor=0.1)
        if hasattr(objective, "prior"):
            objective.prior = _prior(cfg, step)
        loss = train_step(module, batch, optimiser, trainable, amp)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.validate_every == 0 or step == cfg.steps:
            if process.main:
                with amp:
                    val, val_wrong_text = validate(objective, valid_items, cfg, process.device)
                history.append({"step": step, "train": loss.item(), "validation": val,
                                "validation_wrong_text": val_wrong_text,
                                "seconds": round(time.time() - started, 1)})
                bar.write(json.dumps(history[-1]))
                save()
            if process.world > 1:
                dist.barrier()
    bar.close()
    return history


def _prepare(corpus: Path, codec: Path | None, out: Path, cfg: TrainConfig, resume: bool, jobs: int,
             process: Process, tokens: Path) -> tuple[list, list, dict | None]:
    out.mkdir(parents=True, exist_ok=True)
    if (out / CHECKPOINT).exists() and not resume:
        raise CorpusError(f"'{out}' already holds a checkpoint: pass --resume to continue it, or choose another "
                          f"--out folder.")
    torch.set_num_threads(cfg.threads)
    if process.main:
        data.tokenize_corpus(corpus, codec, tokens, ("train", "validation"), cfg.shippable_only, jobs)
    if process.world > 1:
        dist.barrier()
    train = data.load_utterances(corpus, tokens, "train", cfg.shippable_only)
    valid = data.load_utterances(corpus, tokens, "validation", cfg.shippable_only)
    state = (read_checkpoint(out / CHECKPOINT, "training checkpoint",
                             "Start again in a new --out folder (without --resume).")
             if resume and (out / CHECKPOINT).exists() else None)
    return train, valid, state


def _start(state: dict | None, init: Path | None, kind: str, what: str) -> tuple[dict | None, dict | None]:
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


def train_backbone(corpus: Path, out: Path, cfg: TrainConfig, model_cfg: ModelConfig, codec: Path | None = None,
                   resume: bool = False, jobs: int = 2, device: str = "auto", init: Path | None = None) -> list[dict]:
    process = start_process(device)
    train, valid, state = _prepare(corpus, codec, Path(out), cfg, resume, jobs, process, Path(out) / "tokens")
    codec_sha256 = (Path(out) / "tokens" / "codec.sha256").read_text().strip()
    start, started_from = _start(state, init, "backbone", "backbone")
    if state is None and start is not None and start.get("codec_sha256") != codec_sha256:
        raise CorpusError(f"The backbone '{init}' was trained on the tokens of another codec than '{codec}': "
                          f"continue it with the codec it was trained on (--codec).")
    if start is not None:
        model_cfg = ModelConfig(**start["model_config"])
    else:
        model_cfg.tokens_per_phoneme = data.tokens_per_phoneme(train)
        model_cfg.speech_vocab = data.codec_vocab_size(codec)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    backbone = Backbone(model_cfg)
    if start is not None:
        load_weights(backbone, start)
    backbone.to(process.device)
    describe = {"kind": "backbone", "model_config": model_cfg.to_dict(), "codec_sha256": codec_sha256,
                "init": started_from}
    return run(BackboneObjective(backbone), backbone, describe, train, valid, cfg, Path(out), process, state,
               "training backbone")


def train_tldr(corpus: Path, backbone_path: Path, out: Path, cfg: TrainConfig, tldr_cfg: TldrConfig,
               codec: Path | None = None, resume: bool = False, jobs: int = 2, device: str = "auto",
               init: Path | None = None) -> list[dict]:
    process = start_process(device)
    # the adapters must see the very tokens the backbone saw: reuse its run's token folder when there is one
    shared = Path(backbone_path).parent / "tokens"
    tokens = shared if (shared / "codec.sha256").exists() else Path(out) / "tokens"
    train, valid, state = _prepare(corpus, codec, Path(out), cfg, resume, jobs, process, tokens)
    backbone = load_backbone(backbone_path).to(process.device)
    start, started_from = _start(state, init, "tldr", "TLDR adapter")  # --init: a head start, not a match
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
