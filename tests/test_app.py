"""The main window: voices, playback through a real OutputStream, export, settings and shortcuts.

Sound goes to the virtual ALSA device of tests/alsa_tap.py, so what the window plays is checked sample by
sample. Dialogs are thin; the window's methods they call are what these tests drive.
"""

import numpy as np
import pytest
import soundfile as sf
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication

from app.main_window import NO_MODEL_MESSAGE, MainWindow
from faults import full_disk, read_only
from app.settings_dialog import SettingsDialog
from app.speech import MODEL_DIR_ENV
from tldr_core import paths, text
from tldr_core.settings import Settings, load_settings, save_settings, settings_path
from tldr_core.voices import VoiceLibrary


@pytest.fixture(autouse=True)
def no_model(monkeypatch, tmp_path):
    """These tests run without a speech model (tests/test_app_speak.py has one), shipped or not."""
    monkeypatch.setattr(paths, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture
def window(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    yield window
    window.close()


def import_voice(qtbot, window, path, name):
    window.import_voice(path, name)
    qtbot.waitUntil(lambda: not window._voice_jobs.busy, timeout=20000)


def played_sound(tap) -> np.ndarray:
    """What reached the device, without the silence the device adds (see tests/test_app_audio.py)."""
    played = tap.played()
    return played[played != 0]


def test_window_opens_and_counts_characters(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.editor.setPlainText("Hello there.")
    assert window.char_count.text().startswith("12 / ")


def test_character_count_warns_over_the_limit(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    window.editor.setPlainText("a" * (text.MAX_TEXT_CHARS + 1))
    assert "b00020" in window.char_count.styleSheet()


def test_speak_is_disabled_with_a_reason_when_no_model_is_installed(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.speak_button.isEnabled()
    assert window.status.text() == NO_MODEL_MESSAGE
    assert window.speak_button.toolTip() == NO_MODEL_MESSAGE


def test_an_imported_voice_appears_in_the_picker_and_survives_a_restart(qtbot, window, speech_wav):
    assert window.voice_picker.currentData() is None and not window.play_voice_button.isEnabled()
    import_voice(qtbot, window, speech_wav, "Anna")
    assert window.voice_picker.currentText() == "Anna"
    assert "'Anna' is saved" in window.status.text() and not window.status_is_error
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.voice_picker.currentText() == "Anna"  # the last voice picked is picked again


def test_starter_voices_are_offered_while_the_library_is_empty(qtbot, window):
    assert not window.starter_button.isHidden()
    window.starter_button.click()
    qtbot.waitUntil(lambda: not window._voice_jobs.busy, timeout=20000)
    names = sorted(v.name for v in VoiceLibrary().list())
    assert names == sorted(p.stem for p in (paths.RESOURCES_DIR / "voices").glob("*.wav")) and len(names) >= 2
    assert window.current_voice() is not None and window.starter_button.isHidden()
    assert window.status.text().startswith(f"Added {len(names)} starter voices")


def test_an_imported_clip_says_what_was_noticed_about_it(qtbot, window, speech_wav, tmp_path):
    """A lightly clipped file (0.1 % of its samples flat at full scale) is used, and the status line says so, as
    `tldr-voice audio check` does."""
    samples, rate = sf.read(speech_wav, dtype="float32")
    hot = samples / np.abs(samples).max()
    loud = np.flatnonzero(np.abs(hot) > 0.3)
    for i in loud[np.linspace(0, len(loud) - 5, int(0.001 * len(hot) / 4)).astype(int)]:
        hot[i:i + 4] = np.sign(hot[i])
    sf.write(tmp_path / "hot.wav", hot, rate, subtype="FLOAT")
    import_voice(qtbot, window, tmp_path / "hot.wav", "Hot")
    status = window.status.text()
    assert status.startswith("The voice 'Hot' is saved") and "lightly clipped" in status and not window.status_is_error


def test_a_voice_that_cannot_be_saved_says_why_and_leaves_nothing_behind(qtbot, window, speech_wav):
    with read_only(window.library.root):
        import_voice(qtbot, window, speech_wav, "Anna")
    assert window.status_is_error and "could not be saved" in window.status.text()
    assert list(window.library.root.iterdir()) == [] and window.current_voice() is None


def test_the_window_opens_on_a_read_only_data_folder_and_says_voices_cannot_be_saved(qtbot, speech_wav):
    with read_only(paths.user_data_dir()):
        window = MainWindow()
        qtbot.addWidget(window)
        assert window.status_is_error and "no voice can be saved" in window.status.text()
        import_voice(qtbot, window, speech_wav, "Anna")
        assert window.status_is_error and "could not be saved" in window.status.text()
    assert window.current_voice() is None and not (paths.user_data_dir() / "voices").exists()


def test_a_bad_file_gives_a_message_not_a_traceback(qtbot, window, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    import_voice(qtbot, window, bad, "Bad")
    assert window.status_is_error and "could not be read as audio" in window.status.text()
    assert window.import_button.isEnabled()


def test_rename_and_delete_from_the_window(qtbot, window, speech_wav):
    import_voice(qtbot, window, speech_wav, "Anna")
    window.rename_voice("Bert")
    assert window.voice_picker.currentText() == "Bert" and [v.name for v in VoiceLibrary().list()] == ["Bert"]
    window.rename_voice("   ")
    assert window.status_is_error and "needs a name" in window.status.text()
    window.delete_voice()
    assert VoiceLibrary().list() == [] and window.current_voice() is None
    assert not window.delete_button.isEnabled()


def test_a_damaged_voice_is_reported_in_the_status_line(qtbot, speech_wav):
    voice = VoiceLibrary().create_from_file("Anna", speech_wav)
    (voice.folder / "embedding.npy").unlink()
    window = MainWindow()
    qtbot.addWidget(window)
    assert "damaged" in window.status.text() and window.current_voice() is None


def test_the_voice_sample_plays_through_the_device(qtbot, window, alsa_tap, speech_wav):
    import_voice(qtbot, window, speech_wav, "Anna")
    clip = window.current_voice().clip()
    with qtbot.waitSignal(window.player.finished, timeout=10000):
        window.play_voice_sample()
    qtbot.waitUntil(lambda: not window._sound_jobs.busy, timeout=5000)
    window.player.stop()
    np.testing.assert_allclose(played_sound(alsa_tap), clip[clip != 0], atol=1e-6)
    assert window.status.text() == "Finished playing."
    assert not window.export_button.isEnabled() and not window.play_again_button.isEnabled()  # speech only


def test_export_writes_wav_or_flac_by_the_extension(qtbot, window, tmp_path):
    speech = np.sin(np.arange(8000) / 10).astype(np.float32) * 0.5  # as if spoken (test_app_speak.py speaks)
    window.last_audio = speech
    for name in ("speech.wav", "speech.flac"):
        written = window.export_audio(tmp_path / name)
        audio, rate = sf.read(written, dtype="float32")
        assert written.name == name and rate == 16000 and len(audio) == len(speech)
        np.testing.assert_allclose(audio, speech, atol=1.5 / 32768)  # 16-bit PCM
    assert sf.info(tmp_path / "speech.flac").format == "FLAC"
    assert window.export_audio(tmp_path / "no-extension").name == "no-extension.wav"


def test_export_on_a_full_disk_or_to_a_read_only_folder_says_so_and_keeps_the_old_file(qtbot, window, tmp_path):
    window.last_audio = np.sin(np.arange(16000) / 10).astype(np.float32) * 0.5
    exports = tmp_path / "exports"
    old = window.export_audio(exports / "speech.wav").read_bytes()
    window.last_audio = window.last_audio[:8000]
    with full_disk(room=1000):
        assert window.export_audio(exports / "speech.wav") is None
    assert window.status_is_error and "could not be saved (File too large)" in window.status.text()
    with read_only(exports):
        assert window.export_audio(exports / "speech.flac") is None
    assert window.status_is_error and "could not be saved" in window.status.text()
    assert [p.name for p in exports.iterdir()] == ["speech.wav"] and (exports / "speech.wav").read_bytes() == old


def test_without_speakers_playing_says_why(qtbot, window, no_sound_card, speech_wav):
    import_voice(qtbot, window, speech_wav, "Anna")
    window.play_voice_sample()
    qtbot.waitUntil(lambda: not window._sound_jobs.busy, timeout=5000)
    assert window.status_is_error and "No audio output device" in window.status.text()


def test_esc_stops_an_endless_sound_and_its_producer(qtbot, window, alsa_tap):
    def endless():  # a producer that never ends by itself, like a model that is not told to stop
        while True:
            yield np.full(320, 0.25, np.float32)

    window.play_chunks(endless(), "Playing…")
    qtbot.waitUntil(lambda: window.player.played_samples > 16000, timeout=5000)
    assert window.stop_button.isEnabled()
    window.activateWindow()
    qtbot.keyClick(window.editor, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not window._sound_jobs.busy and not window.player.is_playing, timeout=2000)
    assert not window.stop_button.isEnabled()


def test_shortcuts_speak_and_stop(window):
    assert [s.key() for s in window.speak_shortcuts] == [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")]
    assert window.stop_shortcut.key() == QKeySequence("Esc")
    assert "Esc" in window.stop_button.toolTip()


def test_ctrl_enter_without_a_model_says_why(qtbot, window):
    window.activateWindow()
    qtbot.keyClick(window.editor, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert window.status.text() == NO_MODEL_MESSAGE and window.status_is_error


def test_the_settings_dialog_saves_what_it_shows(qtbot, window):
    def choose_and_save():
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, SettingsDialog)
        dialog.patch_size.setCurrentIndex(dialog.patch_size.findData(8))
        dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
        dialog.temperature.setValue(0.7)
        dialog.voice_match.setCurrentIndex(dialog.voice_match.findData(0))
        dialog.voice_tuning.setCurrentIndex(dialog.voice_tuning.findData(100))
        dialog.fixed_seed.setChecked(True)
        dialog.seed.setValue(99)
        dialog.accept()

    QTimer.singleShot(0, choose_and_save)
    window.settings_button.click()
    expected = Settings(patch_size=8, device="cpu", temperature=0.7, voice_match=0, voice_tuning=100, seed=99)
    assert load_settings() == (expected, []) and window.settings == expected
    assert window.library.device == "cpu" and window.status.text() == "Settings saved."
    assert window.engine.text() == "TLDR, patch size 8 · cpu"


def test_the_settings_dialog_offers_only_decoding_modes_that_exist(qtbot):
    """TLDR patches, token by token, speculative (SSD) or TLDR patches + speculation; the patch size applies to
    the two TLDR modes alone, so it is off for the other two."""
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    modes = [dialog.decoding_mode.itemData(row) for row in range(dialog.decoding_mode.count())]
    assert modes == ["tldr", "baseline", "ssd", "tldr-ssd"] and dialog.patch_size.isEnabled()
    dialog.decoding_mode.setCurrentIndex(dialog.decoding_mode.findData("baseline"))
    assert not dialog.patch_size.isEnabled() and dialog.settings().decoding_mode == "baseline"
    dialog.decoding_mode.setCurrentIndex(dialog.decoding_mode.findData("ssd"))
    assert not dialog.patch_size.isEnabled() and dialog.settings().decoding_mode == "ssd"
    assert dialog.decoding_mode.currentText() == "Speculative (SSD)"
    dialog.decoding_mode.setCurrentIndex(dialog.decoding_mode.findData("tldr-ssd"))
    assert dialog.patch_size.isEnabled() and dialog.settings().decoding_mode == "tldr-ssd"


def test_the_settings_dialog_greys_out_speculative_decoding_for_a_model_without_a_draft(qtbot):
    combos = {}
    for has_draft in (False, True, None):  # None: no model loaded, nothing is greyed out
        dialog = SettingsDialog(Settings(), patch_sizes=[2, 4], has_draft=has_draft)
        qtbot.addWidget(dialog)
        combo = dialog.decoding_mode
        rows = [combo.findData("ssd"), combo.findData("tldr-ssd")]
        combos[has_draft] = [(combo.model().item(row).isEnabled(), combo.itemText(row),
                              combo.itemData(row, Qt.ItemDataRole.ToolTipRole)) for row in rows]
    for enabled, label, tip in combos[False]:
        assert enabled is False and label.endswith("no draft in this model") and "tldr-voice train draft" in tip
    assert combos[True] == combos[None] == [(True, "Speculative (SSD)", None),
                                            (True, "TLDR patches + speculation", None)]


def test_the_settings_dialog_lists_audio_devices_and_keeps_an_unplugged_one(qtbot, alsa_tap):
    dialog = SettingsDialog(Settings(output_device="USB Headset"))
    qtbot.addWidget(dialog)
    outputs = [dialog.output_device.itemText(i) for i in range(dialog.output_device.count())]
    assert outputs[0] == "System default" and "default" in outputs and "USB Headset (not connected)" in outputs
    assert dialog.settings().output_device == "USB Headset"
    assert dialog.settings().input_device is None


def test_the_settings_dialog_greys_out_patch_sizes_the_model_lacks(qtbot):
    dialog = SettingsDialog(Settings(), patch_sizes=[2, 4])
    qtbot.addWidget(dialog)
    combo, items = dialog.patch_size, dialog.patch_size.model()
    enabled = {combo.itemData(row): items.item(row).isEnabled() for row in range(combo.count())}
    assert enabled == {2: True, 4: True, 6: False, 8: False}
    assert combo.itemText(combo.findData(8)).endswith("not in this model")
    no_model = SettingsDialog(Settings())  # no model loaded: nothing is greyed out
    qtbot.addWidget(no_model)
    assert all(no_model.patch_size.model().item(row).isEnabled() for row in range(no_model.patch_size.count()))


def test_a_corrupt_settings_file_is_survived_with_a_notice(qtbot):
    save_settings(Settings(patch_size=2))
    settings_path().write_text("{{{", encoding="utf-8")
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.settings == Settings() and window.status_is_error
    assert "could not be read" in window.status.text()


def test_the_app_icon_loads(qtbot):
    """The icon the app gives its windows (also the desktop entry's) is a picture Qt can read, not a blank default."""
    from PySide6.QtGui import QIcon

    from app.main_window import APP_ICON

    icon = QIcon(str(APP_ICON))
    assert not icon.isNull() and icon.actualSize(QSize(256, 256)).width() == 256
