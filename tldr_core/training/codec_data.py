"""Corpus -> what the codec and its phone listener train on: each clip's frames, voice and phones.

The WORLD analysis is the slow part (about 0.04 CPU-s per audio-s), so every utterance is analysed once
into OUT/cache/<id>.npz (frames padded to whole 40 ms + its SpeakerEncoder embedding), in parallel and
skipping what exists: an interrupted cache build resumes where it stopped. Training then runs from memory
on whole clips (the phone CTC loss needs a clip's whole transcript), batched by similar length and padded.
A codec whose tokenizer reads the Whisper encoder (`CodecConfig.source == "whisper"`) also gets each clip's
encoder output, once, into OUT/cache/whisper/<id>.npz (float16, 50/s: one frame per two vocoder frames). The
cache does not depend on the token rate: codecs at 25 and 50 tokens/s share one.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tldr_core.codec.features import analyze
from tldr_core.codec.model import Batch, Reference, phone_targets, reference_stats
from tldr_core.corpus import cache_utterances, read_split, similar_length_batch
from tldr_core.errors import CorpusError
from tldr_core.files import atomic_path

FRAME_MULTIPLE = 4  # cached frames come in whole 40 ms, which every token rate (4 or 2 frames per token) divides

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
    pad = -len(frames) % FRAME_MULTIPLE  # repeat the last frame
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    embedding = _speaker_encoder().embed(samples)
    with atomic_path(out) as tmp:
        np.savez(tmp, frames=frames, embedding=embedding, n_samples=len(samples))


@lru_cache(maxsize=1)
def _whisper():
    """One frozen Whisper encoder per worker process."""
    from tldr_core.codec.whisper_weights import load_whisper_encoder

    return load_whisper_encoder()


def _whisper_one(job: tuple[str, str]) -> None:
    """One utterance's Whisper encoder output at 50/s (run in a worker process)."""
    torch.set_num_threads(1)
    from tldr_core.audio import read_audio, to_model_rate
    from tldr_core.codec.whisper import encoder_features

    wav, out = job
    samples = to_model_rate(*read_audio(wav))
    with atomic_path(out) as tmp:
        np.savez(tmp, features=encoder_features(samples, _whisper()).astype(np.float16))


def _rows(corpus: Path, shippable_only: bool) -> list[dict]:
    return [r for split in ("train", "validation") for r in read_split(corpus, split, shippable_only)]


def build_cache(corpus: Path, cache: Path, shippable_only: bool, jobs: int = 2) -> None:
    """Analyse every training and validation utterance not yet in the cache, in `jobs` processes (the test split
    is judged from its audio by `codec evaluate`, never from here)."""
    cache_utterances(corpus, _rows(corpus, shippable_only), cache, _cache_one, jobs, "analysing corpus")


def add_whisper_features(corpus: Path, cache: Path, shippable_only: bool, jobs: int, *splits: list[dict]) -> None:
    """Give every item of the splits its Whisper encoder output ("features", two frames per token), computing
    what the cache does not hold yet."""
    cache_utterances(corpus, _rows(corpus, shippable_only), cache / "whisper", _whisper_one, jobs, "Whisper encoder")
    for items in splits:
        for item in items:
            with np.load(cache / "whisper" / f"{item['id']}.npz") as z:
                item["features"] = fit_length(z["features"], len(item["frames"]) // 2)


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
                          "n_samples": int(z["n_samples"]), "speaker": row["speaker"]})
    return items


# ---------------------------------------------------------------------------------------------- batches

