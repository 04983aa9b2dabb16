"""`tldr-voice train draft`: SSD's draft model, a small Backbone distilled from the frozen backbone.

The draft reads the same sequences as the backbone ([speaker, phonemes, PROMPT, prompt, SOS, speech], its own
embeddings of them) and learns the backbone's next-token distributions (objectives.DraftObjective), so that
speculative decoding keeps as many of its proposals as possible. It trains on the backbone run's LM tokens
when that run's folder has them (as the TLDR adapters do), else on tokens made here with the codec given, which
must be the backbone's. Same Trainer, schedule, checkpoints and --resume as every other model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from tldr_core.errors import CorpusError, ModelError
from tldr_core.files import file_sha256
from tldr_core.model import Backbone, ModelConfig
from tldr_core.model_store import load_backbone, load_weights, read_checkpoint
from tldr_core.training.lm import (LmTask, TrainConfig, backbone_tokens, prepare_run, run_task, starting_weights,
                                   with_durations)
from tldr_core.training.objectives import DraftObjective
from tldr_core.training.trainer import start_process

DRAFT_SIZE = ModelConfig(dim=128, layers=2, heads=2, kv_heads=1, ffn=384)  # ~0.9 M parameters in the blocks


class DraftTask(LmTask):
    """The draft learns; validation (the LM's, lm.validate) reports the loss and its parts on the held-out
    speakers' fixed batches, among them `validation_acceptance`: the mean of sum_x min(p(x), q(x)) over speech
    positions, i.e. how often exact speculative sampling at temperature 1 would keep a drafted token."""

    best_by = "validation"


def draft_config(backbone: ModelConfig, size: ModelConfig) -> ModelConfig:
    """The draft's sizes from `size`, everything it shares with the backbone (vocabulary, positions, speaking
    rate) from the backbone."""
    return replace(backbone, dim=size.dim, layers=size.layers, heads=size.heads, kv_heads=size.kv_heads,
                   ffn=size.ffn)


def train_draft(corpus: Path, backbone_path: Path, out: Path, cfg: TrainConfig, size: ModelConfig = DRAFT_SIZE,
                codec: Path | None = None, resume: bool = False, jobs: int = 2, device: str = "auto",
                init: Path | None = None, distill: float = 1.0, data: float = 0.0,
                aligner: Path | None = None) -> list[dict]:
    process = start_process(device)
    tokens = backbone_tokens(backbone_path, out)
    train, valid, state = prepare_run(corpus, codec, Path(out), cfg, resume, jobs, process, tokens)
    backbone_state = read_checkpoint(backbone_path, "backbone")
    codec_sha256 = (tokens / "codec.sha256").read_text().strip()
    if backbone_state.get("codec_sha256") not in (None, codec_sha256):
        raise CorpusError(f"The backbone '{backbone_path}' was trained on the tokens of another codec than "
                          f"'{codec or 'the shipped codec'}': name its codec with --codec.")
    backbone = load_backbone(backbone_path).to(process.device)
    with_durations(backbone.cfg, tokens, aligner, train, valid)
    start, started_from = starting_weights(state, init, "draft", "draft model")
    model_cfg = ModelConfig(**start["model_config"]) if start is not None else draft_config(backbone.cfg, size)
    if model_cfg.speech_vocab != backbone.cfg.speech_vocab:
        raise ModelError(f"'{init}' is a draft over {model_cfg.speech_vocab} codes, the backbone speaks "
                         f"{backbone.cfg.speech_vocab}: start a new draft.")
    torch.manual_seed(cfg.seed)
    draft = Backbone(model_cfg)
    if start is not None:
        load_weights(draft, start)
    draft.to(process.device)
    describe = {"kind": "draft", "model_config": model_cfg.to_dict(), "backbone_sha256": file_sha256(backbone_path),
                "codec_sha256": codec_sha256, "init": started_from, "loss": {"distill": distill, "data": data}}
    task = DraftTask(DraftObjective(backbone, draft, distill, data), draft, describe, train, valid, cfg, process)
    return run_task(task, cfg, Path(out), process, state, "training draft")

