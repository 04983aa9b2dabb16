"""The main window: pick or make a voice, type text, Speak, hear it, export it.

Until a trained speech model is installed the window says so and keeps Speak disabled, so a person is
never left clicking a button that cannot work; everything else (voices, playback, export, settings) works
already. Sound goes out through one Player fed chunk by chunk from a background job: today the chunks are
a voice's sample, later they are the model's patches, so Stop and export already behave as they will then.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                               QMainWindow, QMessageBox, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from app.audio_io import Player
from app.record_dialog import RecordDialog
from app.settings_dialog import SettingsDialog
from app.worker import Background, stream_to_player
from tldr_core import paths, text
from tldr_core.audio import SAMPLE_RATE, VoiceSample, write_wav
from tldr_core.errors import TldrError
from tldr_core.settings import Settings, load_settings, save_settings
from tldr_core.voices import Voice, VoiceLibrary

NO_MODEL_MESSAGE = ("No speech model is installed yet, so Speak is unavailable. "
                    "The default model will ship in resources/default_model.")
AUDIO_FILES = "Audio files (*.wav *.flac *.ogg *.mp3 *.m4a *.aiff *.aif);;All files (*)"
EXPORT_FORMATS = {"WAV audio (*.wav)": ".wav", "FLAC audio (*.flac)": ".flac"}
CHUNK_SECONDS = 0.2  # a voice sample is played in chunks of this size, as model patches will be


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("TLDR Voice")
        self.resize(760, 460)
        self.settings, notices = load_settings()
        self.library = VoiceLibrary(device=self.settings.device)
        self.player = Player(self.settings.output_device)
        self.last_audio: np.ndarray | None = None  # what Export… writes: the latest sound played
        self._voice_jobs = Background(self)  # embedding new voices
        self._sound_jobs = Background(self)  # producing sound chunk by chunk

        self.voice_picker = QComboBox()
        self.voice_picker.setToolTip("The voice to speak with")
        self.voice_picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.import_button = self._button("Import…", "Make a voice from an audio file of someone speaking")
        self.record_button = self._button("Record…", "Record a voice with the microphone")
        self.play_voice_button = self._button("Play sample", "Listen to the chosen voice's sample")
        self.rename_button = self._button("Rename…", "Give the chosen voice another name")
        self.delete_button = self._button("Delete", "Delete the chosen voice from this computer")
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("Type what the voice should say…")
        self.char_count = QLabel()
        self.speak_button = self._button("Speak", "Speak the text in the chosen voice (Ctrl+Enter)")
        self.stop_button = self._button("Stop", "Stop speaking (Esc)")
        self.export_button = self._button("Export…", "Save the last audio as a WAV or FLAC file")
        self.settings_button = self._button("Settings…", "Patch size, decoding, devices, temperature, seed")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.engine = QLabel()  # the settings that shape speed, always in view
        self.engine.setToolTip("Change these in Settings…")

        voice_row = QHBoxLayout()
        voice_row.addWidget(QLabel("Voice:"))
        voice_row.addWidget(self.voice_picker, 1)
        for button in (self.play_voice_button, self.import_button, self.record_button, self.rename_button,
                       self.delete_button):
            voice_row.addWidget(button)
        controls = QHBoxLayout()
        controls.addWidget(self.char_count)
        controls.addStretch(1)
        for button in (self.settings_button, self.export_button, self.stop_button, self.speak_button):
            controls.addWidget(button)
        layout = QVBoxLayout()
        layout.addLayout(voice_row)
        layout.addWidget(self.editor, 1)
        layout.addLayout(controls)
        status_row = QHBoxLayout()
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.engine, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(status_row)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)

        self.speak_shortcuts = [QShortcut(QKeySequence(keys), self, self.speak)
                                for keys in ("Ctrl+Return", "Ctrl+Enter")]  # Enter: the keypad's key
        self.stop_shortcut = QShortcut(QKeySequence("Esc"), self, self.stop)
        self.import_button.clicked.connect(self._ask_import)
        self.record_button.clicked.connect(self._ask_record)
        self.play_voice_button.clicked.connect(self.play_voice_sample)
        self.rename_button.clicked.connect(self._ask_rename)
        self.delete_button.clicked.connect(self._ask_delete)
        self.speak_button.clicked.connect(self.speak)
        self.stop_button.clicked.connect(self.stop)
        self.export_button.clicked.connect(self._ask_export)
        self.settings_button.clicked.connect(self._ask_settings)
        self.voice_picker.currentIndexChanged.connect(self._voice_picked)
        self.player.finished.connect(self._sound_ended)
        self.editor.textChanged.connect(self._update_char_count)

        self.model_ready = paths.default_model_installed()
        self._show_engine()
        self._update_char_count()
        self.refresh_voices(select=self.settings.last_voice)
        self.show_status(" ".join([*notices, *self.library.notices]) or
                         ("Ready." if self.model_ready else NO_MODEL_MESSAGE), error=bool(notices))

    def _button(self, label: str, tip: str) -> QPushButton:
        button = QPushButton(label)
        button.setToolTip(tip)
        return button

    # ------------------------------------------------------------------------------------------- state

    def show_status(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
        self.status_is_error = error

    def current_voice(self) -> Voice | None:
        return self.voice_picker.currentData()

    def refresh_voices(self, select: str | None = None) -> None:
        """Reload the picker from disk, keeping (or moving to) the voice with id `select`."""
        select = select or (self.current_voice().id if self.current_voice() else None)
        self.voice_picker.blockSignals(True)
        self.voice_picker.clear()
        for voice in self.library.list():
            self.voice_picker.addItem(voice.name, voice)
            if voice.id == select:
                self.voice_picker.setCurrentIndex(self.voice_picker.count() - 1)
        self.voice_picker.blockSignals(False)
        if self.voice_picker.count() == 0:
            self.voice_picker.addItem("No voices yet: import or record one")
        self._update_buttons()

    def _update_buttons(self) -> None:
        has_voice = self.current_voice() is not None
        embedding = self._voice_jobs.busy
        sounding = self._sound_jobs.busy or self.player.is_playing
        self.voice_picker.setEnabled(has_voice and not embedding)
        self.import_button.setEnabled(not embedding)
        self.record_button.setEnabled(not embedding)
        for button in (self.rename_button, self.delete_button):
            button.setEnabled(has_voice and not embedding)
        self.play_voice_button.setEnabled(has_voice)
        self.speak_button.setEnabled(self.model_ready and has_voice)
        self.speak_button.setToolTip("Speak the text in the chosen voice (Ctrl+Enter)" if self.model_ready
                                     else NO_MODEL_MESSAGE)
        self.stop_button.setEnabled(sounding)
        self.export_button.setEnabled(self.last_audio is not None and len(self.last_audio) > 0)

    def _show_engine(self) -> None:
        s = self.settings
        patch = "token by token" if s.patch_size == "baseline" else f"patch size {s.patch_size}"
        self.engine.setText(f"{patch} · {s.decoding_mode} · {s.device}")

    def _update_char_count(self) -> None:
        n = len(self.editor.toPlainText())
        over = n > text.MAX_TEXT_CHARS
        self.char_count.setText(f"{n:,} / {text.MAX_TEXT_CHARS:,} characters")
        self.char_count.setStyleSheet("color: #b00020;" if over else "")

    def _voice_picked(self) -> None:
        voice = self.current_voice()
        if voice is not None and voice.id != self.settings.last_voice:
            self.settings.last_voice = voice.id
            self._save_settings()
        self._update_buttons()

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings)
        except OSError as error:
            self.show_status(f"The settings could not be saved ({error}); they apply until the app closes.",
                             error=True)

    # ------------------------------------------------------------------------------------------ voices

    def import_voice(self, path: str | Path, name: str) -> None:
        """Make a voice from an audio file in the background; the picker shows it when it is ready."""
        self.show_status(f"Making the voice '{name}' from {Path(path).name}…")
        library = self.library
        self._voice_jobs.start(lambda: library.create_from_file(name, path), self._voice_saved,
                               self._job_failed)
        self._update_buttons()

    def save_recorded_voice(self, name: str, sample: VoiceSample) -> None:
        self.show_status(f"Saving the voice '{name}'…")
        library = self.library
        self._voice_jobs.start(lambda: library.create(name, sample), self._voice_saved, self._job_failed)
        self._update_buttons()

    def _voice_saved(self, voice: Voice) -> None:
        self.refresh_voices(select=voice.id)
        self.show_status(f"The voice '{voice.name}' is saved ({voice.speech_seconds:.1f} s of speech).")

    def _job_failed(self, message: str) -> None:
        self.show_status(message, error=True)
        self._update_buttons()

    def rename_voice(self, new_name: str) -> None:
        voice = self.current_voice()
        try:
            renamed = self.library.rename(voice.id, new_name)
        except TldrError as error:
            self.show_status(str(error), error=True)
            return
        self.refresh_voices(select=renamed.id)
        self.show_status(f"Renamed '{voice.name}' to '{renamed.name}'.")

    def delete_voice(self) -> None:
        voice = self.current_voice()
        try:
            self.library.delete(voice.id)
        except (TldrError, OSError) as error:
            self.show_status(f"The voice '{voice.name}' could not be deleted: {error}", error=True)
            return
        self.refresh_voices()
        self.show_status(f"Deleted the voice '{voice.name}'.")

    # ------------------------------------------------------------------------------------------- sound

    def play_voice_sample(self) -> None:
        voice = self.current_voice()
        try:
            clip = voice.clip()
        except (OSError, RuntimeError) as error:  # soundfile reports a damaged file as RuntimeError
            self.show_status(f"The sample of '{voice.name}' could not be read ({error}).", error=True)
            return
        step = int(CHUNK_SECONDS * SAMPLE_RATE)
        self.play_chunks((clip[i:i + step] for i in range(0, len(clip), step)), f"Playing the sample of "
                                                                                f"'{voice.name}'…")

    def play_chunks(self, chunks: Iterable[np.ndarray], message: str) -> None:
        """Play chunks produced in the background; a sound already playing is replaced, not mixed."""
        self.stop()
        session = self.player.session  # taken here, so a Stop before the job starts still counts
        self.show_status(message)
        self._sound_jobs.start(lambda: stream_to_player(chunks, self.player, session), self._sound_made,
                               self._job_failed)
        self._update_buttons()

    def _sound_made(self, result: tuple[np.ndarray, str | None]) -> None:
        audio, problem = result
        self.last_audio = audio
        if problem:
            self.show_status(problem, error=True)
        self._update_buttons()

    def _sound_ended(self) -> None:
        if not self.status_is_error:  # an error stays until the next action
            self.show_status("Finished playing.")
        self._update_buttons()

    def speak(self) -> None:
        """Speak needs the model; until it exists this says why instead of doing nothing."""
        if not self.model_ready:
            self.show_status(NO_MODEL_MESSAGE, error=True)

    def stop(self) -> None:
        """Stop the sound within one block and its producer within one chunk (Esc)."""
        self.player.stop()
        self._sound_jobs.wait()
        self._update_buttons()

    def export_audio(self, path: str | Path) -> Path:
        """Write the last audio as WAV or FLAC (by the extension; WAV when there is none)."""
        path = Path(path)
        if path.suffix.lower() not in EXPORT_FORMATS.values():
            path = path.with_name(path.name + ".wav")
        write_wav(path, self.last_audio, SAMPLE_RATE, subtype="PCM_16")
        self.show_status(f"Saved {len(self.last_audio) / SAMPLE_RATE:.1f} s of audio to {path}.")
        return path

    # ------------------------------------------------------------------------------------------ settings

    def apply_settings(self, settings: Settings) -> None:
        if settings.output_device != self.player.device:
            self.player.stop()
            self.player.device = settings.output_device
        if settings.device != self.library.device:  # the speaker encoder is loaded for one device
            self.library = VoiceLibrary(device=settings.device)
        self.settings = settings
        self._save_settings()
        self._show_engine()

    # ---------------------------------------------------- dialogs (thin: the work is in the methods above)

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a voice", "", AUDIO_FILES)
        if not path:
            return
        name, ok = QInputDialog.getText(self, "Name the voice", "Name:", text=Path(path).stem)
        if ok:
            self.import_voice(path, name)

    def _ask_record(self) -> None:
        self.stop()
        dialog = RecordDialog(self.library, self.player, self.settings.input_device, parent=self)
        if dialog.exec():
            self.save_recorded_voice(dialog.name, dialog.sample)

    def _ask_rename(self) -> None:
        voice = self.current_voice()
        name, ok = QInputDialog.getText(self, "Rename the voice", "New name:", text=voice.name)
        if ok:
            self.rename_voice(name)

    def _ask_delete(self) -> None:
        voice = self.current_voice()
        answer = QMessageBox.question(self, "Delete the voice", f"Delete the voice '{voice.name}' and its "
                                      f"recording from this computer? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_voice()

    def _ask_export(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self, "Export audio", "speech.wav", ";;".join(EXPORT_FORMATS))
        if not path:
            return
        if not Path(path).suffix:
            path += EXPORT_FORMATS.get(chosen, ".wav")
        try:
            self.export_audio(path)
        except (OSError, RuntimeError) as error:  # soundfile raises RuntimeError subclasses
            self.show_status(f"The audio could not be saved to {path}: {error}", error=True)

    def _ask_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.settings())
            self.show_status("Settings saved.")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.stop()
        self._voice_jobs.wait()
        self.player.stop()
        super().closeEvent(event)


def run() -> int:
    QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication(sys.argv)
    app.setApplicationName("TLDR Voice")
    window = MainWindow()
    window.show()
    return app.exec()
