"""`tldr-voice train codec`: feature cache, training loop, validation, checkpoints, resume.

The WORLD analysis is the slow part (about 0.04 CPU-s per audio-s), so every utterance is analysed once
into OUT/cache/<id>.npz (frames padded to whole tokens + its SpeakerEncoder embedding), in parallel and
skipping what exists: an interrupted cache build resumes where it stopped. Training then runs from memory
on whole clips (the phone CTC loss needs a clip's whole transcript), batched by similar length and padded.
Checkpoints are written atomically (temp file + rename) and hold the optimiser and step, so `--resume`
continues the same run; batches are drawn from a generator seeded by (seed, step), so a resumed run sees
the same batches it would have seen. best.pt keeps the step with the lowest validation reconstruction
loss (the phone loss on held-out voices rises once the phone head overfits, while reconstruction still
improves).

`decoder_only_from` trains only the decoder of an existing codec, its tokenizer frozen: the tokens stay
the same, so a speech model trained on them stays valid (the codec fingerprint is the tokenizer's).
`listener_weight` adds the loss of a frozen phone listener on the decoded frames (codec/listener.py), trained
first in the same folder and from the same cache if OUT/listener.pt is not there yet.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tldr_core.codec.features import analyze
from tldr_core.codec.listener import LISTENER, Listener, ListenerConfig, load_listener, train_listener
from tldr_core.corpus import cache_utterances, read_split, similar_length_batch
from tldr_core.codec.model import (Batch, Codec, CodecConfig, fit_scales, phone_error_rate, phone_targets,
                                   reference_stats)
from tldr_core.errors import CorpusError, ModelError
from tldr_core.files import atomic_path, verified_manifest
from tldr_core.model_store import read_checkpoint
from tldr_core.training.schedule import warmup_cosine

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint with the lowest validation reconstruction loss so far


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
    shippable_only: bool = True   # only rows whose licence lets trained weights ship (`--all-rows`: every row)


# ----------------------------------------------------------------------------------------------- cache

@lru_cache(maxsize=1)
def _speaker_encoder():
    """One SpeakerEncoder per worker process (loading it costs more than embedding a clip)."""
    from tldr_core.speaker import SpeakerEncoder

    return SpeakerEncoder(device="cpu")


def _cache_one(job: tuple[str, str]) -> None:
    """Analyse one utterance into an .npz (run in a worker process, one thread each)."""
    torch.set_num_threads(1)
    from tldr_core.audio import read_audio, to_model_rate

    wav, out = job
    samples = to_model_rate(*read_audio(wav))
    frames = analyze(samples)
    pad = -len(frames) % CodecConfig.frames_per_token  # whole tokens: repeat the last frame
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    embedding = _speaker_encoder().embed(samples)
    with atomic_path(out) as tmp:
        np.savez(tmp, frames=frames, embedding=embedding, n_samples=len(samples))


def build_cache(corpus: Path, cache: Path, shippable_only: bool, jobs: int = 2) -> None:
    """Analyse every training and validation utterance not yet in the cache, in `jobs` processes (the test split
    is judged from its audio by `codec evaluate`, never from here)."""
    rows = [r for split in ("train", "validation") for r in read_split(corpus, split, shippable_only)]
    cache_utterances(corpus, rows, cache, _cache_one, jobs, "analysing corpus")


def load_split(corpus: Path, cache: Path, split: str, shippable_only: bool) -> list[dict]:
    """[{frames, embedding, stats, phones, n_samples, id}] of a split, from the cache and the manifest."""
    items = []
    for row in read_split(corpus, split, shippable_only):
        if not row.get("phonemes"):
            raise CorpusError(f"Utterance '{row['id']}' has no phonemes in the manifest: the codec's phone loss "
                              f"needs them (rebuild the corpus with `tldr-voice corpus build`).")
        with np.load(cache / f"{row['id']}.npz") as z:
            frames = z["frames"]
            items.append({"id": row["id"], "frames": frames, "embedding": z["embedding"],
                          "stats": reference_stats(frames), "phones": phone_targets(row["phonemes"]),
                          "n_samples": int(z["n_samples"])})
    return items


# ---------------------------------------------------------------------------------------------- batches

def collate(items: list[dict]) -> Batch:
    """Whole clips padded to the longest one (frames edge-padded, phones zero-padded), with their lengths."""
    length = max(len(it["frames"]) for it in items)
    n_phones = max(len(it["phones"]) for it in items)
    frames = np.stack([np.pad(it["frames"], ((0, length - len(it["frames"])), (0, 0)), mode="edge")
                       for it in items])
    phones = np.stack([np.pad(it["phones"], (0, n_phones - len(it["phones"]))) for it in items])
    return Batch(frames=torch.from_numpy(frames),
                 embedding=torch.from_numpy(np.stack([it["embedding"] for it in items])),
                 stats=torch.from_numpy(np.stack([it["stats"] for it in items])),
                 lengths=torch.tensor([len(it["frames"]) for it in items]), phones=torch.from_numpy(phones),
                 phone_lengths=torch.tensor([len(it["phones"]) for it in items]))


def sample_batch(items: list[dict], batch: int, rng: np.random.Generator) -> Batch:
    """`batch` whole clips of similar length (clips run from under 1 s to 16 s; a random mix would be mostly
    padding)."""
    chosen = similar_length_batch(np.array([len(it["frames"]) for it in items]), batch, rng)
    return collate([items[i] for i in chosen])


@torch.no_grad()
def validate(model: Codec, items: list[dict], listener: Listener | None = None,
             phone_head: bool = True) -> dict[str, float]:
    """Mean losses over whole validation clips (one at a time: no padding), and the greedy phone error rate.

    `phone_head=False` (a decoder-only run: the phone head is not trained, nor exported) leaves out the figures
    that read it: its CTC loss, the total that includes it, and the phone error rate."""
    model.eval()
    sums: dict[str, float] = {}
    readings = []
    for item in items:
        batch = collate([item])
        for k, v in model.loss(batch, listener.ctc if listener else None).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if phone_head:
            readings.append((model.phone_log_probs(model.encode(batch.frames, batch.stats))[0], item["phones"]))
    model.train()
    scores = {k: v / len(items) for k, v in sums.items()}
    if not phone_head:
        return {k: v for k, v in scores.items() if k not in ("ctc", "total")}
    return {**scores, "per": phone_error_rate(readings)}


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_codec(path: Path) -> Codec:
    """A trained Codec, in eval mode, from a training checkpoint (.pt) or an exported folder (so the shipped
    codec's decoder can be retrained on its tokens); a clear error for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        return _codec_from_export(path)
    state = read_checkpoint(path, "codec checkpoint", "Train one with `tldr-voice train codec`.")
    try:
        model = Codec(CodecConfig.from_dict(state["codec_config"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"'{path}' is not a TLDR Voice codec checkpoint or is damaged ({error}).") from None
    return model.eval()


def _codec_from_export(folder: Path) -> Codec:
    """The Codec whose weights an exported folder holds: its config from codec.json, its weights from the two
    ONNX graphs' initializers (named `codec.<parameter>`). The training-only phone head is not exported and
    comes back untrained, which a decoder-only run never uses."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
        from onnx import numpy_helper
    except ImportError:
        raise ModelError("Reading an exported codec's weights needs the onnx package: "
                         "pip install -e '.[export]'.") from None
    restore = "Export a codec checkpoint with `tldr-voice codec export`, or pass the checkpoint itself."
    verified_manifest(folder, "codec", restore)
    try:
        meta = json.loads((folder / "codec.json").read_text())
        model = Codec(CodecConfig.from_dict(meta["config"]))
        weights = {}
        for graph in ("tokenizer.onnx", "decoder.onnx"):
            for tensor in onnx.load(str(folder / graph)).graph.initializer:
                if tensor.name.startswith("codec."):
                    weights[tensor.name.removeprefix("codec.")] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, DecodeError) as error:
        raise ModelError(f"'{folder}' does not hold an exported TLDR Voice codec ({error}). {restore}") from None
    lost = [name for name in missing if not name.startswith("ctc_head.")]
    if lost or unexpected:
        raise ModelError(f"The codec in '{folder}' does not match its codec.json (missing {lost[:3]}, unexpected "
                         f"{unexpected[:3]}). {restore}")
    return model.eval()


def _freeze_tokenizer(model: Codec) -> list[torch.nn.Parameter]:
    """Stop the tokenizer's parameters from learning; returns the ones that still do (the decoder's)."""
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith("enc_")
    return [param for param in model.parameters() if param.requires_grad]


def phone_weight_at(step: int, full: float, warmup: int) -> float:
    """Phone (CTC) loss weight at a step: rising linearly from 0 over `warmup` steps, so that the codes form before
    the phone loss pulls on them (weight 1.0 from step 0 collapsed them in run 4)."""
    return full * min(1.0, (step + 1) / max(1, warmup))


def train_codec(corpus: Path, out: Path, cfg: TrainConfig, resume: bool = False,
                codec_cfg: CodecConfig | None = None, decoder_only_from: Path | None = None) -> list[dict]:
    """Train (or resume) a codec on the corpus's train split; returns the validation history.

    With `decoder_only_from` (a checkpoint or an exported folder) only that codec's decoder learns further."""
    corpus, out = Path(corpus), Path(out)
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise CorpusError(f"'{out}' already holds a codec checkpoint: pass --resume to continue it, or choose "
                          f"another --out folder.")
    build_cache(corpus, out / "cache", cfg.shippable_only, cfg.jobs)
    train = load_split(corpus, out / "cache", "train", cfg.shippable_only)
    valid = load_split(corpus, out / "cache", "validation", cfg.shippable_only)
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
        codec_cfg = CodecConfig.from_dict(state["codec_config"])
        model = Codec(codec_cfg)
    elif decoder_only_from is not None:
        model = load_codec(decoder_only_from).train()
        codec_cfg = model.cfg
    else:
        codec_cfg = codec_cfg or CodecConfig()
        codec_cfg.scale = fit_scales([item["frames"] for item in train])
        model = Codec(codec_cfg)
    trainable = _freeze_tokenizer(model) if frozen else list(model.parameters())
    optimiser = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, history = state["step"], state["history"]

    def save() -> None:
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                 "history": history, "codec_config": codec_cfg.to_dict(), "train_config": asdict(cfg),
                 "frozen_tokenizer": frozen}
        _save(checkpoint, state)
        if history[-1]["val_recon"] <= min(h.get("val_recon", math.inf) for h in history):
            _save(out / BEST, state)

    bar = tqdm(total=cfg.steps, initial=step, desc="training codec", unit="step")
    started = time.time()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        batch = sample_batch(train, cfg.batch, rng)
        for group in optimiser.param_groups:
            group["lr"] = warmup_cosine(step, peak=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, floor=0.05)
        parts = model.loss(batch, listener.ctc if listener else None)
        # fixed codes: the phone loss has no use
        phone_weight = 0.0 if frozen else phone_weight_at(step, codec_cfg.ctc_weight, cfg.phone_warmup)
        objective = parts["recon"] + phone_weight * parts["ctc"]
        if listener is not None:
            objective = objective + cfg.listener_weight * parts["listener"]
        optimiser.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{objective.item():.3f}")
        if step % cfg.validate_every == 0 or step == cfg.steps:
            scores = validate(model, valid, listener, phone_head=not frozen)
            history.append({"step": step, "train": objective.item(), "seconds": time.time() - started,
                            **{f"val_{k}": v for k, v in scores.items()}})
            bar.write(json.dumps(history[-1]))
            save()
    bar.close()
    return history
