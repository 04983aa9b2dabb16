"""Real read speech as a source family of the corpus, read in place from a folder with a manifest.tsv.

The folder (the project's ../shared/speech: 28 Mini LibriSpeech speakers, CC BY 4.0, and one CC0 speaker) is
never copied: every manifest row points at its file where it lies, by absolute path. Its transcripts are
normalised and phonemised with tldr_core.text exactly as the synthetic sentences are.

Splits are by speaker, decided from manifest.tsv alone (so before any work, and the same for the same file and
seed): within each gender, the speakers of sources with at least 3 speakers and at least 30 utterances are
shuffled with the seed; the first 2 go to test, the next 1 to validation, the rest to train. A source with fewer
than 3 speakers (the single CC0 speaker) goes to train whole, as a synthetic family with fewer than 3 humans does.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tldr_core.errors import CorpusError, TldrError
from tldr_core.text import STRESS, WORD_BOUNDARY, normalize_text, phonemize

REAL_FORMAT = 1  # bump when real rows are derived differently, so an old folder is not resumed as the same plan
ENGINE = "real"  # the `engine` (and speakers.json `family`) of real rows: no engine made them
REQUIRED_COLUMNS = ("id", "path", "speaker", "gender", "duration", "text", "source", "licence")
# Licences under which weights trained on the speech may ship with the app; True where they need attribution.
SHIPPABLE_LICENCES = {"CC0-1.0": False, "CC-BY-4.0": True}
# The attribution line each CC BY source asks for, by the start of its `source` (from the folder's README.md).
ATTRIBUTIONS = {
    "Mini LibriSpeech": "Contains Mini LibriSpeech (LibriSpeech, V. Panayotov, G. Chen, D. Povey, S. Khudanpur), "
                        "licensed CC BY 4.0.",
}
_NOT_SPEECH = frozenset({WORD_BOUNDARY, *STRESS, ",", ".", "?", "!", ";", ":", "-"})
_PARALLEL_FROM = 200  # utterances: fewer are phonemised in this process (starting workers costs ~1-2 s)


@dataclass(frozen=True)
class RealSplitConfig:
    test_per_gender: int = 2
    validation_per_gender: int = 1
    min_utterances: int = 30  # a held-out speaker needs enough utterances to be judged on
    min_source_speakers: int = 3  # a source with fewer speakers goes to train whole
    genders: tuple[str, ...] = ("F", "M")


@dataclass(frozen=True)
class RealUtterance:
    id: str
    path: Path  # absolute: the file where it lies
    speaker: str
    gender: str
    duration: float
    text: str
    source: str
    licence: str

    @property
    def shippable(self) -> bool:
        return self.licence in SHIPPABLE_LICENCES


@dataclass(frozen=True)
class RealSpeech:
    """The usable rows of a real-speech folder and their speakers' splits; phonemes come later (`rows`)."""

    folder: Path
    manifest_sha256: str
    seed: int
    shippable_only: bool
    utterances: tuple[RealUtterance, ...]
    splits: tuple[tuple[str, str], ...]  # (speaker, split), sorted by speaker
    dropped: tuple[tuple[str, str], ...]  # (id, reason): rows left out before phonemising
    notices: tuple[str, ...]

    def split_of(self) -> dict[str, str]:
        return dict(self.splits)

    def settings(self) -> dict:
        return {"real_speech": str(self.folder), "real_speech_manifest_sha256": self.manifest_sha256}

    def hash(self) -> str:
        """Changes when the rows or their splits would; not when the same folder is reached by another path."""
        body = {"format": REAL_FORMAT, "manifest": self.manifest_sha256, "seed": self.seed,
                "shippable_only": self.shippable_only, "splits": self.splits,
                "utterances": [u.id for u in self.utterances]}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_real_speech(folder: Path, seed: int, shippable_only: bool = False, per_speaker: int | None = None,
                     config: RealSplitConfig = RealSplitConfig()) -> RealSpeech:
    """Read folder/manifest.tsv, check it, and split its speakers; a bad row is dropped with its reason.

    per_speaker keeps only each speaker's first utterances by id, after the split is made from all of them (a
    quick corpus, or less of one dominant speaker, with the same speakers in the same splits)."""
    if per_speaker is not None and per_speaker < 1:
        raise CorpusError(f"--real-per-speaker must be at least 1 utterance, not {per_speaker}.")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CorpusError(f"--real-speech '{folder}' is not a folder: point it at a folder of real speech that "
                          f"holds manifest.tsv (the project's is ../shared/speech).")
    folder = folder.resolve()
    manifest = folder / "manifest.tsv"
    if not manifest.is_file():
        raise CorpusError(f"'{folder}' has no manifest.tsv: a real-speech folder lists its utterances there, "
                          f"tab-separated with the columns {', '.join(REQUIRED_COLUMNS)}.")
    raw = manifest.read_bytes()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{manifest} is not UTF-8 text ({e}).") from e
    header = lines[0].split("\t") if lines else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{manifest} lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}: its first "
                          f"line must name (tab-separated) at least {', '.join(REQUIRED_COLUMNS)}.")

    utterances, dropped, seen, not_shippable = [], [], set(), Counter()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        uid = fields[0].strip() or f"line {number}"
        if len(fields) != len(header):
            dropped.append((uid, f"line {number} has {len(fields)} fields, the header {len(header)}"))
            continue
        row = {k: v.strip() for k, v in zip(header, fields)}
        try:
            duration = float(row["duration"])
        except ValueError:
            duration = math.nan
        if not (duration > 0 and math.isfinite(duration)):
            dropped.append((uid, f"duration '{row['duration']}' is not a positive number of seconds"))
            continue
        if not (row["id"] and row["speaker"] and row["path"]):
            dropped.append((uid, f"line {number} has no id, speaker or path"))
            continue
        if row["id"] in seen:
            dropped.append((uid, "a second row with this id"))
            continue
        seen.add(row["id"])
        path = folder / row["path"]
        if not path.is_file():
            dropped.append((uid, f"its audio file {path} does not exist"))
            continue
        utterance = RealUtterance(row["id"], path, row["speaker"], row["gender"].upper(), duration, row["text"],
                                  row["source"], row["licence"])
        if shippable_only and not utterance.shippable:
            not_shippable[utterance.licence] += 1
            continue
        utterances.append(utterance)
    utterances.sort(key=lambda u: u.id)
    notices = [f"--shippable-only left out {n} real utterances licensed {licence}"
               for licence, n in sorted(not_shippable.items())]
    splits, split_notices = assign_real_splits(utterances, seed, config)
    if per_speaker is not None:
        by_speaker = defaultdict(list)
        for u in utterances:
            by_speaker[u.speaker].append(u)
        utterances = sorted((u for own in by_speaker.values() for u in own[:per_speaker]), key=lambda u: u.id)
    return RealSpeech(folder, hashlib.sha256(raw).hexdigest(), seed, shippable_only, tuple(utterances),
                      tuple(sorted(splits.items())), tuple(dropped), tuple(notices + split_notices))


