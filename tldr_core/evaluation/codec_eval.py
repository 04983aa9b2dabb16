"""`tldr-voice codec evaluate`: how much of a voice and its words survive the codec's round trip.

`evaluate_split` runs audio -> audio functions (codecs, and copy synthesis as their ceiling) over a corpus split,
all in one run on the same clips, judges each against its original (judges.py: the figure is the *increase* a
round trip causes) and keeps every clip's transcripts. As the app uses it, a codec decodes each clip in the voice
of another clip of the same speaker; real recordings and synthetic voices are reported apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from tldr_core.audio import SAMPLE_RATE, read_audio, to_model_rate
from tldr_core.corpus import read_split
from tldr_core.evaluation.judges import Judges, WerDifference, WordErrors, words_for_wer


@dataclass
class SplitReport:
    """Corpus-level figures of one round trip, and per clip what Whisper heard and the similarity."""

    n_clips: int = 0
    seconds: float = 0.0
    words_original: WordErrors | None = None
    words_roundtrip: WordErrors | None = None
    increase: WerDifference | None = None
    similarity: float = 0.0
    dnsmos_original: float = 0.0
    dnsmos_roundtrip: float = 0.0
    rtf: float = 0.0
    per_speaker_similarity: dict[str, float] = field(default_factory=dict)
    clips: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"clips: {self.n_clips} ({self.seconds:.0f} s), round-trip RTF {self.rtf:.4f}",
                f"WER original {self.words_original.text()}",
                f"WER round trip {self.words_roundtrip.text()}",
                f"  increase {self.increase.text()}",
                f"speaker similarity (evaluation encoder) {self.similarity:.3f}  per source: "
                + ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.per_speaker_similarity.items())),
                f"DNSMOS original {self.dnsmos_original:.3f}  round trip {self.dnsmos_roundtrip:.3f}  "
                f"({self.dnsmos_roundtrip - self.dnsmos_original:+.3f})"]


def reference_rows(rows: list[dict]) -> dict[str, dict]:
    """For each clip, the longest other clip of its speaker among `rows` (itself when it has none): the voice it
    is decoded in when the codec is judged as the app uses it, in a reference clip's voice."""
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["source_human"], []).append(row)
    chosen = {}
    for row in rows:
        others = [r for r in by_speaker[row["source_human"]] if r["id"] != row["id"]] or [row]
        chosen[row["id"]] = max(others, key=lambda r: (float(r.get("duration", 0) or 0), r["id"]))
    return chosen


Roundtrip = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (original, reference clip of the voice) -> audio


def evaluate_split(corpus: Path, roundtrips: dict[str, Roundtrip], split: str = "test", limit: int | None = None,
                   judges: Judges | None = None, voice: str = "other") -> dict[str, SplitReport]:
    """Score each roundtrip(original, reference) against the original for (up to `limit`, spread over speakers)
    clips; the reference is the clip itself (`voice="own"`) or another clip of its speaker (`"other"`).

    Several round trips are judged in one run on the same clips, with each original transcribed and scored once.
    Reports are keyed by round trip, and by "name (real)" / "name (synthetic)" as well when the clips hold both
    real recordings and synthetic voices."""
    rows = read_split(corpus, split)
    references = reference_rows(rows)
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    judges = judges or Judges()
    clips = []
    for row in tqdm(rows, desc="judging round trips", unit="clip"):
        original = _read(corpus, row)
        reference = original if voice == "own" else _read(corpus, references[row["id"]])
        clip = {"row": row, "seconds": len(original) / SAMPLE_RATE, "text": words_for_wer(row["text"]),
                "heard_original": words_for_wer(judges.transcribe(original)),
                "dnsmos_original": judges.dnsmos(original)}
        for name, roundtrip in roundtrips.items():
            start = time.perf_counter()
            rebuilt = roundtrip(original, reference)
            clip[name] = {"compute": time.perf_counter() - start, "heard": words_for_wer(judges.transcribe(rebuilt)),
                          "similarity": judges.similarity(original, rebuilt), "dnsmos": judges.dnsmos(rebuilt)}
        clips.append(clip)
    groups = {"": clips}
    real = [c for c in clips if c["row"].get("real")]
    if real and len(real) < len(clips):
        groups.update({" (real)": real, " (synthetic)": [c for c in clips if not c["row"].get("real")]})
    return {name + group: _report(members, name) for name in roundtrips for group, members in groups.items()}


def _read(corpus: Path, row: dict) -> np.ndarray:
    return to_model_rate(*read_audio(Path(corpus) / row["path"]))


def _report(clips: list[dict], name: str) -> SplitReport:
    refs, heard_original = [c["text"] for c in clips], [c["heard_original"] for c in clips]
    heard, sims = [c[name]["heard"] for c in clips], [c[name]["similarity"] for c in clips]
    speakers = [c["row"]["source_human"] for c in clips]
    seconds = sum(c["seconds"] for c in clips)
    per_speaker = {s: float(np.mean([v for v, k in zip(sims, speakers) if k == s])) for s in set(speakers)}
    return SplitReport(
        n_clips=len(clips), seconds=seconds, words_original=WordErrors.score(refs, heard_original),
        words_roundtrip=WordErrors.score(refs, heard), increase=WerDifference.paired(refs, heard_original, heard),
        similarity=float(np.mean(sims)), dnsmos_original=float(np.mean([c["dnsmos_original"] for c in clips])),
        dnsmos_roundtrip=float(np.mean([c[name]["dnsmos"] for c in clips])),
        rtf=sum(c[name]["compute"] for c in clips) / seconds, per_speaker_similarity=per_speaker,
        clips=[{"id": c["row"]["id"], "text": c["text"], "heard_original": c["heard_original"],
                "heard": c[name]["heard"], "similarity": c[name]["similarity"]} for c in clips])
