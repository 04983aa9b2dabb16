"""The corpus builder: a plan that is reproducible and splits by person, and real builds that are
byte-identical, resumable and refuse to mix settings."""

import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tldr_core.corpus.build import build_corpus
from tldr_core.corpus.plan import SPLITS, PlanConfig, Speaker, Utterance, make_plan
from tldr_core.corpus.render import pyworld, render, wav_path, world_warp
from tldr_core.corpus.sentences import make_sentences
from tldr_core.corpus.engines import CATALOGUE, available_voices, installed_engine_voices, synthesize
from tldr_core.errors import CorpusError
from tldr_core.text import normalize_text

ALL_VOICES = list(CATALOGUE)


def humans_by_split(plan):
    splits = defaultdict(set)
    for speaker in plan.speakers:
        splits[speaker.split].add(speaker.voice.source_human)
    return splits


# ------------------------------------------------------------------------------------------- sentences

def test_sentences_are_the_same_for_a_seed_and_differ_between_seeds():
    assert make_sentences(3, 50) == make_sentences(3, 50)
    assert make_sentences(3, 50) != make_sentences(4, 50)


def test_sentences_are_thousands_of_distinct_ones_of_every_kind():
    sentences = make_sentences(0, 5000)
    assert len(set(sentences)) == 5000
    words = [len(s.split()) for s in sentences]
    assert min(words) <= 4 and sum(w >= 30 for w in words) > 100
    assert sum(s.endswith("?") for s in sentences) > 300
    assert sum(s.endswith("!") for s in sentences) > 100
    assert any("$" in s for s in sentences) and any(":" in s for s in sentences)  # money and clock times
    assert sum(any(c.isdigit() for c in s) for s in sentences) > 300


# ------------------------------------------------------------------------------------------------ voices

def test_one_person_through_several_engines_is_one_source_human():
    human = {v.id: v.source_human for v in CATALOGUE}
    assert human["flite-slt"] == human["festival-slt-hts"] == human["rhvoice-slt"]
    assert human["flite-awb"] == human["rhvoice-alan"]
    assert human["flite-kal16"] == human["festival-kal"]
    assert len({v.id for v in CATALOGUE}) == len(CATALOGUE)


def test_non_commercial_and_no_derivative_voices_are_not_shippable():
    for voice in CATALOGUE:
        assert voice.shippable == ("-NC" not in voice.licence and "-ND" not in voice.licence), voice.id
    assert {v.id for v in CATALOGUE if not v.shippable} == {"rhvoice-evgeniy", "rhvoice-lyubov"}


def test_an_unknown_engine_is_refused_with_the_known_ones_named():
    with pytest.raises(CorpusError, match="espeak-ng"):
        available_voices(("espeak",))


@pytest.mark.skipif(not installed_engine_voices("espeak-ng"), reason="espeak-ng is not installed")
def test_every_espeak_variant_sounds_different():
    voices, _ = available_voices(("espeak-ng",))
    sounds = {hashlib.sha256(synthesize(v, "hello there.")[0].tobytes()).hexdigest() for v in voices}
    assert len(sounds) == len(voices) >= 20


# ------------------------------------------------------------------------------------------------- plan

def test_default_plan_has_over_100_speakers_from_over_25_source_voices():
    plan = make_plan(0, 1.0, False, ALL_VOICES)
    assert len(plan.speakers) >= 100
    assert len({s.voice.id for s in plan.speakers}) >= 25
    assert {u.speaker.id for u in plan.utterances} == {s.id for s in plan.speakers}  # every speaker speaks


def test_plan_is_the_same_for_the_same_settings_and_changes_with_any_of_them():
    plan = make_plan(0, 0.5, False, ALL_VOICES)
    assert plan == make_plan(0, 0.5, False, ALL_VOICES)
    assert plan.hash() == make_plan(0, 0.5, False, list(reversed(ALL_VOICES))).hash()
    others = [make_plan(1, 0.5, False, ALL_VOICES), make_plan(0, 0.6, False, ALL_VOICES),
              make_plan(0, 0.5, True, ALL_VOICES), make_plan(0, 0.5, False, ALL_VOICES[1:])]
    assert len({plan.hash()} | {p.hash() for p in others}) == 5


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
@pytest.mark.parametrize("shippable_only", [False, True])
def test_no_source_human_is_in_two_splits(seed, shippable_only):
    splits = humans_by_split(make_plan(seed, 0.2, shippable_only, ALL_VOICES))
    assert set(splits) == set(SPLITS)
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not splits[a] & splits[b]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_split_has_recorded_and_synthetic_voices(seed):
    plan = make_plan(seed, 0.2, False, ALL_VOICES)
    for split in SPLITS:
        families = {s.voice.family for s in plan.speakers if s.split == split}
        assert "recorded" in families and families & {"formant", "neural"}, split


def test_shippable_only_leaves_out_every_non_commercial_or_no_derivative_source():
    plan = make_plan(0, 1.0, True, ALL_VOICES)
    assert all(v.shippable for v in plan.voices)
    assert all(u.speaker.voice.shippable for u in plan.utterances)
    assert not {"evgeny-chebatkov", "lyubov-sablina"} & {s.voice.source_human for s in plan.speakers}
    assert len(plan.speakers) >= 100


def test_kokoro_takes_at_most_its_share_of_the_hours():
    plan = make_plan(0, 2.0, False, ALL_VOICES)
    kokoro = sum(u.estimated_seconds for u in plan.utterances if u.speaker.voice.engine == "kokoro")
    total = sum(u.estimated_seconds for u in plan.utterances)
    assert 0 < kokoro / total <= PlanConfig().kokoro_max_share + 0.01
    assert abs(total / 3600 - 2.0) < 0.1


