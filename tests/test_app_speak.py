"""Speak in the main window with a real (tiny, untrained) model: it loads in the background, its patches reach
the real OutputStream on the virtual ALSA device (tests/alsa_tap.py) while it is still generating, Stop halts
it, and the speech (not the voice sample) is what Play again and Export use. The tiny model babbles; only the
pipeline is under test here, not the quality."""

import shutil
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from app import main_window as main_window_module
from app.audio_io import DEVICE_LOST
from app.main_window import MainWindow
from app.speech import LOADING_MESSAGE, MODEL_DIR_ENV
from faults import raise_cuda_out_of_memory
from tldr_core import paths
from tldr_core.synthesis import GPU_FULL
from tldr_core.settings import Settings, save_settings
from tldr_core.voices import VoiceLibrary

REFERENCE = paths.RESOURCES_DIR / "voices" / "flite-rms.wav"
SHORT = "Hello there, this is a test."
LONG = " ".join(f"This is sentence number {n}, and it goes on for a while." for n in range(1, 31))


@pytest.fixture(autouse=True)
def voice_and_settings(monkeypatch, tmp_path):
    """A saved voice, the CPU, a fixed seed; no shipped model or environment variable interferes."""
    monkeypatch.setattr(paths, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    save_settings(Settings(device="cpu", seed=7))
    return VoiceLibrary().create_from_file("Rms", REFERENCE)


def open_window(qtbot, model_dir) -> MainWindow:
    window = MainWindow(model_dir=model_dir)
    qtbot.addWidget(window)
    window.show()
    return window


@pytest.fixture
def window(qtbot, tiny_model):
    window = open_window(qtbot, tiny_model)
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    yield window
    window.close()


def speak_and_wait(qtbot, window, words: str = SHORT, timeout: int = 20000) -> None:
    window.editor.setPlainText(words)
    window.speak()
    qtbot.waitUntil(lambda: not window._speaking, timeout=timeout)
    qtbot.waitUntil(lambda: not window.player.is_playing, timeout=20000)
    window.player.stop()  # closes the stream, so ALSA writes out its last period


def sound_only(samples: np.ndarray) -> np.ndarray:
    return samples[samples != 0]  # without the device's priming silence and dry-buffer gaps


def test_the_model_loads_in_the_background_with_progress(qtbot, tiny_model, monkeypatch):
    threads = []

    def recording_loader(*args):
        threads.append(threading.current_thread())
        return load(*args)

    load = main_window_module.load_synthesizer
    monkeypatch.setattr(main_window_module, "load_synthesizer", recording_loader)
    window = open_window(qtbot, tiny_model)
    assert window.status.text().startswith("Loading the speech model")
    assert not window.speak_button.isEnabled() and window.speak_button.toolTip() == LOADING_MESSAGE
    assert window.play_voice_button.isEnabled()  # the rest of the window works meanwhile
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    assert threads and threads[0] is not threading.main_thread()
    assert window.status.text() == "Ready: the speech model runs on cpu (patch sizes 2, 4)."
    assert window.speak_button.isEnabled() and "Ctrl+Enter" in window.speak_button.toolTip()


def test_the_model_folder_can_come_from_the_environment(qtbot, tiny_model, monkeypatch):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tiny_model))
    window = open_window(qtbot, None)
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    assert window.synth.folder.folder == tiny_model


