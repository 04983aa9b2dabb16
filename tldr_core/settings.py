"""The user's settings: one JSON file in the platformdirs config folder.

A settings file is written by hand as often as by the app, so reading it never fails: keys it does not know
are ignored (a newer version may have written them), a value that is not allowed falls back to its default,
and an unreadable file gives all defaults; each of these leaves a notice saying what happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tldr_core import paths
from tldr_core.files import write_text

SETTINGS_FILE = "settings.json"

# TLDR patches; the token-level backbone one speech token per step; or speculative decoding (SSD: a draft model
# proposes, the backbone verifies several tokens per step) and TLDR patches verified speculatively (the draft
# proposes whole patches), for a model that has a draft
DECODING_MODES = ("tldr", "baseline", "ssd", "tldr-ssd")
SPECULATIVE_MODES = ("ssd", "tldr-ssd")  # they need the model's draft
PATCH_MODES = ("tldr", "tldr-ssd")       # the patch size applies to them
PATCH_SIZES = (2, 4, 6, 8)  # speech tokens per TLDR step
DEVICES = ("auto", "cuda", "cpu")
# Voice match: how many of the voice sample's decoded frames correct each decoded frame (codec.runtime.Calibration);
# fewer keep more of the voice and lose a few more words, 0 is off. The first is the default: 32 (Light) keeps
# 1.2 points of words more than 16 (Strong) for 0.007 of similarity (docs/EXPERIMENTS.md, run cw2)
VOICE_MATCHES = (32, 16, 0)
# Voice tuning: Adam steps that fit the codec's decoder to each voice sample, once per voice (codec.tuning). On held-out
# voices 300 steps add +0.031 similarity at Light with the words within the noise, and with the voice match off reach
# 0.824 for +2.3 WER points (docs/EXPERIMENTS.md, "Voice tuning"): off, the first, by default, since it costs the
# words something and a wait before a new voice's first sentence
VOICE_TUNINGS = (0, 100, 300)
# Sampling temperature, the default of the app, the command line and decoding.Sampling: measured, 0.8 read 21.0 % WER
# on held-out voices, 0.3 18.4 % (docs/EXPERIMENTS.md, "Cooler sampling")
TEMPERATURE = 0.3
TEMPERATURE_RANGE = (0.1, 2.0)  # below ~0.1 sampling is greedy in practice; above 2 speech turns to noise
MAX_SEED = 2**31 - 1  # fits every framework's seed and a Qt spin box


@dataclass
class Settings:
    decoding_mode: str = "tldr"
    patch_size: int = 4  # speech tokens per TLDR step; 4 is TLDR's speed/quality sweet spot
    device: str = "auto"  # where the model runs: CUDA when available, else the CPU
    input_device: str | None = None  # sounddevice device name; None: the system default
    output_device: str | None = None
    temperature: float = TEMPERATURE  # the one the model's figures are measured at
    voice_match: int = VOICE_MATCHES[0]
    voice_tuning: int = VOICE_TUNINGS[0]
    seed: int | None = None  # None: a new random seed every time
    last_voice: str | None = None  # id of the voice picked last (see tldr_core.voices)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a patch size


def _optional_text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() != "")


# For each setting: a test of a value and the words that say what is allowed.
_RULES: dict[str, tuple[Any, str]] = {
    "patch_size": (lambda v: _is_int(v) and v in PATCH_SIZES, "2, 4, 6 or 8"),
    "decoding_mode": (lambda v: v in DECODING_MODES, ", ".join(DECODING_MODES)),
    "device": (lambda v: v in DEVICES, ", ".join(DEVICES)),
    "input_device": (_optional_text, "a device name or null"),
    "output_device": (_optional_text, "a device name or null"),
    "temperature": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
                    and TEMPERATURE_RANGE[0] <= v <= TEMPERATURE_RANGE[1],
                    f"a number from {TEMPERATURE_RANGE[0]} to {TEMPERATURE_RANGE[1]}"),
    "voice_match": (lambda v: _is_int(v) and v in VOICE_MATCHES, ", ".join(map(str, VOICE_MATCHES))),
    "voice_tuning": (lambda v: _is_int(v) and v in VOICE_TUNINGS, ", ".join(map(str, VOICE_TUNINGS))),
    "seed": (lambda v: v is None or (_is_int(v) and 0 <= v <= MAX_SEED), f"null or a whole number 0-{MAX_SEED}"),
    "last_voice": (_optional_text, "a voice id or null"),
}


def invalid_fields(settings: Settings) -> list[str]:
    """Names of the settings whose value is not allowed (empty when all are fine)."""
    return [name for name, (ok, _) in _RULES.items() if not ok(getattr(settings, name))]


def settings_path() -> Path:
    return paths.user_config_dir() / SETTINGS_FILE


def load_settings(path: Path | None = None) -> tuple[Settings, list[str]]:
    """(settings, notices): never raises; whatever cannot be used is replaced by its default and noticed."""
    path = path or settings_path()
    defaults = Settings()
    if not path.exists():
        return defaults, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("it holds no settings object")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return defaults, [f"The settings file {path} could not be read ({error}), so the default settings are "
                          f"used; saving the settings replaces it."]
    values, notices = {}, []
    if data.get("patch_size") == "baseline":  # before 0.2 the token-level mode was a patch size
        data = {**data, "patch_size": defaults.patch_size, "decoding_mode": "baseline"}
    for field in fields(Settings):
        if field.name not in data:
            continue
        value = data[field.name]
        ok, allowed = _RULES[field.name]
        if ok(value):
            values[field.name] = value
        else:
            default = getattr(defaults, field.name)
            notices.append(f"The setting {field.name} = {value!r} in {path.name} is not allowed (it must be "
                           f"{allowed}), so the default {default!r} is used.")
    return Settings(**values), notices


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write the settings atomically (temp file + rename), so a crash never leaves half a file."""
    bad = invalid_fields(settings)
    if bad:
        raise ValueError(f"invalid settings: {', '.join(bad)}")
    path = path or settings_path()
    write_json(path, asdict(settings))


def write_json(path: Path, data: Any) -> None:
    """Settings and voice metadata as indented UTF-8 JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False))
