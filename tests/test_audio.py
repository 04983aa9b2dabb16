"""Voice samples: every file or recording a person brings either becomes clean model input or a clear error.

The speech is real: espeak-ng (and flite where installed) synthesise it once for the whole file.
"""

from __future__ import annotations

import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tldr_core import audio
from tldr_core.audio import (MAX_SAMPLE_SECONDS, MIN_SPEECH_SECONDS, SAMPLE_RATE, TARGET_LUFS, load_reference_clip,
                             normalize_loudness, prepare_reference_clip, read_audio, to_model_rate, trim_silence)
from tldr_core.errors import AudioInputError

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home."


def _speak(engine: str, out: Path) -> tuple[np.ndarray, int]:
    command = {"espeak-ng": ["espeak-ng", "-w", str(out), TEXT], "flite": ["flite", "-t", TEXT, "-o", str(out)]}
    subprocess.run(command[engine], check=True, capture_output=True)
    return sf.read(out, dtype="float32")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """About 4 s of espeak-ng speech at its native 22050 Hz, framed by digital silence."""
    return _speak("espeak-ng", tmp_path_factory.mktemp("speech") / "espeak.wav")


def _speech_bounds(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Where the synthesised speech really starts and ends (the engines pad with exact zeros)."""
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return loud[0] / rate, (loud[-1] + 1) / rate


def _resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    g = gcd(rate, new_rate)
    return resample_poly(samples, new_rate // g, rate // g).astype(np.float32)


def _noise(seconds: float, dbfs: float, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    white = np.random.default_rng(seed).standard_normal(int(seconds * rate))
    return (white * 10 ** (dbfs / 20)).astype(np.float32)


def _lufs(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    return pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))


# ------------------------------------------------------------------------------------------ reading files

FORMATS = [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"), ("wav", "FLOAT"), ("flac", "PCM_16"),
           ("ogg", "VORBIS")]
if "MPEG_LAYER_III" in sf.available_subtypes("MP3"):
    FORMATS.append(("mp3", "MPEG_LAYER_III"))


@pytest.mark.parametrize("ext,subtype", FORMATS)
def test_every_common_format_reads_as_mono_float32_at_its_native_rate(speech, tmp_path, ext, subtype):
    samples, rate = speech
    path = tmp_path / f"clip.{ext}"
    sf.write(path, samples, rate, subtype=subtype)
    got, got_rate = read_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1 and got_rate == rate
    assert abs(len(got) - len(samples)) < 0.05 * rate
    n = min(len(got), len(samples))
    assert np.corrcoef(got[:n], samples[:n])[0, 1] > 0.9  # the same speech, through a lossy codec or not
    assert load_reference_clip(path).speech_seconds > 3.0


def test_stereo_is_mixed_down_to_mono(speech, tmp_path):
    samples, rate = speech
    sf.write(tmp_path / "stereo.wav", np.stack([samples, 0.5 * samples], axis=1), rate, subtype="FLOAT")
    got, _ = read_audio(tmp_path / "stereo.wav")
    np.testing.assert_allclose(got, 0.75 * samples, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_any_sample_rate_becomes_model_rate_with_the_same_speech(speech, tmp_path, rate):
    samples, native = speech
    sf.write(tmp_path / "clip.wav", _resample(samples, native, rate), rate)
    clip = load_reference_clip(tmp_path / "clip.wav")
    start, end = _speech_bounds(samples, native)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(len(clip.samples) / SAMPLE_RATE - (end - start)) < 0.4
    assert abs(clip.speech_seconds - (end - start)) < 0.5


def test_a_recording_in_memory_may_be_int16_with_a_channel_axis(speech):
    samples, rate = speech
    int16 = (samples * 32767).astype(np.int16)[:, None]  # (frames, 1), as sounddevice records
    clip = prepare_reference_clip(int16, rate)
    assert clip.speech_seconds > 3.0 and clip.notices == ()


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_speech_from_flite_is_found_too(tmp_path):
    samples, rate = _speak("flite", tmp_path / "flite.wav")
    start, end = _speech_bounds(samples, rate)
    assert abs(prepare_reference_clip(samples, rate).speech_seconds - (end - start)) < 0.5


# --------------------------------------------------------------------------------------- trimming, level


@pytest.mark.parametrize("speech_dbfs_change", [0.0, -30.0])
def test_silence_and_room_noise_around_speech_are_trimmed_to_the_speech(speech, speech_dbfs_change):
    samples, native = speech
    start, end = _speech_bounds(samples, native)
    voice = to_model_rate(samples, native) * np.float32(10 ** (speech_dbfs_change / 20))
    lead, tail = 2.0, 1.5
    padded = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), voice,
                             np.zeros(int(tail * SAMPLE_RATE), np.float32)])
    padded += _noise(len(padded) / SAMPLE_RATE, -70.0)  # a quiet room, so the trimmed slice can be located
    trimmed, speech_seconds = trim_silence(padded)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 32)
    cut_start = int(np.flatnonzero((windows == trimmed[:32]).all(axis=1))[0]) / SAMPLE_RATE
    cut_end = cut_start + len(trimmed) / SAMPLE_RATE
    assert abs(cut_start - (lead + start)) <= 0.2
    assert abs(cut_end - (lead + end)) <= 0.2
    assert abs(speech_seconds - (end - start)) < 0.5


def test_trimming_works_at_the_native_rate(speech):
    samples, rate = speech
    trimmed, _ = trim_silence(np.concatenate([np.zeros(rate, np.float32), samples]), rate)
    start, end = _speech_bounds(samples, rate)
    assert abs(len(trimmed) / rate - (end - start)) < 0.4


def test_trimming_pure_silence_leaves_nothing():
    trimmed, speech_seconds = trim_silence(np.zeros(3 * SAMPLE_RATE, np.float32))
    assert len(trimmed) == 0 and speech_seconds == 0.0


@pytest.mark.parametrize("gain_db", [-35.0, 0.0])
def test_voice_samples_are_normalised_to_target_loudness_without_clipping(speech, gain_db):
    samples, rate = speech
    clip = prepare_reference_clip(samples * np.float32(10 ** (gain_db / 20)), rate)
    assert abs(_lufs(clip.samples) - TARGET_LUFS) < 1.0
    assert np.abs(clip.samples).max() < 1.0
    assert abs(clip.loudness_lufs - (_lufs(to_model_rate(samples, rate)) + gain_db)) < 1.5  # before, not after


def test_normalising_far_above_the_headroom_limits_peaks_instead_of_clipping(speech):
    samples, rate = speech
    voice = to_model_rate(samples, rate)
    target = _lufs(voice) + 20 * np.log10(2.0 / np.abs(voice).max())  # plain gain would put peaks at 2.0
    louder = normalize_loudness(voice, target_lufs=target)
    assert np.abs(louder).max() <= audio.PEAK_LIMIT + 1e-6
    # The limiter dips around peaks only: turning the whole clip down to the limit would lose 7 LU.
    assert _lufs(louder) > target - 3.0


def test_a_long_sample_is_cut_to_the_maximum_with_a_notice(speech):
    samples, rate = speech
    voice = to_model_rate(samples, rate)
    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    long = np.concatenate([np.concatenate([voice, pause])] * 11)  # about 45 s
    clip = prepare_reference_clip(long, SAMPLE_RATE)
    assert MAX_SAMPLE_SECONDS - 5.0 <= len(clip.samples) / SAMPLE_RATE <= MAX_SAMPLE_SECONDS
    assert clip.speech_seconds <= MAX_SAMPLE_SECONDS
    assert len(clip.notices) == 1 and f"{MAX_SAMPLE_SECONDS:.0f} s" in clip.notices[0]


# ------------------------------------------------------------------------------------------------ errors


def test_a_missing_file_is_named_in_the_error(tmp_path):
    with pytest.raises(AudioInputError, match="nowhere.wav.*does not exist"):
        read_audio(tmp_path / "nowhere.wav")


def test_a_folder_is_not_taken_for_a_file(tmp_path):
    with pytest.raises(AudioInputError, match="is a folder"):
        load_reference_clip(tmp_path)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(5000), b"hello " * 200, b"RIFF\x00\x00"])
@pytest.mark.parametrize("name", ["broken.wav", "broken.mp3"])
def test_corrupt_or_non_audio_bytes_say_the_file_is_damaged(tmp_path, content, name):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AudioInputError, match=f"{name}.*damaged or not in a supported format"):
        load_reference_clip(tmp_path / name)


def test_an_empty_file_is_reported_as_empty(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty.wav.*empty"):
        read_audio(tmp_path / "empty.wav")


def test_a_valid_file_without_samples_is_reported_as_soundless(tmp_path):
    sf.write(tmp_path / "none.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="none.wav.*no sound"):
        read_audio(tmp_path / "none.wav")


def test_a_ten_minute_file_is_the_longest_taken_and_is_cut_to_the_first_half_minute(speech, tmp_path):
    samples, rate = speech
    voice = np.concatenate([to_model_rate(samples, rate), np.zeros(int(0.4 * SAMPLE_RATE), np.float32)])
    ten_minutes = np.resize(voice, int(audio.MAX_FILE_SECONDS * SAMPLE_RATE))
    sf.write(tmp_path / "lecture.wav", ten_minutes, SAMPLE_RATE)
    clip = load_reference_clip(tmp_path / "lecture.wav")
    assert MAX_SAMPLE_SECONDS - 5.0 <= len(clip.samples) / SAMPLE_RATE <= MAX_SAMPLE_SECONDS
    assert len(clip.notices) == 1 and "only the first" in clip.notices[0]


def test_a_file_too_long_to_be_a_voice_sample_is_refused_before_reading(tmp_path):
    sf.write(tmp_path / "podcast.wav", np.zeros(int(audio.MAX_FILE_SECONDS * 8000) + 8000, np.int16), 8000)
    with pytest.raises(AudioInputError, match="podcast.wav.*minutes long.*cut a short piece"):
        read_audio(tmp_path / "podcast.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_invalid_sample_values_are_refused(speech, bad):
    samples, rate = speech
    broken = samples.copy()
    broken[1000] = bad
    with pytest.raises(AudioInputError, match="NaN or infinity"):
        prepare_reference_clip(broken, rate)


def test_a_sample_rate_below_telephone_quality_is_refused(speech):
    samples, rate = speech
    with pytest.raises(AudioInputError, match="6000 Hz is too low.*8000 Hz"):
        prepare_reference_clip(_resample(samples, rate, 6000), 6000)


@pytest.mark.parametrize("recording", [np.zeros(5 * SAMPLE_RATE, np.float32), _noise(5.0, -75.0)],
                         ids=["digital silence", "microphone hiss"])
def test_a_silent_recording_advises_checking_the_microphone(recording):
    with pytest.raises(AudioInputError, match="silent.*microphone"):
        prepare_reference_clip(recording, SAMPLE_RATE)


@pytest.mark.parametrize("recording", [_noise(5.0, -30.0), _noise(5.0, -10.0),
                                       0.3 * np.sin(2 * np.pi * 60 * np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE)],
                         ids=["steady noise", "loud steady noise", "mains hum"])
def test_steady_noise_or_hum_is_not_taken_for_speech(recording):
    with pytest.raises(AudioInputError, match="only noise.*microphone"):
        prepare_reference_clip(recording.astype(np.float32), SAMPLE_RATE)


def test_a_recording_of_odd_shape_is_refused():
    with pytest.raises(AudioInputError, match="unexpected shape"):
        prepare_reference_clip(np.zeros((2, 2, SAMPLE_RATE), np.float32), SAMPLE_RATE)


def test_an_empty_recording_is_refused():
    with pytest.raises(AudioInputError, match="empty"):
        prepare_reference_clip(np.zeros(0, np.float32), SAMPLE_RATE)


def test_a_clipped_recording_advises_lowering_the_gain(speech):
    samples, rate = speech
    with pytest.raises(AudioInputError, match="clipped.*further from the microphone or lower the input gain"):
        prepare_reference_clip(np.clip(4.0 * samples, -1.0, 1.0), rate)


def test_a_lightly_clipped_recording_is_used_with_a_notice(speech):
    """A few short flat runs at full scale (0.1 % of the samples, as in a real VCTK recording) are not worth a
    refusal: the sample is prepared and the notice says so."""
    samples, rate = speech
    peak = samples / np.abs(samples).max()
    loud = np.flatnonzero(np.abs(peak) > 0.5)
    hot = loud[:: max(1, len(loud) // 40)][:40]  # 40 short runs of 4 samples: about 0.1 % of the clip
    clipped = peak.copy()
    for i in hot:
        clipped[i:i + 4] = np.sign(peak[i])
    fraction = float(np.mean(np.abs(clipped) >= 0.99))
    assert 0.0005 < fraction < 0.01
    clip = prepare_reference_clip(clipped, rate)
    assert clip.speech_seconds > 3.0 and any("lightly clipped" in notice for notice in clip.notices)


def _flattened(samples: np.ndarray, fraction: float) -> np.ndarray:
    """The speech at full scale with about `fraction` of its samples flattened at +-1, in runs of 4 spread over
    its loud parts: the mark an overdriven input leaves."""
    peak = samples / np.abs(samples).max()
    loud = np.flatnonzero(np.abs(peak) > 0.3)
    clipped = peak.copy()
    for i in loud[np.linspace(0, len(loud) - 5, max(1, round(fraction * len(peak) / 4))).astype(int)]:
        clipped[i:i + 4] = np.sign(peak[i])
    return clipped


@pytest.mark.parametrize("fraction, outcome", [(0.0003, "clean"), (0.0007, "notice"), (0.009, "notice"),
                                               (0.013, "refused")])
def test_clipping_under_a_twentieth_of_a_percent_passes_up_to_one_percent_is_noticed_and_more_is_refused(
        speech, fraction, outcome):
    samples, rate = speech
    clipped = _flattened(samples, fraction)
    assert abs(np.mean(np.abs(clipped) >= 0.99) - fraction) < 0.2 * fraction
    if outcome == "refused":
        with pytest.raises(AudioInputError, match=r"clipped \(distorted\): 1\.\d% of its samples"):
            prepare_reference_clip(clipped, rate)
        return
    clip = prepare_reference_clip(clipped, rate)
    assert clip.speech_seconds > 3.0
    assert ["lightly clipped" in notice for notice in clip.notices] == ([True] if outcome == "notice" else [])


def test_speech_touching_full_scale_once_is_not_called_clipped(speech):
    samples, rate = speech
    peak = samples / np.abs(samples).max()
    assert prepare_reference_clip(peak, rate).speech_seconds > 3.0


@pytest.mark.parametrize("seconds", [0.5, 1.2])
def test_too_little_speech_says_how_much_was_found_and_needed(speech, seconds):
    samples, rate = speech
    start, _ = _speech_bounds(samples, rate)
    short = samples[: int((start + seconds) * rate)]
    with pytest.raises(AudioInputError, match=rf"Only {int(seconds)}\.\d s of speech .* at least "
                                              rf"{MIN_SPEECH_SECONDS:.0f} s"):
        prepare_reference_clip(short, rate)


def test_faults_are_reported_most_basic_first(speech):
    samples, rate = speech
    short_and_clipped = np.clip(4.0 * samples[: rate], -1.0, 1.0)
    with pytest.raises(AudioInputError, match="clipped"):
        prepare_reference_clip(short_and_clipped, rate)
    with pytest.raises(AudioInputError, match="NaN"):
        prepare_reference_clip(np.full(6000, np.nan, np.float32), 6000)
    with pytest.raises(AudioInputError, match="too low"):
        prepare_reference_clip(np.zeros(6000, np.float32), 6000)


def test_an_error_about_a_files_audio_names_the_file(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="^quiet.wav: .*silent"):
        load_reference_clip(tmp_path / "quiet.wav")
