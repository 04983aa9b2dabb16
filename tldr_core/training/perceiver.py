"""Whisper hears the decoded frames: the codec decoder's second intelligibility loss (training only).

The phone listener (listener.py) was trained on 23 speakers and reads 41 % of held-out voices' phones wrong, so
what it asks of the decoder is what those speakers sound like. Whisper tiny.en's encoder (frozen; its tokens are
the codec's input already) learnt from 680k hours what recognition needs. It hears spectrograms, not vocoder
frames, so `FrameRenderer` renders the frames into Whisper's log-mel the way the vocoder would sound, in
closed form and differentiably: each frame's envelope interpolated to Whisper's 201 FFT bins, times the
expected power of its source (noise, or the 25 ms window's harmonic comb at the frame's F0 mixed with noise by
the aperiodicity), then Whisper's mel filters, log and scaling. Measured (Whisper base reading the rendered
log-mel of 12 held-out clips' analysed frames): 4.0 % WER, against 4.4 % for the recordings themselves
(the envelope alone, without the comb: 5.1 %).

`Perceiver` compares the encoder's features of the decoded frames with those of the clip's original frames,
rendered the same way, on the middle `frames` (at most) of `clips` clips per batch: the decoder is pulled toward
frames that Whisper hears as the original, words first, whatever the voice. It never sees the judges (Whisper
base, the evaluation speaker encoder), is not exported, and nothing at run time needs it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tldr_core.codec.features import (AP, CONFIG as FEATURES, ENV, LF0, VUV, _ap_centres, _env_centres, _mel,
                                      interpolation)
from tldr_core.codec.whisper import N_FFT, _FILTERS, _WINDOW, WhisperEncoder

_BIN_HZ = np.arange(N_FFT // 2 + 1) * FEATURES.sample_rate / N_FFT  # Whisper's 201 bins, 40 Hz apart
_NOISE_POWER = float((_WINDOW ** 2).sum())  # a unit-density source's expected power in one windowed bin
_LOBE_HZ = 160.0  # the window's spectrum beyond this offset is > 40 dB down: left out of the comb


def _interpolation(points: np.ndarray, at: np.ndarray) -> torch.Tensor:
    """(len(points), len(at)) matrix: values at `points` @ matrix = the vocoder's `interpolation` at `at`."""
    idx, frac = interpolation(points, at)
    matrix = np.zeros((len(points), len(at)), dtype=np.float32)
    np.add.at(matrix, (idx, np.arange(len(at))), 1.0 - frac)
    np.add.at(matrix, (idx + 1, np.arange(len(at))), frac)
    return torch.from_numpy(matrix)


def _window_power(step_hz: float = 0.5) -> np.ndarray:
    """|W(d)|^2 of Whisper's 400-sample Hann window at offsets d = -_LOBE_HZ .. _LOBE_HZ, `step_hz` apart."""
    offsets = np.arange(-_LOBE_HZ, _LOBE_HZ + step_hz / 2, step_hz)
    phase = np.exp(-2j * np.pi * offsets[:, None] * np.arange(N_FFT)[None, :] / FEATURES.sample_rate)
    return (np.abs((_WINDOW[None, :] * phase).sum(axis=1)) ** 2).astype(np.float32)


class FrameRenderer(nn.Module):
    """Vocoder frames -> the log-mel Whisper would compute from the vocoder's audio, in expectation."""

    STEP_HZ = 0.5

    def __init__(self):
        super().__init__()
        self.register_buffer("env_to_bins", _interpolation(_env_centres(FEATURES), _mel(_BIN_HZ)), persistent=False)
        self.register_buffer("ap_to_bins", _interpolation(_ap_centres(FEATURES), _BIN_HZ), persistent=False)
        self.register_buffer("filters", torch.from_numpy(_FILTERS.T.copy()), persistent=False)
        self.register_buffer("window_power", torch.from_numpy(_window_power(self.STEP_HZ)), persistent=False)
        self.register_buffer("bin_hz", torch.tensor(_BIN_HZ, dtype=torch.float32), persistent=False)

    def comb(self, f0: torch.Tensor) -> torch.Tensor:
        """(B, T) F0 in Hz -> (B, T, 201) expected windowed power of a unit-density pulse train at that F0:
        the window's spectrum around each harmonic (the nearest two on either side of a bin), F0 / rate high."""
        f = self.bin_hz[None, None, :]
        nearest = torch.round(f / f0[..., None])
        table = self.window_power
        total = torch.zeros_like(nearest)
        for shift in (-2, -1, 0, 1, 2):
            harmonic = nearest + shift
            offset = f - harmonic * f0[..., None]
            position = ((offset + _LOBE_HZ) / self.STEP_HZ).clamp(0, len(table) - 1)
            low = position.floor().long().clamp(max=len(table) - 2)
            frac = position - low
            power = table[low] * (1 - frac) + table[low + 1] * frac
            total = total + torch.where((harmonic >= 1) & (offset.abs() <= _LOBE_HZ), power, torch.zeros_like(power))
        return total * f0[..., None] / FEATURES.sample_rate

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) vocoder frames (voicing a probability or 0/1) -> (B, T, 80) Whisper's scaled log-mel.
        Gradients flow through the envelope and the aperiodicity; F0 and voicing only shape the source."""
        power = torch.exp(frames[..., ENV] @ self.env_to_bins) * _NOISE_POWER
        aperiodic = torch.clamp(10.0 ** ((frames[..., AP] @ self.ap_to_bins) / 20.0), 0.0, 1.0) ** 2
        harmonic = self.comb(torch.exp(frames[..., LF0]).detach()) / _NOISE_POWER
        voiced = (frames[..., VUV:VUV + 1] > 0.5).detach()
        power = power * torch.where(voiced, aperiodic + (1.0 - aperiodic) * harmonic, torch.ones_like(harmonic))
        logs = torch.log10((power @ self.filters).clamp_min(1e-10))
        logs = torch.maximum(logs, logs.amax(dim=(1, 2), keepdim=True).detach() - 8.0)
        return (logs + 4.0) / 4.0


class Perceiver(nn.Module):
    """(decoded frames, original frames, real lengths) of a batch -> how differently Whisper's encoder hears them:
    the mean absolute difference of its features over the middle `frames` of the first `clips` clips."""

    def __init__(self, encoder: WhisperEncoder, clips: int = 4, frames: int = 400):
        super().__init__()
        self.encoder, self.clips, self.frames = encoder.eval(), clips, frames - frames % 2
        for param in self.encoder.parameters():
            param.requires_grad = False
        self.render = FrameRenderer()

    def train(self, mode: bool = True) -> "Perceiver":
        """Whisper stays in evaluation mode whatever the objective around it is set to."""
        super().train(mode)
        self.encoder.eval()
        return self

    def crops(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n = min(self.clips, len(frames))
        size = min(self.frames, int(lengths[:n].min()) // 2 * 2)
        starts = [(int(length) - size) // 2 for length in lengths[:n]]
        return torch.stack([frames[i, s:s + size] for i, s in enumerate(starts)])

    def forward(self, decoded: torch.Tensor, original: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.encoder(self.render(self.crops(original, lengths)))
        heard = self.encoder(self.render(self.crops(decoded, lengths)))
        return F.l1_loss(heard, target)
