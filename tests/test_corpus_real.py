"""Real read speech in the corpus (`corpus build --real-speech DIR`): read in place, split by speaker with held-out
women and men, licences recorded, transcripts phonemised as synthetic sentences are, and resumable like the rest."""

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import soundfile as sf

from tldr_core.cli import main
from tldr_core.corpus import read_split, utterance_path
from tldr_core.corpus.build import build_corpus
from tldr_core.corpus.engines import installed_engine_voices
from tldr_core.corpus.plan import SPLITS
from tldr_core.corpus.real import REQUIRED_COLUMNS, RealSplitConfig, read_real_speech
from tldr_core.errors import CorpusError
from tldr_core.text import normalize_text, phonemize

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
pytestmark = pytest.mark.skipif(not (SPEECH / "manifest.tsv").is_file(),
                                reason=f"no real speech at {SPEECH} (the project's ../shared/speech; CI has it)")
PER_SPEAKER = 4  # utterances per speaker in the built corpus: 116 rows, phonemised in about a second
CC0_SPEAKER = "kathleen"


def tsv_rows() -> list[dict]:
    lines = (SPEECH / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def full():
    """The whole real set, split (no phonemising: fast)."""
    return read_real_speech(SPEECH, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "corpus"
    summary = build_corpus(out, hours=0, seed=0, jobs=1, real_speech=SPEECH, real_per_speaker=PER_SPEAKER)
    return out, summary, manifest(out)


# ------------------------------------------------------------------------------------------------ split

def test_every_real_speaker_is_in_exactly_one_split(full, built):
    _, _, rows = built
    splits = defaultdict(set)
    for row in rows:
        splits[row["speaker"]].add(row["split"])
    assert set(splits) == {r["speaker"] for r in tsv_rows()}  # every speaker, even with few utterances kept
    assert all(len(s) == 1 for s in splits.values())
    assert {s: next(iter(v)) for s, v in splits.items()} == full.split_of()  # the limit does not move anyone


def test_test_holds_two_women_and_two_men_and_validation_one_of_each_all_with_enough_utterances(full):
    gender = {u.speaker: u.gender for u in full.utterances}
    count = Counter(u.speaker for u in full.utterances)
    held = defaultdict(Counter)
    for speaker, split in full.splits:
        held[split][gender[speaker]] += 1
        if split != "train":
            assert count[speaker] >= RealSplitConfig().min_utterances, speaker
    assert held["test"]["F"] >= 2 and held["test"]["M"] >= 2
    assert held["validation"] == Counter(F=1, M=1)
    assert held["train"]["F"] >= 10 and held["train"]["M"] >= 5


def test_the_cc0_speaker_is_in_train(full, built):
    assert full.split_of()[CC0_SPEAKER] == "train"
    assert {r["split"] for r in built[2] if r["speaker"] == CC0_SPEAKER} == {"train"}


def test_the_split_is_the_same_for_a_seed_and_changes_with_it(full):
    assert read_real_speech(SPEECH, seed=0).splits == full.splits
    others = [read_real_speech(SPEECH, seed=s).splits for s in (1, 2, 3)]
    assert any(o != full.splits for o in others)
    assert all(dict(o)[CC0_SPEAKER] == "train" for o in others)


def test_the_console_and_corpus_json_say_which_speakers_went_where(built):
    out, summary, _ = built
    real = json.loads((out / "corpus.json").read_text())["real_speech"]
    assert real == summary["real_speech"]
    assert len(real["splits"]["test"]["women"]) >= 2 and len(real["splits"]["test"]["men"]) >= 2
    assert (len(real["splits"]["validation"]["women"]), len(real["splits"]["validation"]["men"])) == (1, 1)
    assert sum(len(part["speakers"]) for part in real["splits"].values()) == real["speakers"] == 29


# -------------------------------------------------------------------------------------------------- rows

def test_rows_point_at_the_files_in_place_which_read_as_16_khz_audio(built):
    out, _, rows = built
    assert not [p for p in out.rglob("*") if p.suffix not in (".json", ".jsonl")]  # no audio copied
    for row in rows:
        path = Path(row["path"])
        assert path.is_absolute() and path.is_relative_to(SPEECH.resolve()) and path.is_file()
        assert utterance_path(out, row) == path == out / row["path"]  # what every consumer joins
    for row in {r["speaker"]: r for r in rows}.values():  # one file per speaker
        info = sf.info(utterance_path(out, row))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames / 16000 == pytest.approx(row["duration"], abs=0.05)


def test_rows_carry_the_transcript_phonemised_as_synthetic_rows_are_and_the_licence(built):
    _, _, rows = built
    by_id = {r["id"]: r for r in tsv_rows()}
    assert len(rows) == len({r["id"] for r in rows}) == 29 * PER_SPEAKER
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    for row in rows:
        source = by_id[row["id"]]
        assert row["text"] == source["text"] and row["normalized_text"] == normalize_text(source["text"])
        assert row["phonemes"] == " ".join(phonemize(row["normalized_text"]))
        assert row["real"] is True and row["engine"] == "real"
        assert row["speaker"] == row["source_human"] == row["source_voice"] == source["speaker"]
        assert (row["gender"], row["licence"], row["source"]) == (source["gender"], source["licence"],
                                                                  source["source"])
        assert row["licence"] == ("CC0-1.0" if row["speaker"] == CC0_SPEAKER else "CC-BY-4.0")
        assert row["shippable"] is True


def test_the_attribution_cc_by_asks_for_is_recorded(built):
    real = built[1]["real_speech"]
    assert any("Mini LibriSpeech" in line and "CC BY 4.0" in line for line in real["attribution"])
    licences = {s["licence"]: s for s in real["sources"]}
    assert licences["CC-BY-4.0"]["attribution"] and licences["CC0-1.0"]["attribution"] is None


def test_read_split_returns_the_real_rows_also_when_only_shippable_ones_are_asked_for(built):
    out, _, rows = built
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        assert read_split(out, split) == mine == read_split(out, split, shippable_only=True)


def test_speakers_json_lists_every_real_speaker_with_gender_licence_and_split(built, full):
    out, _, _ = built
    speakers = {s["id"]: s for s in json.loads((out / "speakers.json").read_text())}
    assert len(speakers) == 29
    for speaker, split in full.splits:
        assert speakers[speaker]["split"] == split and speakers[speaker]["real"]
        assert speakers[speaker]["gender"] in ("F", "M") and speakers[speaker]["utterances"] == PER_SPEAKER


# ------------------------------------------------------------------------------------- resuming, errors

def test_a_rerun_rewrites_the_same_manifest_without_duplicating_real_rows(built, tmp_path):
    out, _, rows = built
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    build_corpus(copy, hours=0, seed=0, jobs=1, real_speech=SPEECH, real_per_speaker=PER_SPEAKER)
    assert manifest(copy) == rows
    for name in ("manifest.jsonl", "speakers.json", "corpus.json", "plan.json"):
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name


def test_a_rerun_with_other_real_speech_settings_is_refused(built):
    out, _, _ = built
    with pytest.raises(CorpusError, match="other settings"):
        build_corpus(out, hours=0, seed=0, jobs=1, real_speech=SPEECH, real_per_speaker=PER_SPEAKER + 1)
    with pytest.raises(CorpusError, match="other settings"):
        build_corpus(out, hours=0, seed=1, jobs=1, real_speech=SPEECH, real_per_speaker=PER_SPEAKER)


def small_folder(folder: Path, extra: list[str]) -> Path:
    """A real-speech folder of a few rows that point (by absolute path) at the shared files, plus `extra` lines."""
    folder.mkdir()
    rows = [r for r in tsv_rows() if r["speaker"] in ("libri-1088", "libri-118")][:6]
    lines = ["\t".join(REQUIRED_COLUMNS)]
    lines += ["\t".join(str(SPEECH.resolve() / r[c]) if c == "path" else r[c] for c in REQUIRED_COLUMNS)
              for r in rows]
    (folder / "manifest.tsv").write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    return folder


def test_a_transcript_that_cannot_be_phonemised_is_skipped_with_a_count(tmp_path):
    good = tsv_rows()[0]
    bad = [f"{uid}\t{SPEECH.resolve() / good['path']}\tlibri-1088\tF\t1.0\t{text}\tMini LibriSpeech\tCC-BY-4.0"
           for uid, text in (("zz-empty", ""), ("zz-dots", "..."))]
    missing = "zz-missing\tnowhere.opus\tlibri-1088\tF\t1.0\tHello there.\tMini LibriSpeech\tCC-BY-4.0"
    folder = small_folder(tmp_path / "speech", bad + [missing])
    summary = build_corpus(tmp_path / "out", hours=0, jobs=1, real_speech=folder)
    real = summary["real_speech"]
    assert {s["id"] for s in real["skipped"]} == {"zz-empty", "zz-dots"}
    assert [d["id"] for d in real["dropped"]] == ["zz-missing"]
    assert len(manifest(tmp_path / "out")) == real["utterances"] == 6
    assert any("none of them is in validation or test" in n for n in summary["notices"])  # too few to hold out


def test_a_missing_folder_or_manifest_or_column_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="not a folder"):
        build_corpus(tmp_path / "out", hours=0, real_speech=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no manifest.tsv"):
        build_corpus(tmp_path / "out", hours=0, real_speech=tmp_path / "empty")
    (tmp_path / "empty" / "manifest.tsv").write_text("id\tpath\tspeaker\tduration\ttext\nx\tx.opus\ts\t1\thi\n")
    with pytest.raises(CorpusError, match="gender, source, licence"):
        build_corpus(tmp_path / "out", hours=0, real_speech=tmp_path / "empty")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_zero_hours_without_real_speech_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="--real-speech"):
        build_corpus(tmp_path / "out", hours=0)


def test_the_command_line_builds_a_real_speech_only_corpus(tmp_path, capsys):
    assert main(["corpus", "build", str(tmp_path / "out"), "--hours", "0", "--real-speech", str(SPEECH),
                 "--real-per-speaker", "1", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "test" in printed and "validation" in printed and CC0_SPEAKER in printed
    assert len(manifest(tmp_path / "out")) == 29


@pytest.mark.skipif(not installed_engine_voices("flite"), reason="flite is not installed")
def test_synthetic_and_real_rows_share_one_manifest(tmp_path):
    out = tmp_path / "both"
    build_corpus(out, hours=0.004, seed=0, jobs=1, engines=("flite",), real_speech=SPEECH, real_per_speaker=1)
    rows = manifest(out)
    real = [r for r in rows if r["real"]]
    synthetic = [r for r in rows if not r["real"]]
    assert len(real) == 29 and len(synthetic) >= 16
    assert all((out / r["path"]).is_file() for r in synthetic)  # synthetic paths stay relative to the corpus
    assert not {r["speaker"] for r in real} & {r["speaker"] for r in synthetic}
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
