"""Audio in and out: any file soundfile reads becomes mono float32 at the model rate.

Voice samples (the clip a person records or imports to clone) get extra care: they are checked for the
faults people actually meet (unreadable, silent, clipped, too short), trimmed of leading and trailing
silence and loudness-normalised, so every later stage sees the same kind of input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
import webrtcvad
from scipy.ndimage import binary_opening, minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

from tldr_core.errors import AudioInputError
from tldr_core.files import atomic_path

SAMPLE_RATE = 16000  # the rate of the codec, the speaker encoder and the corpus

# What a voice sample must be
MIN_SPEECH_SECONDS = 2.0  # less speech than this says too little about a voice
MAX_SAMPLE_SECONDS = 30.0  # more adds nothing to the speaker embedding, only time
TARGET_LUFS = -23.0  # EBU R128 programme loudness: leaves ~20 dB of headroom for speech peaks
MIN_SAMPLE_RATE = 8000  # telephone band; below it consonants are gone
MAX_FILE_SECONDS = 600.0  # longer files are refused before reading, so a podcast cannot exhaust memory

# How faults are recognised
SILENCE_DBFS = -60.0  # loudest 30 ms stretches below this: nothing but microphone noise
CLIP_LEVEL = 0.99  # a sample this close to full scale...
CLIP_RUN = 3  # ...counts as clipped when this many in a row are (one peak touching full scale is fine)
CLIP_NOTICE_FRACTION = 0.0005  # more clipped samples than this: light clipping, said but accepted
CLIP_FRACTION = 0.01  # more than this is distortion throughout: refused (a real VCTK clip held 0.1 %)
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS: normalised audio never gets closer to full scale than this
TRIM_MARGIN_SECONDS = 0.1  # kept around the speech so word onsets and endings are not cut

# Voice activity detection (webrtcvad works on 10/20/30 ms frames of 16-bit audio)
VAD_FRAME = SAMPLE_RATE * 30 // 1000
VAD_AGGRESSIVENESS = 2  # 0 (keeps most) .. 3 (drops most)
VAD_SMOOTHING_FRAMES = 5  # majority vote over 150 ms: a lone frame of noise or a lone gap does not count
# webrtcvad's decisions depend on level: it misses quiet speech and takes loud steady noise or hum for
# speech. So each clip is turned up until its loud stretches reach VAD_SPEECH_DBFS, but no further than
# puts its background (quietest tenth) at VAD_BACKGROUND_DBFS.
VAD_SPEECH_DBFS = -20.0
VAD_BACKGROUND_DBFS = -40.0


# ---------------------------------------------------------------------------------------------------- reading


def _mono_float(samples: np.ndarray) -> np.ndarray:
    """Mono float32 from any channel layout, integer dtype scaled to [-1, 1)."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:  # (frames, channels), as soundfile and sounddevice return
        x = x.mean(axis=1)
    return x


def to_model_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at SAMPLE_RATE from any channel layout, integer or float dtype and rate."""
    x = _mono_float(samples)
    if sample_rate != SAMPLE_RATE:
        g = gcd(int(sample_rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return np.ascontiguousarray(x)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32, native rate) from any file soundfile reads: WAV, FLAC, OGG, MP3, ...; any channels."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
        raise AudioInputError(f"The audio file '{path}' {what}: check the name and folder, or choose another "
                              f"file.")
    if path.stat().st_size == 0:
        raise AudioInputError(f"The audio file '{path.name}' is empty (0 bytes): record or export it again.")
    try:
        with sf.SoundFile(path) as f:
            if f.frames > MAX_FILE_SECONDS * f.samplerate:
                raise AudioInputError(
                    f"The audio file '{path.name}' is {f.frames / f.samplerate / 60:.0f} minutes long; at "
                    f"most {MAX_FILE_SECONDS / 60:.0f} minutes are accepted. A voice sample needs only 10-30 s "
                    f"of clear speech: cut a short piece out of it and use that.")
            data, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except sf.SoundFileError:  # libsndfile's own wording ("not a regular file" for a text file) misleads
        raise AudioInputError(f"The file '{path.name}' could not be read as audio: it is damaged or not in a "
                              f"supported format. Export it again as WAV, FLAC, OGG or MP3.") from None
    if len(data) == 0:
        raise AudioInputError(f"The audio file '{path.name}' contains no sound (0 samples): record or export "
                              f"it again.")
    return _mono_float(data), rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write audio atomically (temp file + rename), so a crash never leaves half a file.

    The format follows the extension (.wav, .flac, ...); samples are clipped to [-1, 1] first. The file is made in
    memory and written by Python, so a write the disk refuses is a SaveError with its reason (libsndfile would
    only say "System error.").
    """
    encoded = io.BytesIO()
    sf.write(encoded, np.clip(samples, -1.0, 1.0), sample_rate, subtype=subtype, format=Path(path).suffix[1:])
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.getvalue())


