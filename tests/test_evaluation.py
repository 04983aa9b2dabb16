"""The quality judges and `tldr-voice evaluate`: the instruments behind every WER and similarity figure must hear
clear speech as its words, noise as no words, and tell two voices apart."""

import json

import jiwer
import numpy as np
import pytest
from cli_runner import run_cli
from espeak_speech import espeak, write_corpus

from tldr_core.evaluation.judges import Judges, WerDifference, WordErrors, words_for_wer
from tldr_core.paths import REPO_ROOT

SPEECH = REPO_ROOT.parent / "shared" / "speech"
SENTENCES = ["The weather was warm and the children played in the garden until dinner.",
             "Please bring the green book back to the library before Friday morning.",
             "Seven sailors crossed the river in a small wooden boat at sunrise."]


def test_one_transcript_that_runs_on_shows_as_insertions_and_leaves_the_median_clip_and_the_capped_wer_alone():
    references = ["the cat sat", "a dog ran home", "birds sing", "we go now", "the sun is up"]
    heard = ["the cat sat", "a dog ran home", "birds sing " + "and sing " * 10, "we go", "the sun is up"]
    errors = WordErrors.score(references, heard)
    assert errors.wer == pytest.approx(100 * 21 / 16)
    assert errors.inserted == pytest.approx(100 * 20 / 16) and errors.deleted == pytest.approx(100 / 16)
    assert errors.substituted == 0 and errors.median_clip == 0
    assert errors.capped == pytest.approx(100 * (2 + 1) / 16)  # the clip that ran on counts its 2 words, no more


def test_a_wer_difference_carried_by_one_clip_is_not_told_apart_from_chance_but_one_on_every_clip_is():
    references = [f"word{i} two three four" for i in range(10)]
    one_clip = ["totally wrong words here"] + references[1:]
    every_clip = [r.replace("two", "too") for r in references]
    by_one = WerDifference.paired(references, references, one_clip)
    assert by_one.points == pytest.approx(10) and by_one.low == 0 and by_one.high > 10
    by_all = WerDifference.paired(references, references, every_clip)
    assert by_all.points == by_all.low == by_all.high == pytest.approx(25)
    assert WerDifference.paired(references, every_clip, references).points == pytest.approx(-25)


@pytest.fixture(scope="module")
def judges():
    return Judges()


def test_whisper_hears_clear_speech_as_its_words_and_noise_as_none(judges, tmp_path):
    refs = [words_for_wer(text) for text in SENTENCES]
    heard = [words_for_wer(judges.transcribe(espeak("en-us", text, tmp_path))) for text in SENTENCES]
    assert jiwer.wer(refs, heard) < 0.25
    noise = np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32)
    assert jiwer.wer(refs[0], words_for_wer(judges.transcribe(noise)) or "-") > 0.9


def test_whisper_reads_the_same_degraded_audio_the_same_way_every_time(judges, tmp_path):
    """Speech in loud noise is where Whisper's default temperature fallback samples, unseeded (measured: four reads
    of this clip gave four transcripts); the judge must not, or WER differs between runs of the same audio."""
    speech = espeak("en-us", SENTENCES[2], tmp_path)
    noisy = (speech + np.random.default_rng(0).normal(0, 0.1, len(speech))).astype(np.float32)
    assert len({judges.transcribe(noisy) for _ in range(4)}) == 1


def test_the_evaluation_encoder_finds_a_voice_closer_to_itself_than_to_another(judges, tmp_path):
    first = espeak("en-us", SENTENCES[0], tmp_path)
    again = espeak("en-us", SENTENCES[1], tmp_path)
    other = espeak("en-us+f3", SENTENCES[1], tmp_path)
    same, different = judges.similarity(first, again), judges.similarity(first, other)
    assert same > 0.8 and same > different + 0.1


def _run(path, heard: list[str], similarity: list[float], mode: str = "baseline", ids=("a-0", "b-0")) -> None:
    """An `evaluate --json` run of one mode, as far as pairing reads it."""
    samples = [{"id": i, "reference": i[:-1] + "1", "text": "the cat sat on the mat", "heard": h, "similarity": s}
               for i, h, s in zip(ids, heard, similarity)]
    path.write_text(json.dumps([{"mode": mode, "patch_size": 1 if mode == "baseline" else 4, "speculation": None,
                                 "samples": samples}]))


