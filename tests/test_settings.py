"""Settings survive restarts, and a damaged or hand-edited settings file never stops the app."""

import json

import pytest

from faults import read_only
from tldr_core import paths
from tldr_core.errors import SaveError
from tldr_core.settings import Settings, load_settings, save_settings, settings_path


def test_defaults_when_nothing_was_saved():
    settings, notices = load_settings()
    assert settings == Settings() and notices == []
    assert settings.patch_size == 4 and settings.decoding_mode == "tldr" and settings.device == "auto"


def test_the_app_speaks_at_the_temperature_its_figures_were_measured_at():
    from tldr_core.cli import build_parser
    from tldr_core.decoding import Sampling

    assert Settings().temperature == Sampling().temperature  # what `bench` uses
    for command in (["evaluate", "CORPUS"], ["speak", "text", "--voice", "v.wav", "--out", "o.wav"]):
        assert build_parser().parse_args(command).temperature == Sampling().temperature


def test_settings_persist_in_the_user_config_folder():
    saved = Settings(patch_size=8, decoding_mode="baseline", device="cpu", input_device="USB Mic",
                     output_device="Speakers", temperature=0.7, voice_match=32, voice_tuning=300, seed=1234,
                     last_voice="abc123")
    save_settings(saved)
    assert settings_path().parent == paths.user_config_dir()
    assert load_settings() == (saved, [])


def test_saving_leaves_no_temporary_files():
    save_settings(Settings(patch_size=8))
    assert [p.name for p in paths.user_config_dir().iterdir()] == ["settings.json"]


def test_a_corrupt_file_gives_defaults_and_says_so():
    settings_path().write_text('{"patch_size": 8, "devi', encoding="utf-8")
    settings, notices = load_settings()
    assert settings == Settings()
    assert len(notices) == 1 and "could not be read" in notices[0] and "default" in notices[0]


def test_a_file_that_is_not_text_gives_defaults():
    settings_path().write_bytes(b"\xff\xfe\x00garbage")
    settings, notices = load_settings()
    assert settings == Settings() and notices


def test_unknown_keys_are_ignored_and_known_ones_kept():
    settings_path().write_text(json.dumps({"patch_size": 2, "from_a_newer_version": True}), encoding="utf-8")
    assert load_settings() == (Settings(patch_size=2), [])


@pytest.mark.parametrize("key, value", [("patch_size", 5), ("patch_size", True), ("patch_size", "4"),
                                        ("decoding_mode", "fast"), ("decoding_mode", "speculative"),
                                        ("device", "tpu"), ("temperature", 0),
                                        ("temperature", "hot"), ("seed", -1), ("seed", 2.5),
                                        ("voice_match", 8), ("voice_match", "strong"),
                                        ("voice_tuning", 50), ("voice_tuning", "close"),
                                        ("output_device", ""), ("last_voice", 7)])
def test_an_invalid_value_falls_back_to_its_default_alone(key, value):
    settings_path().write_text(json.dumps({"seed": 42, key: value} if key != "seed" else {key: value}),
                               encoding="utf-8")
    settings, notices = load_settings()
    assert getattr(settings, key) == getattr(Settings(), key)
    if key != "seed":
        assert settings.seed == 42  # the valid neighbour survives
    assert len(notices) == 1 and key in notices[0] and "default" in notices[0]


def test_a_file_from_before_the_decoding_mode_keeps_its_token_level_choice():
    """Token by token used to be the patch size "baseline"; it is the decoding mode "baseline" now."""
    settings_path().write_text(json.dumps({"patch_size": "baseline", "seed": 7}), encoding="utf-8")
    assert load_settings() == (Settings(decoding_mode="baseline", seed=7), [])


def test_settings_that_cannot_be_saved_say_so_and_the_old_ones_stay():
    save_settings(Settings(patch_size=8))
    with read_only(paths.user_config_dir()), pytest.raises(SaveError, match="settings.json' could not be saved"):
        save_settings(Settings(patch_size=2))
    assert load_settings() == (Settings(patch_size=8), [])


def test_invalid_settings_are_never_written():
    with pytest.raises(ValueError, match="patch_size"):
        save_settings(Settings(patch_size=3))
    assert not settings_path().exists()