def test_speak_streams_patches_to_the_device_while_generating(qtbot, window, alsa_tap):
    first_push = []
    push = window.player.push

    def watching_push(chunk, session=None):
        if not first_push:  # is the model still generating when the first patch is handed over?
            first_push.append(window.synth.last_stats.wall_seconds == 0.0)
        push(chunk, session)

    window.player.push = watching_push
    speak_and_wait(qtbot, window)
    outcome = window.last_outcome
    assert first_push == [True]  # sound started before generation ended
    assert outcome.problem is None and not outcome.stopped and len(window.last_audio) > 4000
    np.testing.assert_allclose(sound_only(alsa_tap.played()), sound_only(window.last_audio), atol=1e-6)
    status = window.status.text()
    for part in ("Spoke", "first sound", "after the click", "time to first audio", "real-time factor",
                 "patch size 4", "cpu"):
        assert part in status
    assert not window.status_is_error
    assert 0 < outcome.first_sound_seconds < 10 and outcome.stats.first_audio_seconds < 10
    assert window.play_again_button.isEnabled() and window.export_button.isEnabled()
    print(f"tiny model on CPU: click to first sound {outcome.first_sound_seconds:.3f} s, time to first audio "
          f"{outcome.stats.first_audio_seconds:.3f} s, RTF {outcome.stats.real_time_factor:.2f}")


def test_stop_halts_generation_and_sound_within_a_patch(qtbot, window, alsa_tap):
    window.editor.setPlainText(LONG)  # far more speech than is made before Stop below
    window.speak()
    qtbot.waitUntil(lambda: window.player.played_samples > 1600, timeout=20000)
    assert window.stop_button.isEnabled()
    started = time.perf_counter()
    window.stop()
    stop_seconds = time.perf_counter() - started
    at_stop = window.player.played_samples
    time.sleep(0.3)
    assert window.player.played_samples == at_stop and not window.player.is_playing
    assert not window._sound_jobs.busy and stop_seconds < 1.0  # one tiny-model patch takes ~0.05 s
    stats = window.last_outcome.stats
    assert window.last_outcome.stopped and stats.sentences < 30
    assert window.status.text().startswith("Stopped after") and not window.stop_button.isEnabled()
    assert len(window.last_audio) > 0 and window.export_button.isEnabled()  # what was made is kept


def test_a_voice_is_tuned_before_its_first_speech_with_progress_and_stop_cancels_that(qtbot, tiny_model, alsa_tap):
    """With voice tuning on, the first Speak in a voice says how far the tuning has got; Stop ends it at once with
    nothing made. The next Speak tunes it and speaks; once tuned, a voice speaks without tuning again."""
    save_settings(Settings(device="cpu", seed=7, voice_tuning=100))
    window = open_window(qtbot, tiny_model)
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    window.editor.setPlainText(SHORT)
    window.speak()
    qtbot.waitUntil(lambda: "Learning this voice" in window.status.text(), timeout=20000)
    window.stop()
    qtbot.waitUntil(lambda: not window._speaking, timeout=5000)
    assert window.last_outcome.stopped and window.last_outcome.stats is None
    kept = len(list(paths.voice_tuning_dir().glob("*.npz")))
    seen = []
    window._relay.voice_tuning.connect(lambda number, done: seen.append(done))
    speak_and_wait(qtbot, window, timeout=120000)  # 100 tuning steps: ~10 s on 2 cores
    assert seen and seen[-1] == 1.0 and window.status.text().startswith("Spoke")
    assert len(list(paths.voice_tuning_dir().glob("*.npz"))) == kept + 1
    seen.clear()
    speak_and_wait(qtbot, window)
    assert not seen and window.status.text().startswith("Spoke")
    window.close()


def test_a_new_speak_replaces_the_one_playing(qtbot, window, alsa_tap):
    window.editor.setPlainText(LONG)
    window.speak()
    qtbot.waitUntil(lambda: window.player.played_samples > 1600, timeout=20000)
    speak_and_wait(qtbot, window, SHORT)
    assert not window.last_outcome.stopped and window.last_outcome.stats.sentences == 1
    np.testing.assert_allclose(sound_only(alsa_tap.played()), sound_only(window.last_audio), atol=1e-6)


def test_closing_the_window_while_speaking_stops_everything_at_once(qtbot, window, alsa_tap):
    window.editor.setPlainText(LONG)
    window.speak()
    qtbot.waitUntil(lambda: window.player.played_samples > 1600, timeout=20000)
    started = time.perf_counter()
    window.close()
    assert time.perf_counter() - started < 1.0
    assert not window._sound_jobs.busy and not window.player.is_playing and window.synth.last_stats.cancelled


