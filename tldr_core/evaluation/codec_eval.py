"""`tldr-voice codec evaluate`: how much of a voice and its words survive the codec's round trip.

`evaluate_split` runs audio -> audio functions (codecs) over a corpus split, all in one run on the same clips,
judges each against its original (judges.py: the figure is the *increase* a round trip causes) and keeps every
clip's transcripts.
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


def evaluate_split(corpus: Path, roundtrips: dict[str, Callable[[np.ndarray], np.ndarray]], split: str = "test",
                   limit: int | None = None, judges: Judges | None = None) -> dict[str, SplitReport]:
    """Score each roundtrip(original) against the original for (up to `limit`, spread over speakers) clips.

    Several round trips are judged in one run on the same clips, with each original transcribed and scored once."""
    rows = read_split(corpus, split)
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    judges = judges or Judges()
    refs, hyp_orig, mos_o, speakers, seconds = [], [], [], [], 0.0
    hyp_rt: dict[str, list[str]] = {name: [] for name in roundtrips}
    sims: dict[str, list[float]] = {name: [] for name in roundtrips}
    mos_r: dict[str, list[float]] = {name: [] for name in roundtrips}
    compute = dict.fromkeys(roundtrips, 0.0)
    for row in tqdm(rows, desc="judging round trips", unit="clip"):
        original = to_model_rate(*read_audio(Path(corpus) / row["path"]))
        seconds += len(original) / SAMPLE_RATE
        refs.append(words_for_wer(row["text"]))
        hyp_orig.append(words_for_wer(judges.transcribe(original)))
        mos_o.append(judges.dnsmos(original))
        speakers.append(row["source_human"])
        for name, roundtrip in roundtrips.items():
            start = time.perf_counter()
            rebuilt = roundtrip(original)
            compute[name] += time.perf_counter() - start
            hyp_rt[name].append(words_for_wer(judges.transcribe(rebuilt)))
            sims[name].append(judges.similarity(original, rebuilt))
            mos_r[name].append(judges.dnsmos(rebuilt))
    words_original, dnsmos_original = WordErrors.score(refs, hyp_orig), float(np.mean(mos_o))
    reports = {}
    for name in roundtrips:
        per_speaker = {s: float(np.mean([v for v, k in zip(sims[name], speakers) if k == s])) for s in set(speakers)}
        clips = [{"id": row["id"], "text": ref, "heard_original": orig, "heard": heard, "similarity": sim}
                 for row, ref, orig, heard, sim in zip(rows, refs, hyp_orig, hyp_rt[name], sims[name])]
        reports[name] = SplitReport(
            n_clips=len(rows), seconds=seconds, words_original=words_original,
            words_roundtrip=WordErrors.score(refs, hyp_rt[name]),
            increase=WerDifference.paired(refs, hyp_orig, hyp_rt[name]), similarity=float(np.mean(sims[name])),
            dnsmos_original=dnsmos_original, dnsmos_roundtrip=float(np.mean(mos_r[name])),
            rtf=compute[name] / seconds, per_speaker_similarity=per_speaker, clips=clips)
    return reports
