"""Speech as compact vocoder frames: WORLD analysis coded to 100 frames per second.

Why WORLD: nothing on PyPI here ships a neural vocoder, and a vocoder trained on this CPU would not reach
the quality a signal-processing vocoder gives for free. WORLD (pyworld) measures F0, a smooth spectral
envelope and aperiodicity; we code them into a small frame that a token decoder can predict:

    [log F0 (interpolated through unvoiced stretches), voicing (0/1),
     N_ENV log-power envelope values on a mel grid, N_AP band aperiodicities in dB]

Decoding the envelope and aperiodicity back to FFT bins is a fixed interpolation (see `decode_envelope`,
`decode_aperiodicity`), used by the vocoder; it depends on one frame only, so it streams trivially.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import AudioInputError


@dataclass(frozen=True)
class FeatureConfig:
    """Frame layout; hop 160 at 16 kHz = 100 frames/s (a codec groups 4 or 2 of them into one token)."""

    sample_rate: int = SAMPLE_RATE
    hop: int = 160                 # 10 ms, WORLD's frame period
    fft_size: int = 1024           # cheaptrick's size at 16 kHz (F0 floor 71 Hz): 513 bins
    n_env: int = 40                # mel-spaced envelope points: enough for formants, smooth for a network
    ap_edges: tuple[float, ...] = (0.0, 1000.0, 2000.0, 3000.0, 4500.0, 8000.0)  # aperiodicity bands (Hz)
    f0_floor: float = 60.0
    f0_ceil: float = 600.0
    ap_floor_db: float = -60.0     # aperiodicity below this is inaudible; clipping keeps the range bounded
    env_floor: float = -20.0       # log power ~87 dB below full scale: silence; digital zeros would sit at -27.6
                                   # and make silence the largest thing a network must learn
    min_seconds: float = 0.25      # shorter input cannot hold one token of speech

    @property
    def frames_per_second(self) -> int:
        return self.sample_rate // self.hop

    @property
    def n_ap(self) -> int:
        return len(self.ap_edges) - 1

    @property
    def dim(self) -> int:
        return 2 + self.n_env + self.n_ap

    @property
    def n_bins(self) -> int:
        return self.fft_size // 2 + 1


CONFIG = FeatureConfig()
LF0, VUV = 0, 1  # column indices; the envelope is ENV, the aperiodicity AP
ENV = slice(2, 2 + CONFIG.n_env)
AP = slice(2 + CONFIG.n_env, CONFIG.dim)
SILENCE_RMS = 1e-4  # -80 dBFS: below this the input holds no speech to analyse


def _mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def _bin_mel(cfg: FeatureConfig) -> np.ndarray:
    return _mel(np.arange(cfg.n_bins) * cfg.sample_rate / cfg.fft_size)


def _env_centres(cfg: FeatureConfig) -> np.ndarray:
    """Mel positions of the envelope points: evenly spaced from 0 Hz to Nyquist."""
    return np.linspace(0.0, _mel(cfg.sample_rate / 2), cfg.n_env)


def _env_weights(cfg: FeatureConfig) -> np.ndarray:
    """(n_env, n_bins) triangular mel weights, each row summing to 1: point = weighted mean of log power."""
    centres, bins = _env_centres(cfg), _bin_mel(cfg)
    step = centres[1] - centres[0]
    w = np.maximum(0.0, 1.0 - np.abs(bins[None, :] - centres[:, None]) / step)
    return w / w.sum(axis=1, keepdims=True)


def interpolation(points: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from values at sorted `points` to positions `at`, ends held: value(at) =
    values[idx] * (1 - frac) + values[idx + 1] * frac."""
    idx = np.clip(np.searchsorted(points, at) - 1, 0, len(points) - 2)
    frac = np.clip((at - points[idx]) / (points[idx + 1] - points[idx]), 0.0, 1.0)
    return idx, frac