def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """The first `n` rows of x, the last one repeated if it has fewer (the encoder's and the vocoder's frame counts
    of a clip differ by a frame or two at its end)."""
    return x[:n] if len(x) >= n else np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def _stacked(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """Arrays of rows, each edge-padded (its last row repeated) to `n` rows, stacked."""
    return np.stack([fit_length(a, n) for a in arrays])


def by_speaker(items: list[dict]) -> dict[str, list[dict]]:
    """A split's items grouped by speaker: where a clip's reference pieces come from (`reference_piece`)."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["speaker"], []).append(item)
    return groups


def collate(items: list[dict]) -> Batch:
    """Whole clips padded to the longest one (frames edge-padded, phones zero-padded), with their lengths."""
    length = max(len(it["frames"]) for it in items)
    n_phones = max(len(it["phones"]) for it in items)
    phones = np.stack([np.pad(it["phones"], (0, n_phones - len(it["phones"]))) for it in items])
    features = None
    if "features" in items[0]:  # half as many as frames: padded alike
        features = torch.from_numpy(_stacked([it["features"] for it in items], length // 2)).float()
    return Batch(frames=torch.from_numpy(_stacked([it["frames"] for it in items], length)),
                 embedding=torch.from_numpy(np.stack([it["embedding"] for it in items])),
                 stats=torch.from_numpy(np.stack([it["stats"] for it in items])),
                 lengths=torch.tensor([len(it["frames"]) for it in items]), phones=torch.from_numpy(phones),
                 phone_lengths=torch.tensor([len(it["phones"]) for it in items]), features=features)


def sample_batch(items: list[dict], batch: int, rng: np.random.Generator,
                 speakers: dict[str, list[dict]] | None = None, frames_per_token: int = 0) -> Batch:
    """`batch` whole clips of similar length (clips run from under 1 s to 16 s; a random mix would be mostly
    padding); given the items `by_speaker` (and the codec's `frames_per_token`), each with a piece of another clip
    of its speaker (`reference_piece`)."""
    chosen = [items[i] for i in similar_length_batch(np.array([len(it["frames"]) for it in items]), batch, rng)]
    out = collate(chosen)
    if speakers is not None:
        out.reference = collate_references([reference_piece(item, speakers[item["speaker"]], rng, frames_per_token)
                                            for item in chosen])
    return out


# a voice sample is 3-15 s: references in training are as long, so the decoder learns from what users give it
REFERENCE_FRAMES = (300, 1500)


def reference_piece(item: dict, same_speaker: list[dict], rng: np.random.Generator, frames_per_token: int) -> dict:
    """A random 3-15 s piece (whole tokens) of another clip of the item's speaker (of the item itself only when the
    speaker has no other), with that clip's embedding and its own statistics."""
    others = [other for other in same_speaker if other["id"] != item["id"]] or [item]
    source = others[int(rng.integers(len(others)))]
    n_tokens = len(source["frames"]) // frames_per_token
    low, high = (n // frames_per_token for n in REFERENCE_FRAMES)
    want = min(n_tokens, int(rng.integers(low, high + 1)))
    start = int(rng.integers(0, n_tokens - want + 1)) * frames_per_token
    end = start + want * frames_per_token
    frames = source["frames"][start:end]
    piece = {"frames": frames, "embedding": source["embedding"], "stats": reference_stats(frames)}
    if "features" in source:  # Whisper's frames: one per two vocoder frames
        piece["features"] = fit_length(source["features"], len(source["frames"]) // 2)[start // 2:end // 2]
    return piece


def collate_references(pieces: list[dict]) -> Reference:
    """Reference pieces padded to the longest (edge-padded; the memory masks the padding out)."""
    length = max(len(p["frames"]) for p in pieces)
    features = None
    if "features" in pieces[0]:
        features = torch.from_numpy(_stacked([p["features"] for p in pieces], length // 2)).float()
    return Reference(frames=torch.from_numpy(_stacked([p["frames"] for p in pieces], length)),
                     embedding=torch.from_numpy(np.stack([p["embedding"] for p in pieces])),
                     stats=torch.from_numpy(np.stack([p["stats"] for p in pieces])),
                     lengths=torch.tensor([len(p["frames"]) for p in pieces]), features=features)