def test_compare_pairs_two_runs_utterance_by_utterance_and_refuses_runs_that_do_not_pair(tmp_path):
    _run(tmp_path / "shipped.json", ["the cat sat on the mat"] * 2, [0.70, 0.80])
    _run(tmp_path / "new.json", ["the cat sat on the mat", "the cat sat on a hat"], [0.75, 0.85])
    done = run_cli("compare", tmp_path / "shipped.json", tmp_path / "new.json")
    assert done.returncode == 0, done.stderr
    # two errors in 12 words, both in the second run: +16.7 points; every clip's voice 0.05 closer
    assert "WER 0.00 % -> 16.67 %" in done.stdout and "above the first's +16.7 points" in done.stdout
    assert "similarity of the second above the first's +0.050" in done.stdout

    _run(tmp_path / "other_voices.json", ["the cat sat on the mat"] * 2, [0.7, 0.8], ids=("a-0", "c-0"))
    _run(tmp_path / "k4.json", ["the cat sat on the mat"] * 2, [0.7, 0.8], mode="tldr")
    (tmp_path / "broken.json").write_text('[{"mode": "baseline"')
    for other, says in [("other_voices.json", "said different utterances"), ("k4.json", "no mode in common"),
                        ("broken.json", "is not a run written by `tldr-voice evaluate --json`"),
                        ("missing.json", "Cannot read")]:
        refused = run_cli("compare", tmp_path / "shipped.json", tmp_path / other)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_evaluate_says_held_out_sentences_in_their_speakers_voices_and_reports_every_mode(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, {"en-us": "test", "en-us+f3": "test"}, SENTENCES[:2], tmp_path)

    done = run_cli("evaluate", corpus, "--modes", "baseline", "4", "--limit", "2", "--json", tmp_path / "eval.json",
                   "--threads", "1", "--temperature", "0.6", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["mode"], r["patch_size"]) for r in reports] == [("baseline", 1), ("tldr", 4)]
    for report in reports:
        assert report["utterances"] == 2 and [s["id"] for s in report["samples"]] == ["en-us-0", "en-us+f3-0"]
        assert all(s["reference"] == s["id"][:-1] + "1" for s in report["samples"])  # the speaker's other clip
        assert report["sentences"] == sum(s["sentences"] for s in report["samples"]) == 2
        assert report["stopped_by_model"] == sum(s["stopped_by_model"] for s in report["samples"])
        assert report["words_original"]["wer"] < 25  # the judge hears the originals; the model's own WER is what it is
        assert -1 <= report["similarity"] <= 1 and report["duration_ratio"] > 0.2
        # the model's share of its WER is what it scores above the same utterances' tokens through the codec
        assert report["vs_codec"]["points"] == pytest.approx(report["words"]["wer"] - report["words_codec"]["wer"])
        assert report["vs_codec"]["clips"] == 2 and -1 <= report["similarity_codec"] <= 1
    assert reports[0]["words_codec"] == reports[1]["words_codec"]  # one round trip per utterance, judged once
    for first, second in zip(*(r["samples"] for r in reports)):   # every transcript is kept, for later comparisons
        assert first["heard_codec"] == second["heard_codec"] and first["heard_original"] == second["heard_original"]
        assert first["heard_original"] and isinstance(first["heard"], str)
    assert reports[0]["vs_baseline"] is None and reports[1]["vs_baseline"]["clips"] == 2
    assert "TLDR k=4: 2 utterances" in done.stdout and "stopped by itself in" in done.stdout
    assert "WER above that codec round trip (the model's own share)" in done.stdout


@pytest.mark.slow
def test_codec_evaluate_judges_several_codecs_on_the_same_clips_in_one_run(tmp_path):
    """The shipped codec against an untrained one, beside copy synthesis (the vocoder's ceiling), on real speakers
    held out of training, each clip in the voice of another clip of its speaker: the originals are scored once for
    all, and the judges rank copy synthesis above the trained codec above the one that has learnt nothing."""
    import torch

    from tldr_core.codec.model import Codec, CodecConfig
    from tldr_core.codec.runtime import DEFAULT_CODEC

    if not (SPEECH / "manifest.tsv").is_file():
        pytest.skip(f"no real speech at {SPEECH} (the project's ../shared/speech; CI has it)")
    corpus = tmp_path / "corpus"  # two clips of each real speaker: the 4 test speakers' clips are judged
    assert run_cli("corpus", "build", corpus, "--hours", "0", "--real-speech", SPEECH, "--real-per-speaker", "2",
                   timeout=600).returncode == 0
    torch.manual_seed(0)
    untrained = CodecConfig(channels=32, frame_channels=16, decoder_blocks=2, frame_blocks=1)
    torch.save({"codec_config": untrained.to_dict(), "model": Codec(untrained).state_dict()}, tmp_path / "untrained.pt")

    done = run_cli("codec", "evaluate", corpus, "--model", DEFAULT_CODEC, tmp_path / "untrained.pt", "--limit", "4",
                   "--json", tmp_path / "codecs.json", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads((tmp_path / "codecs.json").read_text())
    shipped, noise = reports[str(DEFAULT_CODEC)], reports[str(tmp_path / "untrained.pt")]
    for key in ("n_clips", "seconds", "words_original", "dnsmos_original"):
        assert shipped[key] == noise[key]
    assert shipped["n_clips"] == 4 and shipped["words_original"]["wer"] < 25
    assert shipped["similarity"] > noise["similarity"] + 0.1
    assert shipped["words_roundtrip"]["wer"] < noise["words_roundtrip"]["wer"]
    assert [clip["heard_original"] for clip in shipped["clips"]] == [clip["heard_original"] for clip in noise["clips"]]
    ceiling = reports["copy synthesis (ceiling)"]
    assert ceiling["similarity"] > shipped["similarity"] and ceiling["n_clips"] == 4
    assert done.stdout.count("WER original") == 3
    assert shipped["increase"]["points"] == pytest.approx(
        shipped["words_roundtrip"]["wer"] - shipped["words_original"]["wer"])


def test_a_codec_is_judged_in_the_voice_of_its_speakers_longest_other_clip():
    from tldr_core.evaluation.codec_eval import reference_rows

    rows = [{"id": "a1", "source_human": "a", "duration": 3.0}, {"id": "a2", "source_human": "a", "duration": 9.0},
            {"id": "a3", "source_human": "a", "duration": 5.0}, {"id": "b1", "source_human": "b", "duration": 4.0}]
    chosen = {clip: row["id"] for clip, row in reference_rows(rows).items()}
    assert chosen == {"a1": "a2", "a2": "a3", "a3": "a2", "b1": "b1"}  # a speaker's only clip is its own voice
