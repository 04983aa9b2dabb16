"""Whisper's speech encoder (tiny.en by default) and its log-mel front end, for speech tokens.

Why Whisper: its encoder was trained on 680k hours of speech to feed a text decoder, so its 50-per-second
features carry what was said and little of who said it or in which room; quantised, they make speech tokens
that a codec decoder can learn from without us training a speech recogniser on this CPU. The weights come
from a CTranslate2 model.bin (tldr_core/training/whisper_weights.py reads them at build time); this module
holds only the network, so that exporting it to ONNX needs nothing but torch.

    log_mel(samples)           16 kHz mono -> (T, 80) log-mel, T = len(samples) // 160 (100 per second)
    WhisperEncoder(cfg)(mel)   (B, T, 80) -> (B, ceil(T / 2), dim) (50 per second), T <= 3000 (30 s)
    mel_chunks(mel)            a clip's log-mel in pieces the encoder takes: <= 30 s, whole tokens each
    encoder_features(samples, encoder)   all of it: (2 * ceil(T / 4), dim) at 50 per second
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import AudioInputError

N_FFT = 400          # 25 ms window at 16 kHz
HOP = 160            # 10 ms: 100 mel frames per second
N_MELS = 80
MAX_FRAMES = 3000    # Whisper's 30 s window; its position table has 1500 rows after the stride-2 conv
MEL_PER_PAIR = 4     # 40 ms: 4 mel frames, 2 encoder frames; whole pairs suit both token rates (25/s, 50/s)
TAIL = 100           # frames of silence after each piece the encoder reads (see `mel_pieces`)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic (27 steps per factor 6.4) above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangles evenly spaced in Slaney mels from 0 Hz to Nyquist, each scaled by
    2 / (its width in Hz) so that every band sums about the same energy: librosa's default, which Whisper
    was trained with."""
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / (centre - low)
    falling = (high - bins[None, :]) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (high - low))


_FILTERS = mel_filterbank().astype(np.float32)
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(T, 80) float32 Whisper log-mel of 16 kHz mono float samples, T = len(samples) // 160.

    Frame t is the 400-sample Hann window centred on sample 160 t; the start is reflect-padded (torch.stft's
    center=True) and the end zero-padded, as Whisper and faster-whisper see it (both append zeros before the
    STFT), so every frame we return equals theirs. A 30 s clip gives exactly Whisper's 3000 frames; there
    is no padding to 30 s: the encoder takes any length up to that.

    Values: log10 of the mel power, floored at 8 (80 dB) below the clip's loudest value, then (x + 4) / 4.
    The floor is taken over the samples passed in. Whisper's transcribe takes it over the whole file (its
    30 s of zero padding never raises the maximum) and so does faster-whisper (it computes one log-mel for
    the whole file and cuts it into 30 s windows afterwards); to match either on a long file, compute the
    log-mel of the whole file and cut the frames, rather than calling this on each piece. Only the quietest
    frames (silence more than 80 dB below the peak) depend on that choice.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel takes mono samples (one dimension), got shape {x.shape}")
    n_frames = len(x) // HOP
    if n_frames == 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    half = N_FFT // 2
    # the reflection needs half + 1 samples; a clip of 1-2 frames pads it with zeros first (as Whisper does)
    x = np.pad(x, (0, max(0, half + 1 - len(x))))
    padded = np.concatenate([x[half:0:-1], x, np.zeros(half, dtype=np.float32)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[:: HOP][:n_frames]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    mel = power.astype(np.float32) @ _FILTERS.T
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)


@dataclass
class WhisperConfig:
    """tiny.en's shape; the loader infers it from the weights, so base/small files work too."""

    n_mels: int = N_MELS
    dim: int = 384
    heads: int = 6
    layers: int = 4
    max_positions: int = MAX_FRAMES // 2


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """Whisper's fixed position table: sines then cosines over timescales from 1 to 10000 frames."""
    increment = math.log(10000.0) / (dim // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(dim // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention. The key has no bias, as in Whisper: a bias on the key adds the
    same amount to every score of a query, which softmax cancels."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: the residual path stays an identity, which is what Whisper trained."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.attn_ln = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.mlp_ln = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: (B, T, n_mels) log-mel at 100/s -> (B, ceil(T / 2), dim) features at 50/s.

    Whisper always ran on 30 s windows (3000 frames); here any length up to that works, because nothing in
    the network but the position table depends on the length (frames never see the padding that follows
    them through the convolutions, but attention would: batch clips of equal length, or one at a time).
    """

    def __init__(self, cfg: WhisperConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WhisperConfig()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)
        # a buffer, not computed per call: the loader overwrites it with the table the weights were trained with
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(cfg.dim)

    @property
    def max_frames(self) -> int:
        return 2 * self.cfg.max_positions

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and mel.shape[1] > self.max_frames:  # a traced graph keeps no checks
            seconds = mel.shape[1] * HOP / SAMPLE_RATE
            raise AudioInputError(
                f"The Whisper encoder takes at most {self.max_frames} log-mel frames "
                f"({self.max_frames * HOP // SAMPLE_RATE} s of audio); this clip has {mel.shape[1]} "
                f"({seconds:.1f} s). Cut it into pieces of at most 30 s and encode them one by one.")
        x = F.gelu(self.conv1(mel.transpose(1, 2)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def mel_pieces(mel: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """A (T, 80) log-mel in consecutive pieces the encoder can read, each with the number of encoder frames of the
    clip that it holds (even: whole MEL_PER_PAIR steps): pieces of at most MAX_FRAMES - TAIL frames, a whole number
    of pairs (the last one padded up to one), each followed by TAIL frames of digital silence in this clip's scale
    (the log-mel's floor, max - 2). Whisper only ever heard speech followed by silence (30 s windows): without the
    tail the last frames of a clip come out unlike the rest (cosine 0.5 to the padded run's on a flite clip's last
    4 frames; 0.98 on average). The callers drop the tail's encoder frames (or tokens). Empty in, empty out."""
    if not len(mel):
        return []
    floor = mel.max() - 2.0  # log10 clamped at max - 8, then (x + 4) / 4
    step = (MAX_FRAMES - TAIL) // MEL_PER_PAIR * MEL_PER_PAIR
    pieces = []
    for start in range(0, len(mel), step):
        piece = mel[start:start + step]
        pairs = -(-len(piece) // MEL_PER_PAIR)
        silence = np.full((pairs * MEL_PER_PAIR - len(piece) + TAIL, mel.shape[1]), floor, dtype=mel.dtype)
        pieces.append((np.concatenate([piece, silence]), 2 * pairs))
    return pieces


@torch.no_grad()
def encoder_features(samples: np.ndarray, encoder: WhisperEncoder) -> np.ndarray:
    """(2 * ceil(T / 4), dim) float32 encoder output of a whole clip of 16 kHz samples (T = len // 160 mel
    frames): one log-mel over the clip (so its floor is the clip's), encoded in `mel_pieces`."""
    pieces = mel_pieces(log_mel(samples))
    if not pieces:
        return np.zeros((0, encoder.cfg.dim), dtype=np.float32)
    return np.concatenate([encoder(torch.from_numpy(piece)[None])[0, :n].numpy() for piece, n in pieces])
