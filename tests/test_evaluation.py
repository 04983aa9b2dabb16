"""The quality judges and `tldr-voice evaluate`: the instruments behind every WER and similarity figure must hear
clear speech as its words, noise as no words, and tell two voices apart."""

import json
import shutil
import subprocess

import jiwer
import numpy as np
import pytest
from cli_runner import run_cli

from tldr_core.audio import read_audio, to_model_rate
from tldr_core.codec.evaluate import Judges, words_for_wer

SENTENCES = ["The weather was warm and the children played in the garden until dinner.",
             "Please bring the green book back to the library before Friday morning.",
             "Seven sailors crossed the river in a small wooden boat at sunrise."]


def espeak(path, text: str, voice: str = "en-us") -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return to_model_rate(*read_audio(path))


@pytest.fixture(scope="module")
def judges():
    return Judges()


def test_whisper_hears_clear_speech_as_its_words_and_noise_as_none(judges, tmp_path):
    refs = [words_for_wer(text) for text in SENTENCES]
    heard = [words_for_wer(judges.transcribe(espeak(tmp_path / f"{i}.wav", text))) for i, text in enumerate(SENTENCES)]
    assert jiwer.wer(refs, heard) < 0.25
    noise = np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32)
    assert jiwer.wer(refs[0], words_for_wer(judges.transcribe(noise)) or "-") > 0.9


def test_the_evaluation_encoder_finds_a_voice_closer_to_itself_than_to_another(judges, tmp_path):
    first = espeak(tmp_path / "a1.wav", SENTENCES[0], "en-us")
    again = espeak(tmp_path / "a2.wav", SENTENCES[1], "en-us")
    other = espeak(tmp_path / "b.wav", SENTENCES[1], "en-us+f3")
    same, different = judges.similarity(first, again), judges.similarity(first, other)
    assert same > 0.8 and same > different + 0.1


def test_evaluate_says_held_out_sentences_in_their_speakers_voices_and_reports_every_mode(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    rows = []
    for speaker, voice in (("us", "en-us"), ("f3", "en-us+f3")):
        for i, text in enumerate(SENTENCES[:2]):
            path = corpus / "audio" / f"{speaker}-{i}.wav"
            samples = espeak(path, text, voice)
            rows.append({"id": f"{speaker}-{i}", "path": f"audio/{speaker}-{i}.wav", "text": text, "split": "test",
                         "speaker": speaker, "duration": len(samples) / 16000, "shippable": True})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    done = run_cli("evaluate", corpus, "--modes", "baseline", "4", "--limit", "2", "--json", tmp_path / "eval.json",
                   "--threads", "1", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["mode"], r["patch_size"]) for r in reports] == [("baseline", 1), ("tldr", 4)]
    for report in reports:
        assert report["utterances"] == 2 and [s["id"] for s in report["samples"]] == ["f3-0", "us-0"]
        assert all(s["reference"] == s["id"][:-1] + "1" for s in report["samples"])  # the speaker's other clip
        assert report["sentences"] == sum(s["sentences"] for s in report["samples"]) == 2
        assert report["stopped_by_model"] == sum(s["stopped_by_model"] for s in report["samples"])
        assert report["wer_original"] < 25  # the judge hears the originals; the model's own WER is what it is
        assert -1 <= report["similarity"] <= 1 and report["duration_ratio"] > 0.2
    assert "TLDR k=4: 2 utterances" in done.stdout and "stopped by itself in" in done.stdout
