"""Export resemblyzer's pretrained voice encoder to the ONNX file that speaker.py runs.

Run once by the maintainers (`tldr-voice speaker export-onnx resources/speaker_encoder.onnx`); the app
ships the result so it never needs torch, librosa or resemblyzer. The graph maps power spectrogram
partials (partials, 160 frames, 201 bins) to unit embeddings (partials, 256): the mel filterbank is a
constant matrix in the graph, followed by resemblyzer's own LSTM, linear layer, ReLU and L2 norm.
The export is only kept when onnxruntime + speaker.py reproduce resemblyzer on a test clip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import TldrError
from tldr_core.files import atomic_path

OPSET = 17
TOLERANCE = 1e-4  # max abs difference per embedding component that still counts as the same model


def export_speaker_encoder(out: Path) -> None:
    """Write the ONNX speaker encoder to `out` (atomically), after checking it against resemblyzer."""
    try:
        import librosa
        import onnx
        import torch
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import normalize_volume
    except ImportError as error:
        raise TldrError(f"Exporting the speaker encoder needs the export extras ({error.name} is missing); "
                        "install them with `pip install -e .[export]`.") from error
    from tldr_core.speaker import CONFIG, SpeakerEncoder

    class SpectrogramToEmbedding(torch.nn.Module):
        """Mel projection in front of resemblyzer's network, so the graph starts from the STFT."""

        def __init__(self, encoder: torch.nn.Module, mel_basis: np.ndarray):
            super().__init__()
            self.encoder = encoder
            self.register_buffer("mel_basis", torch.from_numpy(mel_basis.T.copy()))  # (201 bins, 40 mels)

        def forward(self, power: torch.Tensor) -> torch.Tensor:
            return self.encoder(power @ self.mel_basis)

    encoder = VoiceEncoder(device="cpu", verbose=False).eval()
    # librosa's default (Slaney) filterbank is the one resemblyzer's wav_to_mel_spectrogram applies.
    mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=CONFIG.n_fft, n_mels=encoder.lstm.input_size)
    model = SpectrogramToEmbedding(encoder, mel_basis).eval()
    example = torch.zeros(2, CONFIG.partial_frames, CONFIG.n_fft // 2 + 1)

    out = Path(out)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # The exporter warns that LSTMs may break with other batch sizes; here the zero initial states
            # are built from the input's shape, and the check below runs a different batch size than this.
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=OPSET,
                              input_names=["power_spectrogram"], output_names=["embedding"],
                              dynamic_axes={"power_spectrogram": {0: "partials"}, "embedding": {0: "partials"}})
        graph = onnx.load(tmp)
        graph.doc_string = ("resemblyzer 0.1.4 pretrained VoiceEncoder (Apache-2.0, Resemble AI) with a 40-band "
                            "Slaney mel filterbank in front; input: power STFT (n_fft 400, hop 160, periodic "
                            "Hann, centred) partials of 160 frames; output: L2-normalised 256-d embeddings.")
        onnx.save(graph, tmp)

        clip = _test_clip()
        expected = encoder.embed_utterance(normalize_volume(clip, CONFIG.target_dbfs, increase_only=True))
        got = SpeakerEncoder(Path(tmp), device="cpu").embed(clip)
        difference = float(np.max(np.abs(got - expected)))
        if difference > TOLERANCE:
            raise TldrError(f"The exported speaker encoder differs from resemblyzer by {difference:.2e} "
                            f"(allowed {TOLERANCE:.0e}); the export was not written. Check the installed "
                            "torch, onnxruntime and librosa versions.")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); matches resemblyzer to {difference:.1e}")


def _test_clip(seconds: float = 3.3, seed: int = 0) -> np.ndarray:
    """A deterministic voice-like signal: a gliding 100-200 Hz harmonic tone with a syllable rhythm and
    noise; 3.3 s gives several overlapping partials and a zero-padded last one."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(seed).normal(0, 0.05, len(t))
    return (0.05 * envelope * voiced + 0.01 * noise).astype(np.float32)