# ------------------------------------------------------------------------------------------- measurements


def _frame_dbfs(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of each 30 ms frame in dBFS (a clip shorter than a frame is one frame)."""
    frame = max(1, sample_rate * 30 // 1000)
    n = max(1, len(samples) // frame)
    frames = np.resize(samples, n * frame).reshape(n, frame).astype(np.float64)
    return 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-10))


def _level_dbfs(samples: np.ndarray, sample_rate: int) -> float:
    """Level of the loud stretches: the 99th percentile of 30 ms levels, so a single click does not set it."""
    return float(np.percentile(_frame_dbfs(samples, sample_rate), 99))


def _speech_frames(samples: np.ndarray) -> np.ndarray:
    """One bool per 30 ms frame of 16 kHz audio: speech or not, majority-smoothed over 150 ms."""
    n = len(samples) // VAD_FRAME
    if n == 0:
        return np.zeros(0, dtype=bool)
    levels = _frame_dbfs(samples[: n * VAD_FRAME], SAMPLE_RATE)
    gain_db = min(VAD_SPEECH_DBFS - np.percentile(levels, 99), VAD_BACKGROUND_DBFS - np.percentile(levels, 10))
    gain = 10 ** (gain_db / 20)
    pcm = (np.clip(samples[: n * VAD_FRAME] * gain, -1.0, 1.0) * 32767).astype("<i2").reshape(n, VAD_FRAME)
    vad = webrtcvad.Vad(VAD_AGGRESSIVENESS)
    # A first pass teaches the VAD the background (else it takes the first noise for speech); it runs
    # backwards so that it ends on the frame the real pass starts with, leaving no jump between them.
    for frame in pcm[::-1]:
        vad.is_speech(frame.tobytes(), SAMPLE_RATE)
    voiced = np.array([vad.is_speech(frame.tobytes(), SAMPLE_RATE) for frame in pcm])
    votes = np.convolve(voiced.astype(float), np.ones(VAD_SMOOTHING_FRAMES), mode="same")
    return votes > VAD_SMOOTHING_FRAMES / 2


def _clipped_fraction(samples: np.ndarray) -> float:
    """Fraction of samples inside flat runs at full scale, the mark clipping leaves on a waveform."""
    hot = np.abs(samples) >= CLIP_LEVEL
    return float(binary_opening(hot, structure=np.ones(CLIP_RUN, dtype=bool)).mean())


# ------------------------------------------------------------------------------------------------ cleaning


def trim_silence(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """Cut leading and trailing non-speech (keeping a 0.1 s margin); returns (trimmed, seconds of speech).

    With no speech at all the result is empty and 0.0. The VAD hears a 16 kHz copy; the cut is made at the
    original rate.
    """
    x = _mono_float(samples)
    speech = _speech_frames(to_model_rate(x, sample_rate))
    if not speech.any():
        return x[:0], 0.0
    hits = np.flatnonzero(speech)
    frame_seconds = VAD_FRAME / SAMPLE_RATE
    start = max(0.0, hits[0] * frame_seconds - TRIM_MARGIN_SECONDS)
    end = (hits[-1] + 1) * frame_seconds + TRIM_MARGIN_SECONDS
    return x[int(start * sample_rate) : int(end * sample_rate)], float(speech.sum() * frame_seconds)


def normalize_loudness(samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                       target_lufs: float = TARGET_LUFS) -> np.ndarray:
    """Bring integrated loudness (ITU-R BS.1770) to target_lufs, then limit peaks to -1 dBFS.

    The limiter lowers the gain smoothly over 5 ms around each peak instead of flattening the peak, which
    would be clipping, so the result never clips and keeps its loudness unless the clip is very peaky.
    """
    x = np.asarray(samples, dtype=np.float32)
    loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(x.astype(np.float64))
    if not np.isfinite(loudness):
        raise AudioInputError("The sample is too quiet or too short to measure its loudness: record at least "
                              f"{MIN_SPEECH_SECONDS:.0f} s of speech, closer to the microphone.")
    x = x * np.float32(10 ** ((target_lufs - loudness) / 20))
    # Per sample, the gain that keeps it under the limit; spreading each dip over +-w samples with a minimum
    # filter and then averaging over w samples gives a smooth gain that is still below it everywhere.
    need = np.minimum(1.0, PEAK_LIMIT / np.maximum(np.abs(x), 1e-12))
    w = max(1, sample_rate * 5 // 1000)
    gain = uniform_filter1d(minimum_filter1d(need, size=2 * w + 1), size=w + 1)
    return (x * gain).astype(np.float32)


# ------------------------------------------------------------------------------------------- voice samples


@dataclass(frozen=True)
class ReferenceClip:
    """A voice sample ready for the speaker encoder and the model."""

    samples: np.ndarray  # mono float32 at SAMPLE_RATE, trimmed, loudness-normalised
    speech_seconds: float  # speech found by the VAD
    loudness_lufs: float  # integrated loudness before normalisation
    notices: tuple[str, ...]  # things the user should know that are not errors (e.g. cut to 30 s)


def _cut_at_pause(samples: np.ndarray) -> np.ndarray:
    """The first MAX_SAMPLE_SECONDS, ending at the last pause of the final 5 s when there is one."""
    limit = int(MAX_SAMPLE_SECONDS * SAMPLE_RATE)
    speech = _speech_frames(samples[:limit])
    tail = len(speech) - int(5.0 * SAMPLE_RATE) // VAD_FRAME
    pauses = np.flatnonzero(~speech[tail:])
    end = (tail + pauses[-1] + 1) * VAD_FRAME if len(pauses) else limit
    return samples[:end]


def prepare_reference_clip(samples: np.ndarray, sample_rate: int) -> ReferenceClip:
    """Check a recording for the usual faults and turn it into clean model input (see ReferenceClip).

    Faults are checked in a fixed order, so a recording with several gets the most basic message first.
    """
    x = np.asarray(samples)
    if x.size == 0:
        raise AudioInputError("The recording is empty: record again and speak for a few seconds.")
    if x.ndim not in (1, 2):
        raise AudioInputError(f"The recording has an unexpected shape {x.shape}: it should be samples, or "
                              f"(samples, channels). Record it again.")
    if not np.isfinite(x).all():
        raise AudioInputError("The recording contains invalid values (NaN or infinity), so the recording or "
                              "the file is faulty: record or export it again.")
    if sample_rate < MIN_SAMPLE_RATE:
        raise AudioInputError(f"The sample rate of {sample_rate} Hz is too low for speech: record or export it "
                              f"at {MIN_SAMPLE_RATE} Hz or more (16000 Hz or more is best).")
    x = _mono_float(x)
    level = _level_dbfs(x, sample_rate)
    clip = to_model_rate(x, sample_rate)
    trimmed, speech_seconds = trim_silence(clip)
    if level < SILENCE_DBFS or speech_seconds == 0.0:
        raise AudioInputError(f"No speech was found: the recording is silent, very quiet (loudest part "
                              f"{level:.0f} dBFS) or only noise. Check that the right microphone is selected, "
                              f"plugged in and not muted, then record again speaking close to it.")
    clipped = _clipped_fraction(x)
    if clipped > CLIP_FRACTION:
        raise AudioInputError(f"The recording is clipped (distorted): {100 * clipped:.1f}% of its samples hit "
                              f"full scale. Record again further from the microphone or lower the input gain.")
    if speech_seconds < MIN_SPEECH_SECONDS:
        raise AudioInputError(f"Only {speech_seconds:.1f} s of speech was found, but at least "
                              f"{MIN_SPEECH_SECONDS:.0f} s is needed: record again and speak for longer "
                              f"(10-30 s works best).")
    notices = []
    if clipped > CLIP_NOTICE_FRACTION:
        notices.append(f"The recording is lightly clipped ({100 * clipped:.2f}% of its samples hit full scale); "
                       f"it is used, but a cleaner one (further from the microphone) clones the voice better.")
    if len(trimmed) > MAX_SAMPLE_SECONDS * SAMPLE_RATE:
        total = len(trimmed) / SAMPLE_RATE
        trimmed = _cut_at_pause(trimmed)
        speech_seconds = float(_speech_frames(trimmed).sum() * VAD_FRAME / SAMPLE_RATE)
        notices.append(f"The sample holds {total:.1f} s of audio; only the first "
                       f"{len(trimmed) / SAMPLE_RATE:.1f} s are used, since a voice sample needs no more than "
                       f"{MAX_SAMPLE_SECONDS:.0f} s.")
    loudness = float(pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(trimmed.astype(np.float64)))
    return ReferenceClip(samples=normalize_loudness(trimmed), speech_seconds=speech_seconds,
                       loudness_lufs=loudness, notices=tuple(notices))


def load_reference_clip(path: str | Path) -> ReferenceClip:
    """A voice sample from an audio file; a fault found in the audio names the file in its message."""
    samples, sample_rate = read_audio(path)
    try:
        return prepare_reference_clip(samples, sample_rate)
    except AudioInputError as e:
        raise AudioInputError(f"{Path(path).name}: {e}") from None