def decode_envelope(env: np.ndarray, cfg: FeatureConfig = CONFIG) -> np.ndarray:
    """(..., n_env) log power points -> (..., n_bins) log power spectrum by linear interpolation on mel."""
    idx, frac = interpolation(_env_centres(cfg), _bin_mel(cfg))
    return env[..., idx] * (1.0 - frac) + env[..., idx + 1] * frac


def _ap_centres(cfg: FeatureConfig) -> np.ndarray:
    edges = np.asarray(cfg.ap_edges)
    return (edges[:-1] + edges[1:]) / 2


def decode_aperiodicity(ap_db: np.ndarray, cfg: FeatureConfig = CONFIG) -> np.ndarray:
    """(..., n_ap) band aperiodicity in dB -> (..., n_bins) amplitude ratio in [0, 1]."""
    idx, frac = interpolation(_ap_centres(cfg), np.arange(cfg.n_bins) * cfg.sample_rate / cfg.fft_size)
    db = ap_db[..., idx] * (1.0 - frac) + ap_db[..., idx + 1] * frac
    return np.clip(10.0 ** (db / 20.0), 0.0, 1.0)


def _interpolate_lf0(f0: np.ndarray) -> np.ndarray:
    """log F0 everywhere: linear through unvoiced gaps, held at the ends (a smooth target for the network)."""
    voiced = f0 > 0
    if not voiced.any():
        return np.full(len(f0), np.log(120.0))  # no pitch at all (whisper, noise): any constant serves
    t = np.arange(len(f0))
    return np.interp(t, t[voiced], np.log(f0[voiced]))


def check_audio(samples: np.ndarray, cfg: FeatureConfig = CONFIG) -> np.ndarray:
    """float64 mono samples, or a clear error for input the codec cannot use."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise AudioInputError(f"The codec needs mono audio (one channel); got an array of shape {x.shape}.")
    if len(x) < cfg.min_seconds * cfg.sample_rate:
        raise AudioInputError(f"The audio is {len(x) / cfg.sample_rate:.2f} s long; the codec needs at least "
                              f"{cfg.min_seconds:.2f} s of speech.")
    if not np.all(np.isfinite(x)):
        raise AudioInputError("The audio contains invalid samples (NaN or infinity); export it again.")
    if np.sqrt(np.mean(x ** 2)) < SILENCE_RMS:
        raise AudioInputError("The audio is silent (below -80 dBFS): there is no speech to encode.")
    return x


def analyze(samples: np.ndarray, cfg: FeatureConfig = CONFIG) -> np.ndarray:
    """16 kHz mono audio -> (n_frames, cfg.dim) float32 frames; frame t describes sample t * hop."""
    with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import pyworld

    x = check_audio(samples, cfg)
    period_ms = 1000.0 * cfg.hop / cfg.sample_rate
    f0, t = pyworld.dio(x, cfg.sample_rate, f0_floor=cfg.f0_floor, f0_ceil=cfg.f0_ceil, frame_period=period_ms)
    f0 = pyworld.stonemask(x, f0, t, cfg.sample_rate)
    sp = pyworld.cheaptrick(x, f0, t, cfg.sample_rate, fft_size=cfg.fft_size)
    ap = pyworld.d4c(x, f0, t, cfg.sample_rate, fft_size=cfg.fft_size)

    env = np.maximum(np.log(np.maximum(sp, 1e-12)) @ _env_weights(cfg).T, cfg.env_floor)
    hz = np.arange(cfg.n_bins) * cfg.sample_rate / cfg.fft_size
    band = np.searchsorted(np.asarray(cfg.ap_edges[1:-1]), hz, side="right")
    ap_db = 20.0 * np.log10(np.maximum(ap, 1e-6))
    ap_bands = np.stack([ap_db[:, band == b].mean(axis=1) for b in range(cfg.n_ap)], axis=1)
    frames = np.concatenate([_interpolate_lf0(f0)[:, None], (f0 > 0).astype(np.float64)[:, None], env,
                             np.clip(ap_bands, cfg.ap_floor_db, 0.0)], axis=1)
    return frames.astype(np.float32)
