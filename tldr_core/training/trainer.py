"""One trainer for every network here: the codec, its phone listener, the speech LM's backbone and adapters.

A `Task` says what is learnt: the network whose weights are saved, the parameters that learn, the loss, a
batch for each step and the validation figures. The `Trainer` does the rest, the same way for all of them:
AdamW, the learning-rate schedule (schedule.py), gradients clipped to norm 1, bfloat16 autocast where the
hardware has it, DistributedDataParallel under torchrun (RANK / WORLD_SIZE set: every process draws its own
batches, NCCL on GPUs, gloo on CPUs), validation every `validate_every` steps on rank 0, a progress bar, and
atomic checkpoints (temp file + rename) holding the weights, the optimiser, the step and the history. A task
draws each batch from a generator seeded by (seed, step[, rank]), so `--resume` continues exactly the run
that was interrupted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tldr_core.files import atomic_path
from tldr_core.training.schedule import warmup_cosine

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint with the lowest `Task.best_by` figure so far (for tasks that name one)


# ------------------------------------------------------------------------------------------ processes

@dataclass
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE_CPU = Process(0, 1, torch.device("cpu"))


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


def train_step(objective: nn.Module, batch: Any, optimiser: torch.optim.Optimizer,
               trainable: list[nn.Parameter], amp: torch.autocast) -> torch.Tensor:
    """One update: the loss under `amp`, its gradients, clipped to norm 1, and the optimiser's step."""
    with amp:
        loss = objective(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimiser.step()
    return loss


# ---------------------------------------------------------------------------------------------- task

@dataclass
class Optimisation:
    """How a task's parameters learn: AdamW over `steps`, the schedule's peak, warm-up and floor (a fraction of
    the peak), and how often rank 0 validates."""

    steps: int
    lr: float
    warmup: int
    floor: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    validate_every: int = 200
    precision: str = "float32"  # "float32", "bfloat16" autocast, or "auto" (bfloat16 where the hardware has it)


class Task:
    """What one run learns; each recipe (codec, listener, backbone, adapter) subclasses it."""

    model: nn.Module                # whose state_dict the checkpoints hold
    objective: nn.Module            # forward(batch) -> scalar loss; wrapped in DDP when world > 1
    trainable: list[nn.Parameter]   # the parameters that learn, in the optimiser's order
    best_by: str | None = None      # a validation figure (lower is better) that best.pt follows

    def batch(self, step: int, process: Process) -> Any:
        """The training batch of `step` on this process, on its device."""
        raise NotImplementedError

    def at_step(self, step: int) -> None:
        """Per-step knobs besides the learning rate (the codec's phone weight, the backbone's alignment prior)."""

    def validate(self) -> dict[str, float]:
        """Figures on held-out data; the trainer calls it without gradients, with the objective in eval mode."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What every checkpoint holds besides the weights, optimiser, step and history: configs, provenance."""
        return {}


def make_optimiser(trainable: list[nn.Parameter], opt: Optimisation) -> torch.optim.AdamW:
    return torch.optim.AdamW(trainable, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas)


# ----------------------------------------------------------------------------------------------- loop

class Trainer:
    """Runs a Task to `opt.steps`, checkpointing into `out` at every validation."""

    def __init__(self, opt: Optimisation, out: Path, process: Process = ONE_CPU, desc: str = "training"):
        self.opt, self.out, self.process, self.desc = opt, Path(out), process, desc

    def run(self, task: Task, state: dict | None = None) -> list[dict]:
        """Train from the start, or from `state` (a checkpoint of this run: its optimiser, step and history; the
        task has loaded its weights already). Returns the validation history."""
        opt, process = self.opt, self.process
        objective = task.objective
        if process.world > 1:
            objective = DistributedDataParallel(objective, device_ids=[process.device.index]
                                                if process.device.type == "cuda" else None)
        optimiser = make_optimiser(task.trainable, opt)
        step, history = 0, []
        if state is not None:
            optimiser.load_state_dict(state["optimiser"])
            step, history = state["step"], state["history"]
        amp = autocast(opt.precision, process.device)
        bar = tqdm(total=opt.steps, initial=step, desc=self.desc, unit="step", disable=not process.main)
        started = time.time()
        while step < opt.steps:
            batch = task.batch(step, process)
            for group in optimiser.param_groups:
                group["lr"] = warmup_cosine(step, peak=opt.lr, steps=opt.steps, warmup=opt.warmup, floor=opt.floor)
            task.at_step(step)
            loss = train_step(objective, batch, optimiser, task.trainable, amp)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % opt.validate_every == 0 or step == opt.steps:
                if process.main:
                    with amp, torch.no_grad():
                        task.objective.eval()
                        figures = task.validate()
                        task.objective.train()
                    history.append({"step": step, "train": loss.item(), **figures,
                                    "seconds": round(time.time() - started, 1)})
                    bar.write(json.dumps(history[-1]))
                    self._save(task, optimiser, step, history)
                if process.world > 1:
                    dist.barrier()
        bar.close()
        return history

    def _save(self, task: Task, optimiser: torch.optim.Optimizer, step: int, history: list[dict]) -> None:
        state = {**task.describe(), "model": task.model.state_dict(), "optimiser": optimiser.state_dict(),
                 "step": step, "history": history}
        self._write(self.out / CHECKPOINT, state)
        if task.best_by is not None and history[-1][task.best_by] <= min(h.get(task.best_by, float("inf"))
                                                                        for h in history):
            self._write(self.out / BEST, state)

    @staticmethod
    def _write(path: Path, state: dict) -> None:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
