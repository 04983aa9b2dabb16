"""`tldr-voice evaluate`: word error rate, speaker similarity and stopping of a model on held-out voices; and
`tldr-voice compare`: two such runs (e.g. a new model against the shipped one) paired utterance by utterance.

For each utterance of a split (spread over its speakers), the voice is prepared from *another* utterance of
the same speaker, and the utterance's text is said in it. Judges (judges.py): Whisper base WER (`--asr tiny.en`:
the earlier judge) against the normalised text (the original recording's WER is given beside it: the corpus
voices are partly robotic), similarity of the evaluation-only encoder between output and reference clip, and
whether the model stopped by itself (generation is cut at twice the expected length). The original's own tokens
are also decoded in the same prepared voice and judged the same way: the model speaks through that codec, so this
round trip is about the best it can score, and the model's WER above it is what the model itself loses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tldr_core import audio
from tldr_core.evaluation.judges import Judges, SimilarityDifference, WerDifference, WordErrors, words_for_wer
from tldr_core.decoding import EXACT, Sampling, Speculation
from tldr_core.synthesis import Synthesizer
from tldr_core.corpus import read_split
from tldr_core.errors import CorpusError


@dataclass
class ModelReport:
    mode: str
    patch_size: int
    speculation: Speculation | None = None     # SSD and TLDR + SSD: gamma and the acceptance rule
    utterances: int = 0
    sentences: int = 0
    words_original: WordErrors | None = None
    words: WordErrors | None = None
    vs_baseline: WerDifference | None = None   # every other mode, when the baseline ran beside them
    similarity_vs_baseline: SimilarityDifference | None = None
    vs_patches: WerDifference | None = None    # TLDR + SSD, when plain TLDR of its patch size ran beside it
    similarity_vs_patches: SimilarityDifference | None = None
    words_codec: WordErrors | None = None      # the original's tokens decoded in the same voice: the codec's share
    vs_codec: WerDifference | None = None      # the model's WER above that round trip: the model's own share
    similarity: float = 0.0
    similarity_codec: float = 0.0              # of that round trip to the reference clip
    stopped_by_model: int = 0
    duration_ratio: float = 0.0     # output seconds / original seconds, mean
    real_time_factor: float = 0.0
    first_audio_ms: float = 0.0     # median
    acceptance_rate: float | None = None  # SSD: drafted tokens the backbone kept
    tokens_per_step: float = 0.0    # speech tokens per backbone pass
    samples: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.mode == "baseline":
            return "baseline"
        if self.mode == "tldr":
            return f"TLDR k={self.patch_size}"
        s = self.speculation
        rule = "exact" if s.acceptance == EXACT else f"the SSD paper's rule, beta {s.tolerance:g}"
        if self.mode == "ssd":
            return f"SSD gamma {s.gamma} ({rule})"
        return f"TLDR k={self.patch_size} + SSD gamma {s.gamma} patches ({rule})"

    def lines(self) -> list[str]:
        ssd = ([f"  drafted tokens kept {self.acceptance_rate:.1%}, {self.tokens_per_step:.2f} tokens per backbone "
                f"pass"] if self.speculation else [])
        return [f"{self.name}: {self.utterances} utterances",
                f"  WER {self.words.text()}",
                *([f"  WER above the baseline's {self.vs_baseline.text()}"] if self.vs_baseline else []),
                *([f"  WER above plain TLDR k={self.patch_size}'s {self.vs_patches.text()}"]
                  if self.vs_patches else []),
                f"  WER of the original recordings {self.words_original.text()}",
                f"  WER of their own tokens through the codec, in the same voice {self.words_codec.text()}",
                f"  WER above that codec round trip (the model's own share) {self.vs_codec.text()}",
                f"  speaker similarity to the reference (evaluation encoder) {self.similarity:.3f} (codec round trip "
                f"{self.similarity_codec:.3f})",
                *([f"  similarity above the baseline's {self.similarity_vs_baseline.text()}"]
                  if self.similarity_vs_baseline else []),
                *([f"  similarity above plain TLDR k={self.patch_size}'s {self.similarity_vs_patches.text()}"]
                  if self.similarity_vs_patches else []),
                f"  stopped by itself in {self.stopped_by_model}/{self.sentences} sentences; output/original duration "
                f"{self.duration_ratio:.2f}",
                f"  RTF {self.real_time_factor:.3f}, time to first audio {self.first_audio_ms:.0f} ms (median)",
                *ssd]


def pick_rows(corpus: Path, split: str, limit: int) -> list[tuple[dict, dict]]:
    """(utterance, reference) pairs, round-robin over speakers, deterministic; the reference is the speaker's
    longest other utterance (a voice sample needs at least 2 s of speech)."""
    by_speaker: dict[str, list[dict]] = {}
    for row in read_split(corpus, split):
        by_speaker.setdefault(row["speaker"], []).append(row)
    speakers = sorted(s for s, rows in by_speaker.items() if len(rows) >= 2)
    pairs, i = [], 0
    while len(pairs) < limit and any(i < len(by_speaker[s]) for s in speakers):
        for s in speakers:
            rows = by_speaker[s]
            if i < len(rows) and len(pairs) < limit:
                others = [r for r in rows if r is not rows[i]]
                pairs.append((rows[i], max(others, key=lambda r: r["duration"])))
        i += 1
    return pairs


def evaluate_model(synth: Synthesizer, corpus: Path, modes: list[tuple], split: str = "test",
                   limit: int = 40, seed: int = 0, sampling: Sampling | None = None,
                   judges: Judges | None = None) -> list[ModelReport]:
    """One report per (mode, patch size[, Speculation]). Every mode says the same utterances in the same prepared
    voices, and each original is transcribed once, so the modes' figures differ only by what the modes did."""
    judges = judges or Judges()
    pairs = pick_rows(Path(corpus), split, limit)
    if not pairs:
        raise CorpusError(f"The {split} split of '{corpus}' has no speaker with two or more utterances (one to say, "
                          f"one as the voice): build a larger corpus.")
    reports = [ModelReport(mode, 1 if mode == "baseline" else k, *rest) for mode, k, *rest in modes]
    refs, heard_original, heard_codec, similarity_codec = [], [], [], []
    for row, ref_row in tqdm(pairs, desc=f"judging {len(reports)} mode(s)", unit="utterance"):
        original = audio.to_model_rate(*audio.read_audio(Path(corpus) / row["path"]))
        reference = audio.load_reference_clip(Path(corpus) / ref_row["path"]).samples
        voice = synth.prepare_voice(reference)
        refs.append(words_for_wer(row["text"]))
        heard_original.append(words_for_wer(judges.transcribe(original)))
        tokens, _ = synth.codec.encode(original)
        through_codec = synth.codec.decode(tokens, voice.timbre)[:len(original)]
        heard_codec.append(words_for_wer(judges.transcribe(through_codec)))
        similarity_codec.append(judges.similarity(through_codec, reference))
        for report in reports:
            chunks = list(synth.stream(row["text"], voice, report.mode, report.patch_size, sampling, seed=seed,
                                       speculation=report.speculation))
            output = np.concatenate(chunks) if chunks else np.zeros(audio.SAMPLE_RATE // 10, np.float32)
            stats = synth.last_stats
            report.stopped_by_model += stats.stopped_by_model
            report.sentences += stats.sentences
            report.samples.append({
                "id": row["id"], "reference": ref_row["id"], "text": refs[-1], "heard_original": heard_original[-1],
                "heard_codec": heard_codec[-1], "heard": words_for_wer(judges.transcribe(output)),
                "similarity": judges.similarity(output, reference),
                "sentences": stats.sentences, "stopped_by_model": stats.stopped_by_model,
                "duration_ratio": len(output) / len(original), "first_audio_ms": stats.first_audio_seconds * 1000,
                "wall_seconds": stats.wall_seconds, "audio_seconds": stats.audio_seconds,
                "backbone_steps": stats.backbone_steps, "tokens": stats.tokens, "drafted": stats.drafted,
                "accepted": stats.accepted})
    words_original, words_codec = WordErrors.score(refs, heard_original), WordErrors.score(refs, heard_codec)
    mean_similarity_codec = float(np.mean(similarity_codec))
    for report in reports:
        samples = report.samples
        seconds = sum(x["audio_seconds"] for x in samples)
        report.utterances = len(samples)
        report.words = WordErrors.score(refs, [x["heard"] for x in samples])
        report.words_original, report.words_codec = words_original, words_codec
        report.vs_codec = WerDifference.paired(refs, heard_codec, [x["heard"] for x in samples])
        report.similarity_codec = mean_similarity_codec
        report.similarity = float(np.mean([x["similarity"] for x in samples]))
        report.duration_ratio = float(np.mean([x["duration_ratio"] for x in samples]))
        report.real_time_factor = sum(x["wall_seconds"] for x in samples) / seconds if seconds else float("nan")
        report.first_audio_ms = float(np.median([x["first_audio_ms"] for x in samples]))
        report.tokens_per_step = sum(x["tokens"] for x in samples) / max(1, sum(x["backbone_steps"] for x in samples))
        if report.speculation is not None:
            report.acceptance_rate = sum(x["accepted"] for x in samples) / max(1, sum(x["drafted"] for x in samples))
    baseline = next((r for r in reports if r.mode == "baseline"), None)
    for report in reports:
        if baseline and report is not baseline:
            report.vs_baseline, report.similarity_vs_baseline = _paired(refs, baseline, report)
        plain = next((r for r in reports if r.mode == "tldr" and r.patch_size == report.patch_size), None)
        if report.mode == "tldr-ssd" and plain:
            report.vs_patches, report.similarity_vs_patches = _paired(refs, plain, report)
    return reports


def _paired(refs: list[str], a: ModelReport, b: ModelReport) -> tuple[WerDifference, SimilarityDifference]:
    """How much B's WER and similarity are above A's, utterance by utterance."""
    return (WerDifference.paired(refs, [x["heard"] for x in a.samples], [x["heard"] for x in b.samples]),
            SimilarityDifference.paired([x["similarity"] for x in a.samples], [x["similarity"] for x in b.samples]))


def read_run(path: Path) -> list[ModelReport]:
    """The reports `evaluate --json` wrote, with what pairing needs: modes, utterances and transcripts."""
    try:
        rows = json.loads(Path(path).read_text())
        reports = [ModelReport(r["mode"], r["patch_size"], Speculation(**r["speculation"]) if r["speculation"]
                               else None, samples=r["samples"]) for r in rows]
        if any(f not in x for r in reports for x in r.samples for f in ("id", "reference", "text", "heard",
                                                                          "similarity")):
            raise KeyError("an utterance without its id, voice, text, transcript or similarity")
    except OSError as err:
        raise CorpusError(f"Cannot read '{path}' ({err.strerror}): name a file written by `tldr-voice evaluate "
                          f"--json`.") from err
    except (ValueError, TypeError, KeyError) as err:
        raise CorpusError(f"'{path}' is not a run written by `tldr-voice evaluate --json` ({err}): name such a "
                          f"file.") from err
    return reports


def compare_runs(a: list[ModelReport], b: list[ModelReport]) -> list[str]:
    """How much run B's WER and similarity are above run A's, for every mode both ran, utterance by utterance.
    Two runs pair only on the same utterances in the same voices (same corpus, split and --limit)."""
    common = [(x, y) for x in a for y in b if x.name == y.name]
    if not common:
        raise CorpusError(f"The two runs have no mode in common (first: {', '.join(r.name for r in a)}; second: "
                          f"{', '.join(r.name for r in b)}): compare runs of the same modes.")
    lines = []
    for x, y in common:
        if [(s["id"], s["reference"]) for s in x.samples] != [(s["id"], s["reference"]) for s in y.samples]:
            raise CorpusError(f"{x.name}: the two runs said different utterances or used different voices: compare "
                              f"runs of the same corpus, split and --limit.")
        refs = [s["text"] for s in x.samples]
        words_a = WordErrors.score(refs, [s["heard"] for s in x.samples])
        words_b = WordErrors.score(refs, [s["heard"] for s in y.samples])
        wer, similarity = _paired(refs, x, y)
        lines += [f"{x.name}: {len(refs)} utterances", f"  WER {words_a.wer:.2f} % -> {words_b.wer:.2f} %",
                  f"  WER of the second above the first's {wer.text()}",
                  f"  similarity of the second above the first's {similarity.text()}"]
    return lines