def assign_real_splits(utterances: list[RealUtterance], seed: int,
                       config: RealSplitConfig = RealSplitConfig()) -> tuple[dict[str, str], list[str]]:
    """Speaker -> split, and notices for what could not be held out."""
    count = Counter(u.speaker for u in utterances)
    gender, source = {}, {}
    for u in utterances:  # a speaker's gender and source are those of its first row by id
        gender.setdefault(u.speaker, u.gender)
        source.setdefault(u.speaker, u.source)
    speakers_of = defaultdict(set)
    for speaker, name in source.items():
        speakers_of[name].add(speaker)
    notices = [f"real speech from '{name}' has {len(speakers)} speaker{'s' * (len(speakers) > 1)}, fewer than "
               f"{config.min_source_speakers}: all in train"
               for name, speakers in sorted(speakers_of.items()) if len(speakers) < config.min_source_speakers]
    splits = dict.fromkeys(sorted(count), "train")
    held = config.test_per_gender + config.validation_per_gender
    for g in config.genders:
        pool = sorted(s for s in count if gender[s] == g and count[s] >= config.min_utterances
                      and len(speakers_of[source[s]]) >= config.min_source_speakers)
        if len(pool) <= held:  # at least one stays in train
            notices.append(f"real speech has {len(pool)} speakers of gender {g} with >= {config.min_utterances} "
                           f"utterances in a source of >= {config.min_source_speakers} speakers; {held + 1} are "
                           f"needed to hold any out, so none of them is in validation or test")
            continue
        random.Random(f"tldr-real-splits-{seed}-{g}").shuffle(pool)
        for i, speaker in enumerate(pool[:held]):
            splits[speaker] = "test" if i < config.test_per_gender else "validation"
    return splits, notices


def _phonemize_one(text: str) -> tuple[str, str, str | None]:
    """(normalised text, space-separated phonemes, None), or ("", "", why not) for a transcript we cannot say."""
    try:
        normalized = normalize_text(text)
        phonemes = phonemize(normalized)
    except TldrError as e:
        return "", "", str(e)
    except Exception as e:  # a phonemiser fault on one odd transcript: skip the row, not the build
        return "", "", f"{type(e).__name__}: {e}"
    if not set(phonemes) - _NOT_SPEECH:
        return "", "", f"no phonemes in '{normalized}'"
    return normalized, " ".join(phonemes), None


