"""Does the speaker encoder tell the corpus's voices apart? Same- vs different-speaker scores on a split.

Both encoders are measured on the same clips: the one the TTS is conditioned on (tldr_core.speaker) and
the independent one used to score cloned voices (evaluation.similarity). A useful encoder gives
same-speaker pairs clearly higher cosines than different-speaker pairs (a low equal error rate). Pairs
from different source humans are reported apart, because two engines voicing the same human (or WORLD
"siblings" of one voice) are different speakers in the corpus yet legitimately sound alike.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from tldr_core.audio import to_model_rate
from tldr_core.errors import CorpusError, TldrError
from tldr_core.evaluation.similarity import EvaluationSpeakerEncoder
from tldr_core.speaker import CONFIG, SpeakerEncoder, cosine

MANIFEST_KEYS = ("id", "path", "speaker", "source_human", "split")


def read_manifest(corpus: Path, split: str) -> list[dict]:
    """The manifest rows of one split, checked for the fields this evaluation needs."""
    manifest = Path(corpus) / "manifest.jsonl"
    if not manifest.is_file():
        raise CorpusError(f"No corpus at {corpus}: {manifest} is missing. Build one with "
                          "`tldr-voice corpus build DIR` or point to the folder that holds manifest.jsonl.")
    rows = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"Line {number} of {manifest} is not valid JSON ({error.msg}); "
                              "rebuild the corpus.") from error
        missing = [key for key in MANIFEST_KEYS if key not in row]
        if missing:
            raise CorpusError(f"Line {number} of {manifest} lacks {', '.join(missing)}; rebuild the corpus.")
        if row["split"] == split:
            rows.append(row)
    return rows


def pick_utterances(rows: list[dict], per_speaker: int, seed: int) -> list[dict]:
    """Up to `per_speaker` random utterances of every speaker, the same ones for the same seed."""
    rng = np.random.default_rng(seed)
    picked = []
    for speaker in sorted({row["speaker"] for row in rows}):
        own = sorted((row for row in rows if row["speaker"] == speaker), key=lambda row: row["id"])
        chosen = rng.choice(len(own), size=min(per_speaker, len(own)), replace=False)
        picked += [own[i] for i in sorted(chosen)]
    return picked


def load_clip(corpus: Path, row: dict) -> np.ndarray:
    path = Path(corpus) / row["path"]
    try:
        samples, sample_rate = sf.read(path, dtype="float32")
    except (OSError, RuntimeError) as error:  # soundfile raises LibsndfileError (a RuntimeError) or OSError
        raise CorpusError(f"Cannot read {path} (utterance {row['id']}): {error}. Rebuild the corpus.") from error
    return to_model_rate(samples, sample_rate)


def equal_error_rate(same: np.ndarray, different: np.ndarray) -> float:
    """The error rate at the threshold where false rejections of same-speaker pairs equal false
    acceptances of different-speaker pairs (0: perfectly separated, 0.5: chance)."""
    same, different = np.sort(same), np.sort(different)
    thresholds = np.concatenate([same, different])
    false_reject = np.searchsorted(same, thresholds, side="left") / len(same)
    false_accept = 1.0 - np.searchsorted(different, thresholds, side="left") / len(different)
    best = np.argmin(np.abs(false_reject - false_accept))
    return float((false_reject[best] + false_accept[best]) / 2)


def pair_statistics(embeddings: np.ndarray, rows: list[dict]) -> dict:
    """Mean cosines of same-speaker, different-speaker and different-human pairs, and the EER."""
    same, different, different_human = [], [], []
    for i, j in itertools.combinations(range(len(rows)), 2):
        score = cosine(embeddings[i], embeddings[j])
        if rows[i]["speaker"] == rows[j]["speaker"]:
            same.append(score)
            continue
        different.append(score)
        if rows[i]["source_human"] != rows[j]["source_human"]:
            different_human.append(score)
    return {
        "same_speaker": float(np.mean(same)),
        "different_speaker": float(np.mean(different)),
        "different_human": float(np.mean(different_human)) if different_human else None,
        "eer": equal_error_rate(np.array(same), np.array(different)),
    }


def evaluate_speaker_encoder(corpus: Path, split: str = "test", per_speaker: int = 4, seed: int = 0) -> dict:
    """Embed `per_speaker` utterances of every speaker in `split` with both encoders; print and return
    the pair statistics of each, their ms per clip and (when resemblyzer is installed) how far the ONNX
    encoder is from the original."""
    if per_speaker < 2:
        raise TldrError(f"per_speaker must be at least 2 to form same-speaker pairs (got {per_speaker}).")
    rows = pick_utterances(read_manifest(corpus, split), per_speaker, seed)
    speakers = {row["speaker"] for row in rows}
    if len(speakers) < 2 or len(rows) == len(speakers):
        raise CorpusError(f"The {split} split of {corpus} has {len(speakers)} speaker(s) and {len(rows)} "
                          "utterance(s); evaluating needs at least 2 speakers, one with 2 utterances or more.")
    clips = [load_clip(corpus, row) for row in rows]

    report: dict = {"split": split, "speakers": len(speakers), "utterances": len(rows)}
    for name, encoder in (("speaker_encoder", SpeakerEncoder()), ("evaluation_encoder", EvaluationSpeakerEncoder())):
        start = time.perf_counter()
        embeddings = np.stack([encoder.embed(clip) for clip in clips])
        ms_per_clip = (time.perf_counter() - start) * 1000 / len(clips)
        report[name] = pair_statistics(embeddings, rows) | {"ms_per_clip": ms_per_clip}
        if name == "speaker_encoder":
            report["max_abs_diff_vs_resemblyzer"] = _difference_from_resemblyzer(embeddings, clips)

    print(f"{report['speakers']} speakers, {report['utterances']} utterances ({split} split)")
    print(f"{'encoder':<20}{'same':>8}{'diff':>8}{'diff human':>12}{'EER':>8}{'ms/clip':>9}")
    for name in ("speaker_encoder", "evaluation_encoder"):
        r = report[name]
        human = "-" if r["different_human"] is None else f"{r['different_human']:.3f}"
        print(f"{name:<20}{r['same_speaker']:>8.3f}{r['different_speaker']:>8.3f}{human:>12}"
              f"{r['eer']:>8.3f}{r['ms_per_clip']:>9.1f}")
    if report["max_abs_diff_vs_resemblyzer"] is not None:
        print(f"max abs difference ONNX vs resemblyzer: {report['max_abs_diff_vs_resemblyzer']:.1e}")
    return report


def _difference_from_resemblyzer(embeddings: np.ndarray, clips: list[np.ndarray]) -> float | None:
    """Largest component difference from resemblyzer itself; None when it is not installed."""
    try:
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import normalize_volume
    except ImportError:
        return None
    reference = VoiceEncoder(device="cpu", verbose=False)
    expected = np.stack([reference.embed_utterance(normalize_volume(clip, CONFIG.target_dbfs, increase_only=True))
                         for clip in clips])
    return float(np.max(np.abs(embeddings - expected)))
