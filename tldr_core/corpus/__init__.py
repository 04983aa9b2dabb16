"""A reproducible multi-speaker training corpus from offline speech engines we can rerun.

  engines.py    the source voices (engine, person behind it, licence) and how to make each speak
  sentences.py  our own English sentences from templates and word lists
  plan.py       splits by source human, pseudo-speakers (WORLD warps, Kokoro blends), sentences per speaker
  render.py     one utterance -> one normalised 16 kHz WAV
  real.py       real read speech (--real-speech DIR): rows read in place, split by speaker
  build.py      `tldr-voice corpus build`: runs the plan in parallel, resumably, and writes the manifests

`read_split` is how every trainer and evaluator reads a built corpus, `utterance_path` where a row's audio is,
`cache_utterances` how they derive per-utterance files from it (features, tokens) once, `similar_length_batch`
how they batch its utterances.
"""

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tldr_core.errors import CorpusError


def read_split(corpus: Path, split: str, shippable_only: bool = False) -> list[dict]:
    """The manifest rows of one split (only those whose licence lets trained weights ship, if asked)."""
    manifest = Path(corpus) / "manifest.jsonl"
    if not manifest.is_file():
        raise CorpusError(f"'{corpus}' has no manifest.jsonl: build a corpus with `tldr-voice corpus build`.")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == split and (r.get("shippable", False) or not shippable_only)]
    if not rows:
        raise CorpusError(f"The corpus '{corpus}' has no {'shippable ' if shippable_only else ''}utterances "
                          f"in the {split} split.")
    return rows


def utterance_path(corpus: Path, row: dict) -> Path:
    """The audio file of a manifest row: synthetic rows are relative to the corpus folder, real-speech rows
    absolute (read in place; `Path(corpus) / row["path"]` gives the same, as an absolute right side wins)."""
    return Path(corpus) / row["path"]


def cache_utterances(corpus: Path, rows: list[dict], folder: Path, work: Callable[[tuple], object], jobs: int,
                     desc: str, *extra: str) -> None:
    """Run `work((wav path, out path, *extra))` in `jobs` worker processes for every row whose folder/<id>.npz
    does not exist yet: each utterance is done once, and an interrupted run resumes where it stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(str(utterance_path(corpus, r)), str(folder / f"{r['id']}.npz"), *extra) for r in rows
            if not (folder / f"{r['id']}.npz").exists()]
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for _ in tqdm(pool.map(work, todo, chunksize=4), total=len(todo), desc=desc, unit="clip"):
            pass


def similar_length_batch(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `batch` utterances of similar length: a random window of them sorted by a +-15 % jittered length.

    A batch is padded to its longest utterance, and a random mix of 1-16 s clips is mostly padding; the jitter
    varies which utterances share a batch."""
    jittered = lengths * rng.uniform(0.85, 1.15, len(lengths))
    start = int(rng.integers(0, max(1, len(lengths) - batch + 1)))
    return np.argsort(jittered)[start:start + batch]
