"""`tldr-voice train speed`: seconds per backbone training step under each precision and batching, in one run.

The claim it checks: bfloat16 autocast (where the hardware has it) and batches of similar length make a training
step faster without changing what is learnt from each utterance. The settings take turns step by step, after
untimed warm-up steps, so a busy spell of the machine falls on all of them alike and the speed-ups are ratios
inside the run. Batches are drawn from real tokens (a training run's token folder) as training draws them; the
backbone has the given sizes and random weights, since its speed does not depend on what it has learnt. A step is
the Trainer's own `train_step`: forward, backward, gradient clipping and the optimiser's update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tldr_core.errors import CorpusError
from tldr_core.model import Backbone, ModelConfig, max_prompt_tokens
from tldr_core.training import lm_data
from tldr_core.training.trainer import Optimisation, autocast, make_optimiser, train_step
from tldr_core.training.objectives import BackboneObjective

SETTINGS = (("float32", False), ("bfloat16", False), ("bfloat16", True))  # (precision, similar-length batches)


@dataclass
class SpeedResult:
    precision: str
    similar_length: bool
    seconds_per_step: float   # median over the timed steps
    padding: float            # share of the batches' sequence positions that are padding, mean
    speedup: float            # the first setting's seconds per step / this one's

    def line(self) -> str:
        batches = "similar lengths" if self.similar_length else "random mix"
        return (f"{self.precision:<9} {batches:<16}{self.seconds_per_step:>8.3f} s/step{self.speedup:>7.2f}x"
                f"   padding {self.padding:.0%}")


def _padding(batch: lm_data.Batch) -> float:
    lengths = [len(t) + batch.prompt.shape[1] + len(s) for t, s in zip(batch.text_ids, batch.speech)]
    return 1 - sum(lengths) / (len(lengths) * max(lengths))


def measure_training_speed(corpus: Path, tokens: Path, model_cfg: ModelConfig, batch: int = 8, steps: int = 6,
                           warmup: int = 2, device: str = "cpu", seed: int = 0) -> list[SpeedResult]:
    """Median seconds per training step of each of SETTINGS, on the training split's tokens in `tokens`."""
    if not (Path(tokens) / "codec.sha256").is_file():
        raise CorpusError(f"'{tokens}' holds no speech tokens: point --tokens at the tokens folder of a training "
                          f"run on this corpus (RUN/tokens, made by `tldr-voice train backbone`).")
    items = lm_data.load_utterances(corpus, Path(tokens), "train", shippable_only=True)
    if len(items) < batch:
        raise CorpusError(f"'{tokens}' holds {len(items)} training utterances, fewer than one batch of {batch}.")
    index = lm_data.speakers_index(items)
    max_prompt = max_prompt_tokens(lm_data.tokens_per_second(tokens))
    torch.manual_seed(seed)
    model_cfg = replace(model_cfg, speech_vocab=1 + max(int(it.tokens.max()) for it in items if len(it.tokens)))
    target = torch.device(device)
    backbone = Backbone(model_cfg).to(target)
    objective = BackboneObjective(backbone).train()
    trainable = list(backbone.parameters())
    optimiser = make_optimiser(trainable, Optimisation(steps=warmup + steps, lr=1e-4, warmup=0, floor=1.0,
                                                       weight_decay=0.01, betas=(0.9, 0.95)))
    times: dict[tuple[str, bool], list[float]] = {s: [] for s in SETTINGS}
    padding: dict[tuple[str, bool], list[float]] = {s: [] for s in SETTINGS}
    for step in range(warmup + steps):
        for precision, similar in SETTINGS:
            rng = np.random.default_rng([seed, step])  # the random-mix settings train on the same batches
            sample = lm_data.sample_batch(items, index, batch, max_prompt, rng, similar_length=similar)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            start = time.perf_counter()
            train_step(objective, sample.to(target), optimiser, trainable, autocast(precision, target))
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            if step >= warmup:
                times[(precision, similar)].append(time.perf_counter() - start)
                padding[(precision, similar)].append(_padding(sample))
    medians = {s: float(np.median(t)) for s, t in times.items()}
    first = medians[SETTINGS[0]]
    return [SpeedResult(p, s, medians[(p, s)], float(np.mean(padding[(p, s)])), first / medians[(p, s)])
            for p, s in SETTINGS]
