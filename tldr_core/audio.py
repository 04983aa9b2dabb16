"""Audio in and out: any file soundfile reads becomes mono float32 at the model rate.

Voice samples (the clip a person records or imports to clone) get extra care: they are checked for the
faults people actually meet (unreadable, silent, clipped, too short), trimmed of leading and trailing
silence and loudness-normalised, so every later stage sees the same kind of input.
"""

from __future__ import annotations

import os
import tempfile
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000  # the rate of the codec, the speaker encoder and the corpus


def to_model_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at SAMPLE_RATE from any channel layout, integer or float dtype and rate."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:  # (frames, channels), as soundfile returns
        x = x.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        g = gcd(int(sample_rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return np.ascontiguousarray(x)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write audio atomically (temp file + rename), so a crash never leaves half a file.

    The format follows the extension (.wav, .flac, ...); samples are clipped to [-1, 1] first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(samples, -1.0, 1.0), sample_rate, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
