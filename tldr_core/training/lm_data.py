"""Corpus -> what the LM trains on: per utterance its phoneme ids, codec tokens and speaker embedding.

Tokenizing needs the WORLD analysis (~0.04 CPU-s per audio-s), so each utterance is done once into
RUN/tokens/<id>.npz by worker processes, skipping what exists (an interrupted run resumes). The codec
that made the tokens is recorded (sha256 of its files) so a backbone is never trained on, or paired with,
another codec's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tldr_core import text
from tldr_core.corpus import cache_utterances, read_split, similar_length_batch
from tldr_core.errors import CorpusError
from tldr_core.codec.store import codec_fingerprint
from tldr_core.files import atomic_path, write_text
from tldr_core.model import PROMPT_MULTIPLE

RATE = "tokens_per_second"  # beside codec.sha256 in a tokens folder: prompts are measured in seconds


@dataclass
class Utterance:
    id: str
    speaker: str
    text_ids: np.ndarray   # [BOS, phonemes..., EOS]
    tokens: np.ndarray     # codec token ids (the codec's rate, 25 or 50 per second)
    embedding: np.ndarray  # (256,) SpeakerEncoder embedding of this utterance
    durations: np.ndarray | None = None  # tokens per text position (alignment.py), for a model with hints


@lru_cache(maxsize=1)
def _codec(codec_path: str):
    from tldr_core.codec.runtime import CodecRuntime

    return CodecRuntime(Path(codec_path) if codec_path else None)


def codec_vocab_size(codec_path: Path | None) -> int:
    """How many codes the codec's tokens take: the LM's speech vocabulary (STOP apart)."""
    return _codec(str(codec_path or "")).vocab_size


def _tokenize_one(job: tuple[str, str, str]) -> None:
    torch.set_num_threads(1)
    from tldr_core.audio import read_audio, to_model_rate

    wav, out, codec_path = job
    tokens, voice = _codec(codec_path).encode(to_model_rate(*read_audio(wav)))
    with atomic_path(out) as tmp:
        np.savez(tmp, tokens=tokens.astype(np.int32), embedding=voice.embedding.astype(np.float32))


def tokenize_corpus(corpus: Path, codec_path: Path | None, folder: Path, splits: tuple[str, ...],
                    shippable_only: bool, jobs: int = 2) -> None:
    """Fill `folder` with <id>.npz for every utterance of the splits (resumable); refuse a different codec."""
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = codec_fingerprint(codec_path or default_codec())
    stamp = folder / "codec.sha256"
    if not stamp.exists():
        write_text(stamp, fingerprint + "\n")  # atomic: runs sharing the folder (adapters of one backbone) read it
    elif stamp.read_text().strip() != fingerprint:
        raise CorpusError(f"'{folder}' holds tokens of another codec: use a new --out folder for this codec.")
    if not (folder / RATE).exists():
        write_text(folder / RATE, f"{_codec(str(codec_path or '')).tokens_per_second}\n")
    rows = [r for split in splits for r in read_split(corpus, split, shippable_only)]
    cache_utterances(corpus, rows, folder, _tokenize_one, jobs, "tokenizing corpus", str(codec_path or ""))


def tokens_per_second(folder: Path) -> int:
    """The rate of the tokens in a folder `tokenize_corpus` filled."""
    if not (Path(folder) / RATE).is_file():
        raise CorpusError(f"'{folder}' does not say its tokens' rate: tokenize the corpus again (a training run "
                          f"with --codec does it into RUN/tokens).")
    return int((Path(folder) / RATE).read_text())


def default_codec() -> Path:
    """The shipped codec, what a run without --codec tokenizes with."""
    from tldr_core.codec.runtime import DEFAULT_CODEC

    return DEFAULT_CODEC


def load_utterances(corpus: Path, folder: Path, split: str, shippable_only: bool) -> list[Utterance]:
    items = []
    for row in read_split(corpus, split, shippable_only):
        with np.load(folder / f"{row['id']}.npz") as z:
            ids = [text.BOS_ID, *text.phoneme_ids(row["phonemes"].split()), text.EOS_ID]
            items.append(Utterance(row["id"], row["speaker"], np.array(ids, dtype=np.int64),
                                   z["tokens"].astype(np.int64), z["embedding"]))
    return items


def align_utterances(items: list[Utterance], folder: Path, aligner_checkpoint: Path | None) -> None:
    """Give every utterance its durations from a codec checkpoint's phone alignment, kept in
    folder/durations.npz (about 5 ms an utterance; redone only for another checkpoint). Without a checkpoint,
    the durations already kept there (a TLDR adapter or a draft of a backbone trained with hints)."""
    from tldr_core.codec.store import codec_fingerprint
    from tldr_core.files import file_sha256
    from tldr_core.training.alignment import Aligner

    store = folder / "durations.npz"
    known: dict[str, np.ndarray] = {}
    stamp = file_sha256(aligner_checkpoint) if aligner_checkpoint else None
    if store.exists():
        with np.load(store) as z:
            if stamp is None or str(z["aligner"]) == stamp:
                known, stamp = {k: z[k] for k in z.files if k != "aligner"}, str(z["aligner"])
    missing = [it for it in items if it.id not in known]
    if missing and aligner_checkpoint is None:
        raise CorpusError(f"'{folder}' has no durations for {len(missing)} utterances: name the codec checkpoint "
                          f"to align them with --aligner (without the codec's own, `tldr-voice train aligner` "
                          f"makes one from the exported codec).")
    if missing:
        if codec_fingerprint(aligner_checkpoint) != (folder / "codec.sha256").read_text().strip():
            raise CorpusError(f"'{aligner_checkpoint}' is not the codec that made these tokens: align with the "
                              f"checkpoint of the codec named by --codec.")
        aligner = Aligner.load(aligner_checkpoint)
        known.update({it.id: aligner.durations(it.text_ids, it.tokens) for it in missing})
        with atomic_path(store) as tmp:
            np.savez(tmp, aligner=np.array(stamp), **known)
    for it in items:
        it.durations = known[it.id].astype(np.int64)


# ---------------------------------------------------------------------------------------------- batches

@dataclass
class Batch:
    speaker: torch.Tensor        # (B, 256)
    text_ids: list[torch.Tensor]
    prompt: torch.Tensor         # (B, P), P a multiple of PROMPT_MULTIPLE (may be 0)
    speech: list[torch.Tensor]
    durations: list[torch.Tensor] | None = None  # tokens per text position, for a model with alignment hints

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.speaker.to(device), [t.to(device) for t in self.text_ids], self.prompt.to(device),
                     [s.to(device) for s in self.speech],
                     None if self.durations is None else [d.to(device) for d in self.durations])


def prompt_crop(tokens: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, len(tokens) - length + 1))
    return tokens[start:start + length]


def sample_batch(items: list[Utterance], by_speaker: dict[str, list[int]], batch: int, max_prompt: int,
                 rng: np.random.Generator, similar_length: bool = False) -> Batch:
    """Random utterances, each with a prompt cropped from another utterance of its speaker.

    The prompt length is drawn per batch from the multiples of PROMPT_MULTIPLE up to `max_prompt` that every
    prompt source allows, so the model learns to continue from short and long references alike.
    `similar_length` (training) groups utterances of similar length, as the codec does (a random mix of 1-16 s
    utterances padded to the longest is about 40 % padding)."""
    if similar_length:
        chosen = similar_length_batch(np.array([len(it.tokens) for it in items]), batch, rng)
    else:
        chosen = rng.integers(0, len(items), size=batch)
    sources = []
    for i in chosen:
        same = by_speaker[items[i].speaker]
        others = [j for j in same if j != i] or [int(i)]
        sources.append(items[others[int(rng.integers(0, len(others)))]])
    room = min(max_prompt, min(len(s.tokens) for s in sources)) // PROMPT_MULTIPLE
    prompt_len = PROMPT_MULTIPLE * int(rng.integers(1, room + 1)) if room > 0 else 0
    return Batch(
        speaker=torch.from_numpy(np.stack([items[i].embedding for i in chosen])),
        text_ids=[torch.from_numpy(items[i].text_ids) for i in chosen],
        prompt=torch.from_numpy(np.stack([prompt_crop(s.tokens, prompt_len, rng) for s in sources])),
        speech=[torch.from_numpy(items[i].tokens) for i in chosen],
        durations=(None if items[0].durations is None
                   else [torch.from_numpy(items[i].durations) for i in chosen]),
    )


def speakers_index(items: list[Utterance]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        index.setdefault(item.speaker, []).append(i)
    return index


def tokens_per_phoneme(items: list[Utterance]) -> float:
    """Speaking rate of the training data: codec tokens per phoneme symbol (length bounds use it)."""
    return float(sum(len(u.tokens) for u in items) / max(1, sum(len(u.text_ids) - 2 for u in items)))
