"""One planned utterance becomes one WAV file: synthesise, warp, trim, normalise, write atomically.

This runs in worker processes. Everything here is deterministic (single-threaded onnxruntime, WORLD,
fixed-gain DSP), so an utterance's bytes do not depend on which worker made it or when.
"""

from __future__ import annotations

import resource
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tldr_core.audio import SAMPLE_RATE, normalize_loudness, to_model_rate, trim_silence, write_wav
from tldr_core.corpus.plan import Speaker, Utterance
from tldr_core.corpus.engines import kokoro_styles, synthesize
from tldr_core.text import phonemize

with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    import pyworld

TIMBRE_DIMS = 128  # Kokoro's style vector: the first half feeds the decoder (timbre), the rest prosody
PAD_SECONDS = 0.05  # digital silence added after trimming: with trim_silence's margin of up to 0.1 s,
#                     every file starts and ends with ~0.1-0.2 s of quiet, whatever the engine left there
WORLD_FRAME_MS = 5.0


@dataclass(frozen=True)
class Rendered:
    id: str
    duration: float  # seconds in the written file
    phonemes: str
    synthesized: bool  # False when the file was already there (resumed)
    cpu_seconds: float  # this process and the engine subprocesses it ran
    error: str | None = None


def wav_path(out_dir: Path, utterance: Utterance) -> Path:
    return out_dir / "audio" / utterance.speaker.id / f"{utterance.id}.wav"


def kokoro_style(speaker: Speaker) -> np.ndarray | None:
    """A blend's style table: weighted timbre halves, prosody half of the first (heavier) voice."""
    if not speaker.mix:
        return None
    styles = kokoro_styles()
    style = styles[speaker.mix[0][0]].copy()
    style[..., :TIMBRE_DIMS] = sum(w * styles[name][..., :TIMBRE_DIMS] for name, w in speaker.mix)
    return style


def world_warp(samples: np.ndarray, f0_scale: float, envelope_scale: float) -> np.ndarray:
    """Resynthesise with F0 times f0_scale and the spectral envelope stretched along frequency.

    envelope_scale > 1 moves formants up (a shorter vocal tract), < 1 down. Aperiodicity moves with the
    envelope so breathiness stays attached to the same formants.
    """
    x = samples.astype(np.float64)
    f0, times = pyworld.dio(x, SAMPLE_RATE, frame_period=WORLD_FRAME_MS)
    f0 = pyworld.stonemask(x, f0, times, SAMPLE_RATE)
    envelope = pyworld.cheaptrick(x, f0, times, SAMPLE_RATE)
    aperiodicity = pyworld.d4c(x, f0, times, SAMPLE_RATE)
    bins = envelope.shape[1]
    source = np.minimum(np.arange(bins) / envelope_scale, bins - 1)  # new bin k reads old bin k / scale
    lo = np.floor(source).astype(int)
    hi = np.minimum(lo + 1, bins - 1)
    frac = source - lo

    def warp(table: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(table[:, lo] * (1 - frac) + table[:, hi] * frac)

    y = pyworld.synthesize(f0 * f0_scale, warp(envelope), warp(aperiodicity), SAMPLE_RATE, WORLD_FRAME_MS)
    return y.astype(np.float32)


def make_audio(utterance: Utterance) -> np.ndarray:
    speaker = utterance.speaker
    samples, rate = synthesize(speaker.voice, utterance.normalized_text, kokoro_style(speaker))
    x = to_model_rate(samples, rate)
    if (speaker.f0_scale, speaker.envelope_scale) != (1.0, 1.0):
        x = world_warp(x, speaker.f0_scale, speaker.envelope_scale)
    x, speech_seconds = trim_silence(x)
    if speech_seconds == 0:
        raise RuntimeError(f"{speaker.voice.engine} produced no speech")
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), np.float32)
    return normalize_loudness(np.concatenate([pad, x, pad]))


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (engine subprocesses, workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def render(out_dir: Path, utterance: Utterance) -> Rendered:
    """Write the utterance's WAV unless it exists; an engine failure is retried once, then reported."""
    start = cpu_seconds()
    path = wav_path(out_dir, utterance)
    synthesized = not path.exists()
    error = None
    if synthesized:
        for _ in range(2):
            try:
                write_wav(path, make_audio(utterance), SAMPLE_RATE)
                error = None
                break
            except Exception as e:  # any engine fault: the build goes on and reports it at the end
                error = f"{type(e).__name__}: {e}"
    duration = 0.0 if error else round(sf.info(str(path)).frames / SAMPLE_RATE, 4)
    phonemes = " ".join(phonemize(utterance.normalized_text))
    return Rendered(utterance.id, duration, phonemes, synthesized, cpu_seconds() - start, error)
