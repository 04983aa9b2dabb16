"""Codec features and vocoder on real speech (espeak-ng): shapes, determinism, streaming = offline, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tldr_core.audio import SAMPLE_RATE, read_audio, to_model_rate
from tldr_core.codec.features import AP, CONFIG, ENV, LF0, VUV, analyze, decode_aperiodicity, decode_envelope
from tldr_core.codec.vocoder import StreamingVocoder, synthesize
from tldr_core.errors import AudioInputError

# Streaming must match offline to float32 rounding everywhere: the vocoder has no crossfaded joins
# (join width 0), because excitation phase, noise and overlap-add state carry across chunks exactly.
STREAM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def speech(speech_wav) -> np.ndarray:
    return to_model_rate(*read_audio(speech_wav))


@pytest.fixture(scope="module")
def frames(speech) -> np.ndarray:
    return analyze(speech)


def _stream(frames: np.ndarray, sizes: list[int]) -> np.ndarray:
    vocoder, out, i, k = StreamingVocoder(), [], 0, 0
    while i < len(frames):
        out.append(vocoder.push(frames[i:i + sizes[k % len(sizes)]]))
        i += sizes[k % len(sizes)]
        k += 1
    return np.concatenate(out + [vocoder.flush()])


def test_frames_have_the_documented_layout(speech, frames):
    assert frames.shape == (len(speech) // CONFIG.hop + 1, CONFIG.dim) and frames.dtype == np.float32
    assert set(np.unique(frames[:, VUV])) == {0.0, 1.0}  # espeak speech has voiced and unvoiced frames
    f0 = np.exp(frames[:, LF0])
    assert np.all((f0 >= CONFIG.f0_floor * 0.9) & (f0 <= CONFIG.f0_ceil))
    assert np.all(frames[:, AP] <= 0) and np.all(frames[:, AP] >= CONFIG.ap_floor_db)
    assert np.all(np.isfinite(frames))


def test_analysis_and_synthesis_are_deterministic(speech, frames):
    assert np.array_equal(analyze(speech), frames)
    assert np.array_equal(synthesize(frames, len(speech)), synthesize(frames, len(speech)))


def test_copy_synthesis_keeps_level_and_spectrum(speech, frames):
    """Analysis -> synthesis -> analysis gives back about the same loudness and envelope."""
    out = synthesize(frames, len(speech))
    assert len(out) == len(speech)
    level_db = 20 * np.log10(np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(speech ** 2)))
    assert abs(level_db) < 2.0
    again = analyze(out)
    voiced = (frames[:, VUV] > 0) & (again[:, VUV] > 0)
    assert voiced.mean() > 0.3
    assert np.median(np.abs(again[voiced, LF0] - frames[voiced, LF0])) < 0.03  # < 1/2 semitone
    corr = np.corrcoef(again[voiced][:, ENV].ravel(), frames[voiced][:, ENV].ravel())[0, 1]
    assert corr > 0.95


def test_envelope_and_aperiodicity_decoders():
    env = np.linspace(-3, -9, CONFIG.n_env)
    full = decode_envelope(env)
    assert full.shape == (CONFIG.n_bins,) and full[0] == pytest.approx(-3) and full[-1] == pytest.approx(-9)
    ap = decode_aperiodicity(np.full(CONFIG.n_ap, -20.0))
    assert np.allclose(ap, 0.1)


@pytest.mark.parametrize("sizes", [[1], [2, 7, 3], [8], [5, 1, 16]])
def test_streaming_equals_offline(frames, sizes):
    offline = synthesize(frames)
    streamed = _stream(frames, sizes)
    assert streamed.shape == offline.shape
    assert np.max(np.abs(streamed - offline)) < STREAM_TOLERANCE


def test_the_streaming_check_can_fail(frames):
    """Restarting the vocoder per chunk (losing its state) is caught by the same tolerance."""
    chunks = [np.concatenate([v.push(frames[i:i + 8]), v.flush()])[:8 * CONFIG.hop]
              for i in range(0, len(frames), 8) for v in [StreamingVocoder()]]
    restarted = np.concatenate(chunks)
    offline = synthesize(frames)[:len(restarted)]
    assert np.max(np.abs(restarted - offline)) > 100 * STREAM_TOLERANCE


def test_first_audio_needs_one_frame_of_lookahead(frames):
    vocoder = StreamingVocoder()
    assert len(vocoder.push(frames[:1])) == 0
    assert len(vocoder.push(frames[1:2])) == 0  # frame 0's window starts 10 ms before sample 0
    out = vocoder.push(frames[2:3])
    assert len(out) == CONFIG.hop  # from now on each frame releases 10 ms of audio


@pytest.mark.parametrize("samples, message", [
    (np.zeros(SAMPLE_RATE), "silent"),
    (np.full(1000, 0.1), "at least"),
    (np.full(SAMPLE_RATE, np.nan), "invalid"),
    (np.zeros((SAMPLE_RATE, 2)), "mono"),
])
def test_bad_input_gives_clear_errors(samples, message):
    with pytest.raises(AudioInputError, match=message):
        analyze(samples)