def test_kokoro_blends_mix_only_base_voices_of_their_own_split():
    plan = make_plan(0, 1.0, False, ALL_VOICES)
    split_of = {s.voice.engine_voice: s.split for s in plan.speakers if s.voice.engine == "kokoro" and not s.mix}
    blends = [s for s in plan.speakers if s.mix]
    assert blends
    for blend in blends:
        assert {split_of[name] for name, _ in blend.mix} == {blend.split}
        assert abs(sum(w for _, w in blend.mix) - 1) < 1e-3 and blend.mix[0][1] >= 0.5


def test_world_siblings_stay_in_the_ranges_that_make_new_but_related_speakers():
    config = PlanConfig()
    warped = [s for s in make_plan(0, 1.0, False, ALL_VOICES).speakers if s.envelope_scale != 1.0]
    assert len(warped) >= 50
    for s in warped:
        assert config.f0_scale[0] <= s.f0_scale <= config.f0_scale[1]
        assert 0.04 <= abs(s.envelope_scale - 1) <= 0.12


def test_engines_are_given_the_normalised_text():
    utterances = make_plan(0, 1.0, False, ALL_VOICES).utterances
    assert all(u.normalized_text == normalize_text(u.text) for u in utterances)
    assert any("$" in u.text and "dollar" in u.normalized_text for u in utterances)


@pytest.mark.parametrize("hours", [0, -1, float("nan"), float("inf")])
def test_a_number_of_hours_that_is_not_positive_and_finite_is_refused(hours):
    with pytest.raises(CorpusError, match="hours"):
        make_plan(0, hours, False, ALL_VOICES)


def median_pitch(samples: np.ndarray) -> float:
    f0, _ = pyworld.dio(samples.astype(np.float64), 16000)
    return float(np.median(f0[f0 > 0]))


def test_world_warp_scales_the_pitch_and_keeps_the_length():
    t = np.arange(16000) / 16000
    buzz = (0.3 * sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 20))).astype(np.float32)
    warped = world_warp(buzz, 1.25, 1.1)
    assert median_pitch(warped) == pytest.approx(1.25 * median_pitch(buzz), rel=0.05)
    assert abs(len(warped) - len(buzz)) < 16000 * 0.01


# ----------------------------------------------------------------------------------------- real builds

@pytest.mark.skipif(not installed_engine_voices("espeak-ng"), reason="espeak-ng is not installed")
def test_an_engine_failure_is_reported_with_its_cause_and_writes_nothing(tmp_path):
    voice = replace(next(v for v in CATALOGUE if v.engine == "espeak-ng"), engine_voice="nosuchvoice")
    utterance = Utterance("broken-0001", Speaker("broken", voice, "train"), "Hello.", "hello.", 1.0)
    result = render(tmp_path, utterance)
    assert result.error.startswith("RuntimeError: espeak-ng failed")
    assert not wav_path(tmp_path, utterance).exists()


needs_flite = pytest.mark.skipif(not installed_engine_voices("flite"), reason="flite is not installed")
TINY = dict(hours=0.004, seed=0, engines=("flite",))  # 4 voices, 16 speakers, one short sentence each


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "build_stats.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "a"
    return out, build_corpus(out, jobs=1, **TINY)


@needs_flite
def test_a_build_writes_16_khz_mono_wavs_with_short_silences_and_a_complete_manifest(built):
    out, summary = built
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) >= 16
    speakers = {s["id"]: s for s in json.loads((out / "speakers.json").read_text())}
    for row in rows:
        assert set(row) >= {"id", "path", "speaker", "source_voice", "source_human", "engine", "split", "text",
                            "normalized_text", "phonemes", "duration", "licence", "shippable"}
        info = sf.info(out / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(row["duration"], abs=1e-3)
        samples, _ = sf.read(out / row["path"])
        loud = np.flatnonzero(np.abs(samples) > 0.01)
        assert 0.04 < loud[0] / 16000 < 0.3 and 0.04 < (len(samples) - loud[-1]) / 16000 < 0.35
        assert 0.1 < np.abs(samples).max() <= 0.9
        assert row["phonemes"] and row["split"] == speakers[row["speaker"]]["split"]
    assert summary["totals"]["utterances"] == len(rows) and not summary["failed"]
    assert json.loads((out / "build_stats.json").read_text())["synthesized"] == len(rows)


@needs_flite
def test_rebuilding_with_the_same_seed_in_parallel_gives_byte_identical_files(built, tmp_path):
    out, _ = built
    again = tmp_path / "b"
    build_corpus(again, jobs=2, **TINY)
    assert file_hashes(again) == file_hashes(out)


@needs_flite
def test_a_rerun_resumes_synthesising_only_the_missing_files(built, tmp_path):
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    missing = sorted(copy.glob("audio/*/*.wav"))[:2]
    for path in missing:
        path.unlink()
    stats = build_corpus(copy, jobs=1, **TINY)["stats"]
    assert (stats["synthesized"], stats["resumed"]) == (2, len(list(out.glob("audio/*/*.wav"))) - 2)
    assert file_hashes(copy) == file_hashes(out)


@needs_flite
def test_resuming_with_other_settings_is_refused(built):
    out, _ = built
    with pytest.raises(CorpusError, match="other settings"):
        build_corpus(out, jobs=1, **{**TINY, "seed": 1})


def test_a_negative_number_of_jobs_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="jobs"):
        build_corpus(tmp_path / "out", jobs=-2, **TINY)


@needs_flite
def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        build_corpus(tmp_path, jobs=1, **TINY)
