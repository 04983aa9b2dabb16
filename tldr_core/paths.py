"""Where shipped files and user files live."""

import sys
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parents[1]
# The packaged app (packaging/build_app.sh, PyInstaller) carries its own copy of resources/ in its bundle folder.
RESOURCES_DIR = (Path(sys._MEIPASS) if getattr(sys, "frozen", False) else REPO_ROOT) / "resources"
SPEAKER_ENCODER_ONNX = RESOURCES_DIR / "speaker_encoder.onnx"

APP_NAME = "tldr-voice"


def user_data_dir() -> Path:
    """Saved voices and downloaded or trained models (created on first use)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False, ensure_exists=True))


def user_cache_dir() -> Path:
    """Files derived from installed packages that can be made again at any time (created on first use)."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False, ensure_exists=True))


def voice_tuning_dir() -> Path:
    """The codec's decoder as tuned to each of the user's voices (codec.tuning): made again when missing."""
    return user_cache_dir() / "voice_tuning"


def user_config_dir() -> Path:
    """Settings (created on first use)."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False, ensure_exists=True))

DEFAULT_MODEL_DIR = RESOURCES_DIR / "default_model"


def default_model_installed() -> bool:
    """True once a trained default model (with its manifest) ships in resources/."""
    return (DEFAULT_MODEL_DIR / "manifest.json").is_file()
