"""Shared test setup: Qt draws offscreen (CI has no display) and user folders go to a temporary place."""

import os
import shutil
import subprocess

import pytest

from alsa_tap import alsa_tap, no_sound_card, unpluggable_speakers  # noqa: F401 (a sound card, none, one unplugged)
from tiny_model import tiny_model, tiny_model_with_draft, voice  # noqa: F401 (fixtures: untrained models, a voice)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def isolated_user_dirs(platformdirs_isolated):
    """Every test gets empty user data and config folders under its tmp_path (never the real home)."""
    return platformdirs_isolated


@pytest.fixture(scope="session", autouse=True)
def shared_voice_tuning(tmp_path_factory):
    """Decoders tuned to a voice are kept for the whole session (the same clip tunes to the same weights), so the
    starter voice that most tests speak with is tuned once, not in every test."""
    from tldr_core import paths

    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("voice_tuning")
        patch.setattr(paths, "voice_tuning_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory):
    """A few seconds of clear synthetic speech (espeak-ng, 22.05 kHz WAV): a voice sample anyone can make."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello, this is my voice. I am reading a few sentences "
                    "so that the app can learn how I sound."], check=True)
    return path
