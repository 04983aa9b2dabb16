"""The Record dialog records from a real InputStream (the virtual microphone of tests/alsa_tap.py), checks
the recording at once and refuses a bad one with the reason, before anything is saved."""

import numpy as np
import pytest

from app.audio_io import Player
from app.main_window import MainWindow
from app.record_dialog import RecordDialog
from tldr_core.audio import read_audio, to_model_rate
from tldr_core.voices import VoiceLibrary


@pytest.fixture
def speech(speech_wav):
    return to_model_rate(*read_audio(speech_wav))


def record(qtbot, seconds: float) -> RecordDialog:
    """Open the dialog and record until it stops by itself at `seconds`, then wait for the check."""
    dialog = RecordDialog(VoiceLibrary(), Player(), countdown_seconds=0, max_seconds=seconds)
    qtbot.addWidget(dialog)
    dialog.record_button.click()
    qtbot.waitUntil(lambda: dialog.record_button.isEnabled(), timeout=10000)
    return dialog


def test_a_good_recording_can_be_played_back_named_and_saved(qtbot, alsa_tap, speech):
    alsa_tap.speak_into_microphone(0.5 * speech)
    dialog = record(qtbot, seconds=len(speech) / 16000)
    assert dialog.sample is not None and "of speech" in dialog.message.text()
    assert not dialog.save_button.isEnabled()  # no name yet
    with qtbot.waitSignal(dialog.player.finished, timeout=5000):
        dialog.play_button.click()
    dialog.player.stop()
    played = alsa_tap.played()
    np.testing.assert_allclose(played[played != 0], dialog.sample.samples[dialog.sample.samples != 0], atol=1e-6)

    dialog.name_edit.setText("My voice")
    dialog.save_button.click()
    assert dialog.result() == RecordDialog.DialogCode.Accepted and dialog.name == "My voice"

    window = MainWindow()
    qtbot.addWidget(window)
    window.save_recorded_voice(dialog.name, dialog.sample)
    qtbot.waitUntil(lambda: window.voice_picker.currentText() == "My voice", timeout=10000)


@pytest.mark.parametrize("make, reason", [
    (lambda speech: np.zeros(16000 * 3, np.float32), "No speech was found"),
    (lambda speech: np.clip(speech * 50, -1, 1), "clipped"),
    (lambda speech: speech[:16000], "at least 2 s is needed"),
])
def test_a_bad_recording_is_refused_with_the_reason(qtbot, alsa_tap, speech, make, reason):
    alsa_tap.speak_into_microphone(make(speech))
    dialog = record(qtbot, seconds=len(make(speech)) / 16000)
    assert reason in dialog.message.text() and "b00020" in dialog.message.styleSheet()
    assert dialog.sample is None and not dialog.play_button.isEnabled()
    assert dialog.record_button.text() == "Record again"
    dialog.name_edit.setText("Anything")
    assert not dialog.save_button.isEnabled()


def test_a_taken_name_is_refused_in_the_dialog(qtbot, alsa_tap, speech, speech_wav):
    VoiceLibrary().create_from_file("Anna", speech_wav)
    alsa_tap.speak_into_microphone(0.5 * speech)
    dialog = record(qtbot, seconds=len(speech) / 16000)
    dialog.name_edit.setText("anna")
    dialog.save_button.click()
    assert dialog.result() != RecordDialog.DialogCode.Accepted and "already a voice" in dialog.message.text()


def test_the_meter_follows_the_level_while_recording(qtbot, alsa_tap, speech):
    alsa_tap.speak_into_microphone(np.full(16000 * 60, 0.1, np.float32))  # -20 dBFS
    dialog = RecordDialog(VoiceLibrary(), Player(), countdown_seconds=0, max_seconds=60)
    qtbot.addWidget(dialog)
    alsa_tap.pace_like_a_real_microphone(dialog.recorder)
    dialog.record_button.click()
    qtbot.waitUntil(lambda: dialog.meter.value() == -20, timeout=5000)
    assert dialog.stop_button.isEnabled() and " s / 60 s" in dialog.clock.text()
    dialog.stop_button.click()
    qtbot.waitUntil(lambda: dialog.record_button.isEnabled(), timeout=10000)


def test_no_microphone_is_explained_in_the_dialog(qtbot, no_sound_card):
    dialog = RecordDialog(VoiceLibrary(), Player(), countdown_seconds=0)
    qtbot.addWidget(dialog)
    dialog.record_button.click()
    assert "No microphone was found" in dialog.message.text() and dialog.record_button.isEnabled()


def test_the_countdown_comes_before_recording(qtbot, alsa_tap):
    dialog = RecordDialog(VoiceLibrary(), Player(), countdown_seconds=1)
    qtbot.addWidget(dialog)
    alsa_tap.pace_like_a_real_microphone(dialog.recorder)
    dialog.record_button.click()
    assert dialog.clock.text() == "Recording in 1…" and not dialog.recorder.is_recording
    qtbot.waitUntil(lambda: dialog.stop_button.isEnabled(), timeout=3000)
    dialog.reject()
    assert not dialog.recorder.is_recording
