"""The codec's decoder fine-tuned on the speech model's own tokens (`tldr-voice train own-tokens`): the model
speaks training sentences once (kept, resumable), the decoder learns from them, the tokenizer stays, and the
checkpoint exports like any codec's."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict

import numpy as np
import pytest
import torch

from tldr_core.audio import read_audio, to_model_rate, write_wav
from tldr_core.cli import main
from tldr_core.codec.runtime import DEFAULT_CODEC
from tldr_core.codec.store import codec_fingerprint, load_codec
from tldr_core.errors import CorpusError
from tldr_core.files import file_sha256
from tldr_core.synthesis import Synthesizer
from tldr_core.text import normalize_text, phonemize
from tldr_core.training.listener import LISTENER, Listener, ListenerConfig
from tldr_core.training.own_tokens import SPOKEN, OwnTokensConfig, speak_sentences, train_own_tokens

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Could you repair my mirror before Tuesday?",
             "Tara checked the strange guitar near the airport.", "A ticket, an envelope and a clock.",
             "Please call Stella and ask her to bring these things.", "We also need a small plastic snake."]
QUICK = OwnTokensConfig(sentences=2, valid_sentences=2, kinds=(0, 1, 4), steps=4, lr=1e-3, validate_every=2, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two espeak-ng voices with two training sentences each; in validation a third voice with two sentences and a
    fourth whose second clip is one word, too little speech to be a voice sample."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("corpus")
    said = [(f"{text} {SENTENCES[(i + 1) % len(SENTENCES)]}",  # two sentences: a voice sample of 3 s or more
             *((["en-us", "en+f3"][i % 2], "train") if i < 4 else ("en+m3", "validation")))
            for i, text in enumerate(SENTENCES)]
    said += [(f"{SENTENCES[0]} {SENTENCES[1]}", "en+f4", "validation"), ("Yes.", "en+f4", "validation")]
    rows = []
    for i, (text, voice, split) in enumerate(said):
        raw = tmp_path_factory.mktemp("raw") / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        samples = to_model_rate(*read_audio(raw))
        write_wav(root / f"audio/u{i}.wav", samples, 16000)
        rows.append({"id": f"u{i}", "path": f"audio/u{i}.wav", "speaker": voice, "split": split, "text": text,
                     "phonemes": " ".join(phonemize(normalize_text(text))), "duration": len(samples) / 16000,
                     "shippable": True})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    """A phone listener (untrained: what it hears well does not matter here, only that the decoder learns from it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("listener") / LISTENER
    model = Listener(ListenerConfig(channels=32, blocks=2))
    torch.save({"listener_config": asdict(model.cfg), "model": model.state_dict()}, path)
    return path


def test_the_tokens_spoken_for_training_are_those_speaking_decodes(tiny_model, corpus):
    synth = Synthesizer(tiny_model, device="cpu")
    voice = synth.prepare_voice(to_model_rate(*read_audio(corpus / "audio/u0.wav")))
    for mode, k in (("baseline", 1), ("tldr", 4)):
        tokens = synth.speech_tokens(SENTENCES[1], voice, mode, k, seed=3)
        list(synth.stream(SENTENCES[1], voice, mode, k, seed=3))
        assert len(tokens) == synth.last_stats.tokens > 0
        assert np.array_equal(tokens, synth.speech_tokens(SENTENCES[1], voice, mode, k, seed=3))


def test_sentences_are_spoken_once_each_in_another_clip_of_their_speaker(tiny_model, corpus, tmp_path, capsys):
    synth = Synthesizer(tiny_model, device="cpu")
    paths = speak_sentences(synth, corpus, "train", 3, tmp_path, QUICK)
    assert [p.stem for p in paths] == ["u1", "u0", "u3"]  # round-robin over the speakers, as `evaluate` picks
    rows = {json.loads(line)["id"]: json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()}
    for path in paths:
        with np.load(path) as spoken:
            reference = str(spoken["reference"])
            assert reference != path.stem and rows[reference]["speaker"] == rows[path.stem]["speaker"]
            assert len(spoken["k1"]) > 0 and len(spoken["k4"]) % 4 == 0 and len(spoken["phones"]) > 0
            own = synth.codec.encode(to_model_rate(*read_audio(corpus / rows[path.stem]["path"])))[0]
            assert np.array_equal(spoken["k0"], own)  # the recording's own tokens: the codec's round trip
    made = [p.stat().st_mtime_ns for p in paths]
    assert speak_sentences(synth, corpus, "train", 3, tmp_path, QUICK) == paths
    assert [p.stat().st_mtime_ns for p in paths] == made  # kept, not spoken again

    # a sentence whose speaker has no other clip that makes a voice sample is left out, with a word why
    assert [p.stem for p in speak_sentences(synth, corpus, "validation", 4, tmp_path, QUICK)] == ["u4", "u7", "u5"]
    assert "left out u6" in capsys.readouterr().out

    # a kind added to the recipe later is made for the kept sentences, and what they hold stays
    fewer = OwnTokensConfig(**{**asdict(QUICK), "kinds": (1,)})
    other = speak_sentences(synth, corpus, "train", 1, tmp_path / "fewer", fewer)[0]
    before = dict(np.load(other))
    assert set(before) >= {"k1", "phones"} and "k4" not in before
    speak_sentences(synth, corpus, "train", 1, tmp_path / "fewer", QUICK)
    with np.load(other) as now:
        assert {"k0", "k1", "k4"} <= set(now.files) and np.array_equal(now["k1"], before["k1"])


def test_the_decoder_learns_from_its_own_tokens_and_the_tokenizer_stays(tiny_model, corpus, listener, tmp_path):
    history = train_own_tokens(corpus, DEFAULT_CODEC, tiny_model, listener, tmp_path / "run", QUICK)
    assert [h["step"] for h in history] == [2, 4]
    assert all(np.isfinite(h["val_listener"]) for h in history) and history[-1]["val_anchor"] > 0
    assert len(list((tmp_path / "run" / SPOKEN).glob("*.npz"))) == 3  # 2 train, 2 validation but u6 left out

    tuned, shipped = load_codec(tmp_path / "run" / "checkpoint.pt"), load_codec(DEFAULT_CODEC)
    changed = {name for name, p in tuned.state_dict().items() if not torch.equal(p, shipped.state_dict()[name])}
    assert changed and all(not name.startswith("enc_") for name in changed)  # the decoder learnt, tokens stayed
    assert codec_fingerprint(tmp_path / "run" / "checkpoint.pt") == codec_fingerprint(DEFAULT_CODEC)

    with pytest.raises(CorpusError, match="--resume"):
        train_own_tokens(corpus, DEFAULT_CODEC, tiny_model, listener, tmp_path / "run", QUICK)
    resumed = train_own_tokens(corpus, DEFAULT_CODEC, tiny_model, listener, tmp_path / "run",
                               OwnTokensConfig(**{**asdict(QUICK), "steps": 6}), resume=True)
    assert [h["step"] for h in resumed] == [2, 4]  # a resumed run keeps its recipe: it had finished


def test_the_cli_trains_and_the_checkpoint_exports_as_a_codec(tiny_model, corpus, listener, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "own-tokens", str(corpus), "--codec", str(DEFAULT_CODEC), "--model", str(tiny_model),
                 "--listener", str(listener), "--out", str(run), "--sentences", "1", "--steps", "2",
                 "--threads", "1"]) == 0
    assert "validation listener loss" in capsys.readouterr().out
    assert main(["codec", "export", str(run / "checkpoint.pt"), str(tmp_path / "codec")]) == 0
    assert codec_fingerprint(tmp_path / "codec") == codec_fingerprint(DEFAULT_CODEC)

    # exported over the codec it started from: only the decoder changes, and the model still speaks with it
    shutil.copytree(DEFAULT_CODEC, tmp_path / "shipped")
    assert main(["codec", "export", str(run / "checkpoint.pt"), str(tmp_path / "shipped")]) == 0
    assert file_sha256(tmp_path / "shipped" / "tokenizer.onnx") == file_sha256(DEFAULT_CODEC / "tokenizer.onnx")
    assert file_sha256(tmp_path / "shipped" / "decoder.onnx") != file_sha256(DEFAULT_CODEC / "decoder.onnx")
    synth = Synthesizer(tiny_model, device="cpu", codec_dir=tmp_path / "shipped")
    voice = synth.prepare_voice(to_model_rate(*read_audio(corpus / "audio/u0.wav")))
    assert len(np.concatenate(list(synth.stream("Hello.", voice, "tldr", 4, seed=0)))) > 0
