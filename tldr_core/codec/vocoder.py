"""A streaming source-filter vocoder for the coded WORLD frames of `features.py`.

Why not pyworld.synthesize: it reseeds its noise on every call, so rendering a stream chunk by chunk
would change every unvoiced sound at random, and it needs the whole utterance. This vocoder is small,
vectorised numpy and exactly chunk-invariant:

- excitation: a pulse train driven by a phase accumulator (amplitude sqrt(period) so its power density
  is 1, like unit white noise) plus white noise drawn from blocks seeded by their absolute sample position;
  both are generated in fixed 10 ms segments, so the arithmetic is the same however frames arrive;
- filtering: each frame windows 20 ms of excitation (periodic Hann, 50 % overlap: the windows sum to 1),
  mixes pulse and noise per FFT bin by the decoded aperiodicity and multiplies by the minimum-phase filter
  of the decoded envelope; the results overlap-add.

Frame t needs frame t + 1 (F0 is interpolated between frame centres), so the look-ahead is one frame
(10 ms). `StreamingVocoder.push` returns every sample that later frames can no longer change; the
concatenation of all pushes plus `flush` equals `synthesize` on the whole sequence to float rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tldr_core.codec.features import AP, CONFIG, ENV, LF0, VUV, FeatureConfig, decode_aperiodicity, decode_envelope

NOISE_BLOCK = 4096  # noise is drawn per block of this many samples, seeded by (seed, block index)


@lru_cache(maxsize=8)
def _noise_block(seed: int, block: int) -> np.ndarray:
    """One block of unit white noise; cached, since a stream asks for the same block on several pushes."""
    noise = np.random.default_rng([seed, block]).standard_normal(NOISE_BLOCK)
    noise.flags.writeable = False
    return noise


def _noise(start: int, stop: int, seed: int) -> np.ndarray:
    """Unit white noise for absolute samples [start, stop) (start >= 0): the same values on every call."""
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    blocks = [_noise_block(seed, b) for b in range(first, last + 1)]
    return np.concatenate(blocks)[start - first * NOISE_BLOCK: stop - first * NOISE_BLOCK]


def _min_phase(log_amplitude: np.ndarray, fft_size: int) -> np.ndarray:
    """(..., bins) log amplitude -> complex minimum-phase spectrum (folded real cepstrum)."""
    cep = np.fft.irfft(log_amplitude, n=fft_size, axis=-1)
    half = fft_size // 2
    fold = np.zeros_like(cep)
    fold[..., 0] = cep[..., 0]
    fold[..., 1:half] = 2.0 * cep[..., 1:half]
    fold[..., half] = cep[..., half]
    return np.exp(np.fft.rfft(fold, axis=-1))


class StreamingVocoder:
    """Renders frames pushed in any chunking; the samples out depend only on the frames, not the chunks.

    Internally samples are counted from u = 0 at absolute sample -hop, where frame 0's window starts:
    frame t's window covers u in [t * hop, (t + 2) * hop).
    """

    def __init__(self, cfg: FeatureConfig = CONFIG, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        n = 2 * cfg.hop
        self.window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic Hann: halves sum to 1
        self.n_frames = 0            # frames received
        self.n_rendered = 0          # frames filtered and overlap-added
        self.last_f0: float | None = None
        self.phase = 0.0             # pulse phase (cycles, in [0, 1)) at the end of the excitation so far
        self.exc_start = 0           # u of pulse[0] and noise[0]
        self.pulse = np.zeros(0)
        self.noise = np.zeros(0)
        self.pending = np.zeros((0, cfg.dim))  # received, not yet rendered
        self.out_start = 0           # u of ola[0]
        self.ola = np.zeros(0)
        self.finished = False

    def _excite(self, f0_from: np.ndarray, f0_to: np.ndarray) -> None:
        """Append one hop of excitation per (F0 at the segment's start, F0 at its end) pair, in Hz."""
        hop, rate = self.cfg.hop, self.cfg.sample_rate
        ramp = np.arange(hop) / hop
        f0 = f0_from[:, None] * (1.0 - ramp) + f0_to[:, None] * ramp          # (segments, hop)
        cycles = np.cumsum(f0 / rate, axis=1)
        starts = np.empty(len(f0))
        for k in range(len(f0)):  # the phase carries over per segment: the same sums in any chunking
            starts[k] = self.phase
            end = self.phase + cycles[k, -1]
            self.phase = float(end - np.floor(end))
        phase = np.floor(np.concatenate([starts[:, None], starts[:, None] + cycles], axis=1))
        crossed = np.diff(phase, axis=1) > 0
        pulses = np.where(crossed, np.sqrt(rate / f0), 0.0)
        first = self.exc_start + len(self.pulse)
        self.pulse = np.concatenate([self.pulse, pulses.ravel()])
        self.noise = np.concatenate([self.noise, _noise(first, first + pulses.size, self.seed)])

    def _render(self, frames: np.ndarray) -> None:
        """Filter and overlap-add the next len(frames) frames (their excitation must exist)."""
        cfg, hop, n = self.cfg, self.cfg.hop, self.cfg.fft_size
        starts = (self.n_rendered + np.arange(len(frames))) * hop                 # u of each window
        idx = (starts - self.exc_start)[:, None] + np.arange(2 * hop)[None, :]
        pulse = np.fft.rfft(self.pulse[idx] * self.window, n=n, axis=1)
        noise = np.fft.rfft(self.noise[idx] * self.window, n=n, axis=1)
        ap = decode_aperiodicity(frames[:, AP], cfg)
        voiced = frames[:, VUV:VUV + 1] > 0.5
        source = np.where(voiced, pulse * np.sqrt(1.0 - ap ** 2) + noise * ap, noise)
        # cheaptrick's envelope is power per sample, and both sources have unit power density: no gain needed
        # (copy synthesis of the corpus test split keeps the level within 0.2 dB)
        log_amp = 0.5 * decode_envelope(frames[:, ENV], cfg)
        out = np.fft.irfft(source * _min_phase(log_amp, n), n=n, axis=1)
        grow = starts[-1] + n - self.out_start - len(self.ola)
        if grow > 0:
            self.ola = np.concatenate([self.ola, np.zeros(grow)])
        for k, start in enumerate(starts - self.out_start):
            self.ola[start: start + n] += out[k]
        self.n_rendered += len(frames)
        drop = self.n_rendered * hop - self.exc_start  # excitation before the next window is spent
        self.pulse, self.noise, self.exc_start = self.pulse[drop:], self.noise[drop:], self.exc_start + drop

    def _take(self, upto: int) -> np.ndarray:
        """Remove the finished samples with u < upto; return those at absolute sample >= 0 as float32."""
        count = max(0, upto - self.out_start)
        done, self.ola = self.ola[:count], self.ola[count:]
        skip = max(0, self.cfg.hop - self.out_start)
        self.out_start += count
        return done[skip:].astype(np.float32)

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Add frames (n, dim); return the samples that are now final (none until frame 1 arrives)."""
        if self.finished:
            raise RuntimeError("this vocoder was flushed; start a new one for a new utterance")
        frames = np.asarray(frames, dtype=np.float64).reshape(-1, self.cfg.dim)
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        f0 = np.exp(frames[:, LF0])
        if self.last_f0 is None:  # the half window before frame 0 runs at frame 0's F0
            self._excite(f0[:1], f0[:1])
        chain = np.concatenate([[self.last_f0] if self.last_f0 is not None else [], f0])
        self._excite(chain[:-1], chain[1:])
        self.last_f0 = float(f0[-1])
        self.n_frames += len(frames)
        self.pending = np.concatenate([self.pending, frames])
        if len(self.pending) > 1:  # the newest frame waits for its successor's F0
            self._render(self.pending[:-1])
            self.pending = self.pending[-1:]
        return self._take(self.n_rendered * self.cfg.hop)

    def flush(self) -> np.ndarray:
        """Render the last frame (its second half at its own F0); return the rest, up to n_frames * hop."""
        self.finished = True
        if self.n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        last = np.array([self.last_f0])
        self._excite(last, last)
        self._render(self.pending)
        self.pending = self.pending[:0]
        return self._take((self.n_frames + 1) * self.cfg.hop)


def synthesize(frames: np.ndarray, n_samples: int | None = None, cfg: FeatureConfig = CONFIG,
               seed: int = 0) -> np.ndarray:
    """Offline rendering of a whole frame sequence; trimmed to n_samples when given."""
    vocoder = StreamingVocoder(cfg, seed)
    audio = np.concatenate([vocoder.push(frames), vocoder.flush()])
    return audio[:n_samples] if n_samples is not None else audio
