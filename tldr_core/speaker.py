"""Speaker embeddings: who is speaking, as a 256-d unit vector, computed with onnxruntime alone.

The TTS model is conditioned on the embedding of the reference clip. The network is resemblyzer's
pretrained GE2E voice encoder (Apache-2.0), exported once to resources/speaker_encoder.onnx by
training/speaker_export.py; the ONNX graph takes power spectrogram frames and holds the mel filterbank, the
3-layer LSTM, the projection, the ReLU and the L2 norm. What stays here in numpy is what resemblyzer does
around its network: volume normalisation, the STFT, cutting the utterance into overlapping 1.6 s
partials and averaging their embeddings. The result matches resemblyzer's
`embed_utterance(normalize_volume(wav, -30, increase_only=True))` to within 1e-6, without torch or librosa,
so the app and its installer stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tldr_core import paths
from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import AudioInputError, ModelError
from tldr_core.onnx_session import open_session

EMBEDDING_DIM = 256


@dataclass(frozen=True)
class EncoderConfig:
    """resemblyzer's front end and partial-utterance scheme; the pretrained weights expect exactly these."""

    n_fft: int = 400                 # 25 ms window at 16 kHz (also the FFT size: 201 frequency bins)
    hop: int = 160                   # 10 ms between frames
    partial_frames: int = 160        # one partial utterance = 1.6 s of frames
    partials_per_second: float = 1.3  # partials overlap: a new one starts every ~0.77 s
    min_coverage: float = 0.75       # keep a zero-padded last partial only if this much of it is audio
    target_dbfs: float = -30.0       # quiet clips are raised to this RMS level (never lowered)
    min_seconds: float = 0.5         # below this a partial is mostly zero padding: the embedding means little


CONFIG = EncoderConfig()


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window STFTs use (cosine period n, not n - 1), as float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def power_spectrogram(samples: np.ndarray, window: np.ndarray, hop: int) -> np.ndarray:
    """|FFT|^2 of every frame of len(window) samples, `hop` apart, no padding: (frames, len(window)//2 + 1)."""
    frames = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64), len(window))[::hop]
    return (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).astype(np.float32)


def partial_starts(n_samples: int, cfg: EncoderConfig = CONFIG) -> list[int]:
    """First frame of each partial utterance, in resemblyzer's arrangement.

    Partials start every round(SAMPLE_RATE / rate / hop) frames and run until one reaches past the end; the
    last is dropped when it covers less than min_coverage of real audio, unless it is the only one.
    """
    n_frames = int(np.ceil((n_samples + 1) / cfg.hop))
    step = int(round(SAMPLE_RATE / cfg.partials_per_second / cfg.hop))
    starts = list(range(0, max(1, n_frames - cfg.partial_frames + step + 1), step))
    coverage = (n_samples - starts[-1] * cfg.hop) / (cfg.partial_frames * cfg.hop)
    if coverage < cfg.min_coverage and len(starts) > 1:
        starts.pop()
    return starts


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1: same direction, 0: unrelated)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class SpeakerEncoder:
    """Embeds a voice clip; runs on CUDA when onnxruntime offers it, else on a light CPU session."""

    def __init__(self, model_path: Path = paths.SPEAKER_ENCODER_ONNX, device: str = "auto"):
        restore = (f"Reinstall TLDR Voice to restore it, or re-create it with "
                   f"`tldr-voice speaker export-onnx {model_path}` (needs `pip install -e .[export]`).")
        # one thread: ~9 ms per 3 s clip already (two: ~7.5 ms), and it leaves the cores to the TTS
        self.session, self.notices = open_session(model_path, device, "speaker encoder", restore, threads=1)
        spectrum = self.session.get_inputs()[0]
        if spectrum.shape[1:] != [CONFIG.partial_frames, CONFIG.n_fft // 2 + 1]:
            raise ModelError(f"{model_path} is not a TLDR Voice speaker encoder (its input has shape "
                             f"{spectrum.shape}). {restore}")
        self.input_name = spectrum.name
        self.providers: list[str] = self.session.get_providers()
        self.window = hann_window(CONFIG.n_fft)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 samples at 16 kHz -> (256,) float32 unit vector."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioInputError(f"The speaker encoder needs mono audio, got an array of shape {x.shape}; "
                                  "convert it with tldr_core.audio.to_model_rate first.")
        if len(x) < CONFIG.min_seconds * SAMPLE_RATE:
            raise AudioInputError(f"The voice clip is too short to recognise the speaker "
                                  f"({len(x) / SAMPLE_RATE:.2f} s); use at least {CONFIG.min_seconds} s of "
                                  "speech, ideally 3-10 s.")
        if not np.all(np.isfinite(x)):
            raise AudioInputError("The voice clip contains invalid samples (NaN or infinity); record or "
                                  "export it again.")
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        if rms < 1e-5:  # quieter than -100 dBFS: digital silence, nothing to recognise
            raise AudioInputError("The voice clip is silent; check the microphone or choose another file.")
        gain_db = CONFIG.target_dbfs - 20.0 * np.log10(rms)
        if gain_db > 0:
            x = (x * 10.0 ** (gain_db / 20.0)).astype(np.float32)

        starts = partial_starts(len(x), CONFIG)
        end = (starts[-1] + CONFIG.partial_frames) * CONFIG.hop  # the last partial may reach past the audio
        x = np.pad(x, (0, max(0, end - len(x))))
        centered = np.pad(x, CONFIG.n_fft // 2)  # frame t is centred on sample t * hop, zeros beyond the ends
        spectrum = power_spectrogram(centered, self.window, CONFIG.hop)
        partials = np.stack([spectrum[s:s + CONFIG.partial_frames] for s in starts])
        partial_embeddings = self.session.run(None, {self.input_name: partials})[0]
        mean = partial_embeddings.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)
