"""Whisper as the codec decoder's second listener: vocoder frames rendered into Whisper's log-mel in closed form
look like the log-mel of the speech they were analysed from, and the frozen encoder's features then say how
differently Whisper hears decoded frames from the originals, with gradients back to the envelope only."""

import numpy as np
import pytest
import torch

from tldr_core.audio import read_audio, to_model_rate
from tldr_core.codec.features import AP, ENV, LF0, analyze
from tldr_core.codec.whisper import WhisperConfig, WhisperEncoder, log_mel
from tldr_core.paths import RESOURCES_DIR
from tldr_core.training.perceiver import FrameRenderer, Perceiver


def clip(name: str) -> np.ndarray:
    return to_model_rate(*read_audio(RESOURCES_DIR / "voices" / name))


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, np.ndarray]:
    """A shipped voice sample and its vocoder frames."""
    samples = clip("flite-rms.wav")
    return samples, analyze(samples)


def rendered(frames: np.ndarray) -> np.ndarray:
    return FrameRenderer()(torch.from_numpy(frames[None]).float())[0].numpy()


def test_rendered_frames_look_like_the_log_mel_of_the_speech_they_came_from(speech):
    samples, frames = speech
    real = log_mel(samples)
    n = min(len(real), len(frames))
    ours = rendered(frames)[:n]
    other = rendered(analyze(clip("kokoro-jf-tebukuro.wav")))[:n]  # another voice, another sentence
    assert ours.shape == (n, 80)
    near, far = np.abs(ours - real[:n]).mean(), np.abs(other[:len(other)] - real[:len(other)]).mean()
    assert near < 0.15 and near < far / 2


def test_voiced_frames_render_the_harmonics_of_their_pitch(speech):
    _, frames = speech
    voiced = frames[frames[:, 1] > 0.5][:1].copy()
    low, high = voiced.copy(), voiced.copy()
    low[:, LF0], high[:, LF0] = np.log(100.0), np.log(250.0)
    low_mel, high_mel = rendered(low)[0], rendered(high)[0]
    # below 1 kHz Whisper's mel bands are narrower than the harmonics' spacing at 250 Hz: a ripple appears
    assert np.ptp(np.diff(high_mel[:20])) > np.ptp(np.diff(low_mel[:20]))


def test_the_perceiver_hears_identical_frames_alike_and_changed_envelopes_apart(speech):
    _, frames = speech
    torch.manual_seed(0)
    perceiver = Perceiver(WhisperEncoder(WhisperConfig(dim=64, heads=2, layers=1)), clips=2, frames=200)
    original = torch.from_numpy(np.stack([frames[:300], frames[100:400]])).float()
    lengths = torch.tensor([300, 260])
    assert float(perceiver(original.clone(), original, lengths)) == 0.0
    decoded = original.clone().requires_grad_(True)
    flattened = torch.cat([decoded[..., :ENV.start], decoded[..., ENV].mean(-1, keepdim=True).expand(-1, -1, 40),
                           decoded[..., ENV.stop:]], -1)
    loss = perceiver(flattened, original, lengths)
    assert float(loss.detach()) > 0.01
    loss.backward()
    grad = decoded.grad
    assert float(grad[..., ENV].abs().sum()) > 0 and float(grad[..., AP].abs().sum()) > 0
    assert float(grad[..., LF0].abs().sum()) == 0  # the pitch shapes the source; its gradient is not Whisper's
    assert float(grad[1, 260:].abs().sum()) == 0  # padding beyond a clip's length is never heard
    assert not any(p.requires_grad for p in perceiver.encoder.parameters())  # Whisper stays frozen
    perceiver.train()
    assert not perceiver.encoder.training  # and in evaluation mode, whatever the objective around it is set to


def test_the_codec_loss_reports_what_whisper_hears_and_trains_the_decoder_by_it(speech):
    from tldr_core.codec.model import Batch, Codec, CodecConfig

    _, frames = speech
    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=32, frame_channels=16, encoder_blocks=1, decoder_blocks=1, frame_blocks=1))
    n = len(frames) // 4 * 4
    batch = Batch(frames=torch.from_numpy(frames[None, :n]).float(), embedding=torch.zeros(1, 256),
                  stats=torch.zeros(1, 42), lengths=torch.tensor([n]), phones=torch.ones(1, 3, dtype=torch.long),
                  phone_lengths=torch.tensor([3]))
    perceiver = Perceiver(WhisperEncoder(WhisperConfig(dim=64, heads=2, layers=1)), clips=1, frames=200)
    parts = codec.loss(batch, perceiver=perceiver)
    assert "perceiver" in parts and "listener" not in parts and float(parts["perceiver"].detach()) > 0
    parts["perceiver"].backward()
    assert float(codec.out.weight.grad.abs().sum()) > 0