def test_speakers_unplugged_while_speaking_are_named_and_the_whole_speech_is_still_made(
        qtbot, window, unpluggable_speakers):
    window.editor.setPlainText(LONG[:LONG.index(" This is sentence number 6")])
    window.speak()
    qtbot.waitUntil(lambda: not window._speaking, timeout=20000)
    assert unpluggable_speakers.is_set() and window.status_is_error and DEVICE_LOST in window.status.text()
    outcome = window.last_outcome
    assert not outcome.stopped and outcome.stats.sentences == 5 and window.export_button.isEnabled()
    assert not window.player.is_playing and not window.stop_button.isEnabled()


def test_a_gpu_running_out_of_memory_while_speaking_is_said_in_the_status_line(qtbot, window, alsa_tap):
    hook = raise_cuda_out_of_memory({2})
    try:
        speak_and_wait(qtbot, window)
    finally:
        hook.remove()
    assert window.status.text().startswith("Spoke") and GPU_FULL in window.status.text()
    assert window.synth.device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_gpu_setting_says_so_and_speak_says_why(qtbot, tiny_model):
    save_settings(Settings(device="cuda"))
    window = open_window(qtbot, tiny_model)
    qtbot.waitUntil(lambda: not window.model_loading, timeout=20000)
    assert window.synth is None and window.status_is_error and "no usable NVIDIA GPU" in window.status.text()
    assert "no usable NVIDIA GPU" in window.speak_button.toolTip() and window.import_button.isEnabled()


def test_play_again_and_export_use_the_speech_not_the_sample(qtbot, window, alsa_tap, tmp_path):
    speak_and_wait(qtbot, window)
    speech = window.last_audio.copy()
    with qtbot.waitSignal(window.player.finished, timeout=10000):
        window.play_voice_sample()
    qtbot.waitUntil(lambda: not window._sound_jobs.busy, timeout=5000)
    with qtbot.waitSignal(window.player.finished, timeout=10000):
        window.play_again_button.click()
    qtbot.waitUntil(lambda: not window._sound_jobs.busy, timeout=5000)
    window.player.stop()
    np.testing.assert_allclose(sound_only(alsa_tap.played()), sound_only(speech), atol=1e-6)
    for name in ("speech.wav", "speech.flac"):
        audio, rate = sf.read(window.export_audio(tmp_path / name), dtype="float32")
        assert rate == 16000 and len(audio) == len(speech)
        np.testing.assert_allclose(audio, np.clip(speech, -1, 1), atol=1.5 / 32768)


def test_a_patch_size_without_an_adapter_is_named(qtbot, window):
    window.apply_settings(Settings(device="cpu", patch_size=8))
    assert "no TLDR adapter for patch size 8 (it has 2, 4)" in window.settings_note()
    window.editor.setPlainText(SHORT)
    window.speak()
    assert window.status_is_error and "patch size 8 (it has 2, 4)" in window.status.text()
    assert not window._sound_jobs.busy


def test_speculative_decoding_speaks_and_the_status_line_shows_its_figures(qtbot, tiny_model_with_draft, alsa_tap):
    window = open_window(qtbot, tiny_model_with_draft)
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    assert window.status.text() == ("Ready: the speech model runs on cpu (patch sizes 2, 4; speculative decoding "
                                    "available).")
    window.apply_settings(Settings(device="cpu", seed=7, decoding_mode="ssd"))
    assert window.settings_note() is None and window.engine.text() == "speculative (SSD) · cpu"
    speak_and_wait(qtbot, window)
    stats = window.last_outcome.stats
    assert stats.mode == "ssd" and stats.drafted > 0 and len(window.last_audio) > 4000
    status = window.status.text()
    assert "speculative (SSD)" in status and "of drafted tokens kept" in status and "tokens per model step" in status
    window.apply_settings(Settings(device="cpu", seed=7, decoding_mode="tldr-ssd", patch_size=4))
    assert window.settings_note() is None and window.engine.text() == "TLDR, patch size 4 + speculation · cpu"
    speak_and_wait(qtbot, window)
    stats = window.last_outcome.stats
    assert stats.mode == "tldr-ssd" and stats.patch_size == 4 and stats.drafted > 0
    assert "patch size 4 + speculation" in window.status.text() and "of drafted tokens kept" in window.status.text()
    window.close()