def real_rows(real: RealSpeech, jobs: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """Manifest rows of the real utterances (text normalised and phonemised as synthetic rows are), and the
    (id, reason) of those whose transcript could not be phonemised."""
    texts = [u.text for u in real.utterances]
    if jobs <= 1 or len(texts) < _PARALLEL_FROM:
        results = list(map(_phonemize_one, texts))
    else:
        with get_context("spawn").Pool(jobs) as pool:
            results = pool.map(_phonemize_one, texts, chunksize=32)
    split_of = real.split_of()
    rows, skipped = [], []
    for u, (normalized, phonemes, error) in zip(real.utterances, results):
        if error is not None:
            skipped.append((u.id, error))
            continue
        rows.append({
            "id": u.id,
            "path": u.path.as_posix(),
            "speaker": u.speaker,
            "source_voice": u.speaker,
            "source_human": u.speaker,
            "engine": ENGINE,
            "split": split_of[u.speaker],
            "text": u.text,
            "normalized_text": normalized,
            "phonemes": phonemes,
            "duration": u.duration,
            "licence": u.licence,
            "shippable": u.shippable,
            "real": True,
            "gender": u.gender,
            "source": u.source,
        })
    return rows, skipped


def attribution(source: str, licence: str, folder: Path) -> str | None:
    """The line a product trained on this source must carry (None when its licence asks for none)."""
    if not SHIPPABLE_LICENCES.get(licence, True):
        return None
    for start, line in ATTRIBUTIONS.items():
        if source.startswith(start):
            return line
    return f"Contains {source}, licensed {licence} (authors: see {folder / 'README.md'})."


def real_speakers(rows: list[dict]) -> list[dict]:
    """speakers.json entries of the real speakers."""
    count, seconds, first = Counter(), defaultdict(float), {}
    for row in rows:
        count[row["speaker"]] += 1
        seconds[row["speaker"]] += row["duration"]
        first.setdefault(row["speaker"], row)
    return [{
        "id": s,
        "split": first[s]["split"],
        "source_voice": s,
        "source_human": s,
        "engine": ENGINE,
        "family": ENGINE,
        "licence": first[s]["licence"],
        "shippable": first[s]["shippable"],
        "real": True,
        "gender": first[s]["gender"],
        "source": first[s]["source"],
        "utterances": count[s],
        "hours": round(seconds[s] / 3600, 5),
    } for s in sorted(count)]


def describe_real(real: RealSpeech, rows: list[dict], skipped: list[tuple[str, str]],
                  splits: tuple[str, ...]) -> dict:
    """corpus.json's "real_speech": where it was read, the split by speaker, licences and attribution."""
    by_split = {}
    for split in splits:
        mine = [r for r in rows if r["split"] == split]
        speakers = sorted({r["speaker"] for r in mine})
        gender = {r["speaker"]: r["gender"] for r in mine}
        by_split[split] = {"utterances": len(mine), "hours": round(sum(r["duration"] for r in mine) / 3600, 4),
                           "speakers": speakers,
                           "women": [s for s in speakers if gender[s] == "F"],
                           "men": [s for s in speakers if gender[s] == "M"]}
    sources = []
    for (source, licence), mine in sorted(_group(rows, lambda r: (r["source"], r["licence"])).items()):
        sources.append({"source": source, "licence": licence, "shippable": licence in SHIPPABLE_LICENCES,
                        "speakers": len({r["speaker"] for r in mine}), "utterances": len(mine),
                        "hours": round(sum(r["duration"] for r in mine) / 3600, 4),
                        "attribution": attribution(source, licence, real.folder)})
    return {
        "folder": str(real.folder),
        "manifest_sha256": real.manifest_sha256,
        "utterances": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "speakers": len({r["speaker"] for r in rows}),
        "splits": by_split,
        "sources": sources,
        "attribution": sorted({s["attribution"] for s in sources if s["attribution"]}),
        "notices": list(real.notices),
        "dropped": [{"id": i, "reason": why} for i, why in real.dropped],
        "skipped": [{"id": i, "reason": why} for i, why in skipped],
    }


def _group(rows: list[dict], key) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def report_lines(summary: dict) -> list[str]:
    """The split of the real speakers, for the console."""
    head = (f"real speech from {summary['folder']}: {summary['utterances']} utterances, {summary['hours']:.2f} h, "
            f"{summary['speakers']} speakers ({len(summary['skipped'])} transcripts skipped, "
            f"{len(summary['dropped'])} rows dropped)")
    lines = [head]
    for split, part in summary["splits"].items():
        lines.append(f"  {split:<10} {len(part['speakers']):2d} speakers ({len(part['women'])} F, "
                     f"{len(part['men'])} M), {part['utterances']} utterances, {part['hours']:.2f} h: "
                     f"{', '.join(part['speakers'])}")
    return lines