def test_speculative_decoding_with_a_model_without_a_draft_is_named(qtbot, window):
    window.apply_settings(Settings(device="cpu", decoding_mode="tldr-ssd"))
    assert "no draft model" in window.settings_note()
    window.apply_settings(Settings(device="cpu", decoding_mode="ssd"))
    assert "no draft model" in window.settings_note()
    window.editor.setPlainText(SHORT)
    window.speak()
    assert window.status_is_error and "no draft model" in window.status.text() and not window._sound_jobs.busy


def test_without_a_sound_card_the_speech_is_still_made_and_exported(qtbot, window, no_sound_card, tmp_path):
    window.apply_settings(Settings(device="cpu", decoding_mode="baseline"))
    window.editor.setPlainText(SHORT)
    window.speak()
    qtbot.waitUntil(lambda: not window._speaking, timeout=20000)
    assert window.status_is_error and "No audio output device" in window.status.text()
    assert "token by token" in window.status.text() and window.last_outcome.stats.patch_size == 1
    assert window.export_button.isEnabled()
    written = window.export_audio(tmp_path / "speech.flac")
    assert sf.info(written).format == "FLAC" and sf.info(written).frames == len(window.last_audio) > 0


def test_a_damaged_model_gives_a_message_not_a_crash(qtbot, tiny_model, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model, damaged)
    data = bytearray((damaged / "backbone.pt").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (damaged / "backbone.pt").write_bytes(bytes(data))
    window = open_window(qtbot, damaged)
    qtbot.waitUntil(lambda: not window.model_loading, timeout=20000)
    assert window.synth is None and window.status_is_error and "damaged" in window.status.text()
    assert not window.speak_button.isEnabled() and "damaged" in window.speak_button.toolTip()
    window.speak()  # Ctrl+Enter still says why
    assert "damaged" in window.status.text()
    assert window.play_voice_button.isEnabled() and window.import_button.isEnabled()


def test_changing_the_device_reloads_the_model(qtbot, window):
    old = window.synth
    window.apply_settings(Settings(device="auto", seed=7))
    assert window.synth is None and not window.speak_button.isEnabled()
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    assert window.synth is not old and window.speak_button.isEnabled()


def test_empty_text_gives_a_message(qtbot, window):
    window.editor.setPlainText("   ")
    window.speak()
    qtbot.waitUntil(lambda: not window._speaking, timeout=20000)
    assert window.status_is_error and "Something unexpected" not in window.status.text()
    assert window.speak_button.isEnabled() and not window.export_button.isEnabled()


def test_a_voice_keeps_its_prompt_tokens_across_a_restart(qtbot, tiny_model, monkeypatch):
    window = open_window(qtbot, tiny_model)
    qtbot.waitUntil(lambda: window.synth is not None, timeout=20000)
    speak_and_wait(qtbot, window)
    saved = VoiceLibrary().list()[0]
    assert saved.codec == window.synth.codec_sha256 and len(saved.prompt_tokens) in (24, 48, 72)
    window.close()

    restarted = open_window(qtbot, tiny_model)  # a new session: nothing cached in memory
    qtbot.waitUntil(lambda: restarted.synth is not None, timeout=20000)
    prepared_again = []
    monkeypatch.setattr(restarted.synth, "prepare_voice", lambda *clip: prepared_again.append(clip))
    speak_and_wait(qtbot, restarted)
    assert prepared_again == [] and len(restarted.last_audio) > 0
    restarted.close()
