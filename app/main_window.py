"""The main window: pick or make a voice, type text, Speak, hear it while it is generated, play it again, export it.

The speech model loads once, in a background job, with its progress in the status line; the UI thread never
runs model code. When there is no model, or it is damaged, the window says so and keeps Speak disabled with
the reason as its tooltip; everything else (voices, playback, settings) keeps working. Sound goes out through
one Player fed patch by patch from a background job (app/speech.py), so it starts with the first patch;
Stop ends the Player's session, which also cancels generation within one patch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QCloseEvent, QIcon, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                               QMainWindow, QMessageBox, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from app.audio_io import Player
from app.record_dialog import RecordDialog
from app.settings_dialog import SettingsDialog
from app.speech import (LOADING_MESSAGE, NO_MODEL_MESSAGE, SpeakOutcome, SpeakRequest, decoding_for, describe,
                        load_synthesizer, model_dir_to_use, nothing_to_load, speak)
from app.worker import Background, stream_to_player
from tldr_core import paths, text
from tldr_core.audio import SAMPLE_RATE, ReferenceClip, write_wav
from tldr_core.errors import TldrError
from tldr_core.settings import Settings, load_settings, save_settings
from tldr_core.synthesis import Synthesizer, VoicePrompt
from tldr_core.voices import SavedVoice, VoiceLibrary

AUDIO_FILES = "Audio files (*.wav *.flac *.ogg *.mp3 *.m4a *.aiff *.aif);;All files (*)"
EXPORT_FORMATS = {"WAV audio (*.wav)": ".wav", "FLAC audio (*.flac)": ".flac"}
CHUNK_SECONDS = 0.2  # recorded audio is played in chunks of this size, like model patches
SPEAK_TIP = "Speak the text in the chosen voice (Ctrl+Enter)"
STARTER_VOICES = paths.RESOURCES_DIR / "voices"  # reference clips offered while the library is empty
APP_ICON = paths.RESOURCES_DIR / "icons" / "tldr-voice.png"  # the windows' icon, and the desktop entry's


class _Relay(QObject):
    """Signals emitted by background jobs and delivered on the UI thread (queued)."""

    model_progress = Signal(int, str)  # load number, what the loader is doing
    first_sound = Signal(int, float)   # speak number, seconds from the click to the first chunk played
    voice_tuning = Signal(int, float)  # speak number, fraction of the voice's tuning done


class MainWindow(QMainWindow):
    def __init__(self, model_dir: str | Path | None = None) -> None:
        """model_dir: the speech model folder (else $TLDR_VOICE_MODEL_DIR, else resources/default_model)."""
        super().__init__()
        self.setWindowTitle("TLDR Voice")
        self.resize(760, 460)
        self.settings, notices = load_settings()
        self.library = VoiceLibrary(device=self.settings.device)
        self.player = Player(self.settings.output_device)
        self.last_audio: np.ndarray | None = None  # the latest speech: what Play again and Export… use
        self.last_outcome: SpeakOutcome | None = None  # its figures
        self.model_dir = model_dir_to_use(model_dir)
        self.synth: Synthesizer | None = None
        self.model_problem: str | None = None  # why there is no model (None: loaded or loading)
        self._prepared: dict[str, VoicePrompt] = {}  # per voice id, for the loaded model's codec
        self._load_number = 0
        self._reload_wanted = False
        self._speak_number = 0
        self._speaking = False  # a Speak job runs (its status lines are current)
        self.status_kind = ""
        self.status_is_error = False
        self._relay = _Relay(self)
        self._relay.model_progress.connect(self._model_progress)
        self._relay.first_sound.connect(self._first_sound)
        self._relay.voice_tuning.connect(self._voice_tuning)
        self._voice_jobs = Background(self)  # embedding new voices
        self._sound_jobs = Background(self)  # producing sound chunk by chunk (speech or a sample)
        self._model_jobs = Background(self)  # loading the speech model

        self._make_widgets()
        self._lay_out()
        self._connect_signals()
        self._start(notices)

    def _make_widgets(self) -> None:
        self.voice_picker = QComboBox()
        self.voice_picker.setToolTip("The voice to speak with")
        self.voice_picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.import_button = self._button("Import…", "Make a voice from an audio file of someone speaking")
        self.record_button = self._button("Record…", "Record a voice with the microphone")
        self.play_voice_button = self._button("Play sample", "Listen to the chosen voice's sample")
        self.rename_button = self._button("Rename…", "Give the chosen voice another name")
        self.delete_button = self._button("Delete", "Delete the chosen voice from this computer")
        self.starter_button = self._button("Add starter voices", "Add the sample voices that ship with "
                                           "TLDR Voice (synthetic speakers; see resources/voices/README.md)")
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("Type what the voice should say…")
        self.char_count = QLabel()
        self.speak_button = self._button("Speak", SPEAK_TIP)
        self.stop_button = self._button("Stop", "Stop speaking (Esc)")
        self.play_again_button = self._button("Play again", "Play the last speech again")
        self.export_button = self._button("Export…", "Save the last speech as a WAV or FLAC file")
        self.settings_button = self._button("Settings…", "Patch size, decoding, devices, temperature, seed")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.engine = QLabel()  # the settings that shape speed, always in view
        self.engine.setToolTip("Change these in Settings…")

    def _lay_out(self) -> None:
        voice_row = QHBoxLayout()
        voice_row.addWidget(QLabel("Voice:"))
        voice_row.addWidget(self.voice_picker, 1)
        for button in (self.starter_button, self.play_voice_button, self.import_button, self.record_button,
                       self.rename_button, self.delete_button):
            voice_row.addWidget(button)
        controls = QHBoxLayout()
        controls.addWidget(self.char_count)
        controls.addStretch(1)
        for button in (self.settings_button, self.export_button, self.play_again_button, self.stop_button,
                       self.speak_button):
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

    def _connect_signals(self) -> None:
        self.speak_shortcuts = [QShortcut(QKeySequence(keys), self, self.speak)
                                for keys in ("Ctrl+Return", "Ctrl+Enter")]  # Enter: the keypad's key
        self.stop_shortcut = QShortcut(QKeySequence("Esc"), self, self.stop)
        self.starter_button.clicked.connect(self.add_starter_voices)
        self.import_button.clicked.connect(self._ask_import)
        self.record_button.clicked.connect(self._ask_record)
        self.play_voice_button.clicked.connect(self.play_voice_sample)
        self.rename_button.clicked.connect(self._ask_rename)
        self.delete_button.clicked.connect(self._ask_delete)
        self.speak_button.clicked.connect(self.speak)
        self.stop_button.clicked.connect(self.stop)
        self.play_again_button.clicked.connect(self.play_again)
        self.export_button.clicked.connect(self._ask_export)
        self.settings_button.clicked.connect(self._ask_settings)
        self.voice_picker.currentIndexChanged.connect(self._voice_picked)
        self.player.finished.connect(self._sound_ended)
        self.player.failed.connect(self._job_failed)
        self.editor.textChanged.connect(self._update_char_count)

    def _start(self, notices: list[str]) -> None:
        """Show the settings and voices, say what was noticed on the way, and start loading the model."""
        self._show_engine()
        self._update_char_count()
        self.refresh_voices(select=self.settings.last_voice)
        said = " ".join([*notices, *self.library.notices])
        if nothing_to_load(self.model_dir):
            self.model_problem = NO_MODEL_MESSAGE
            self.show_status(said or NO_MODEL_MESSAGE, error=bool(said))
        else:
            if said:
                self.show_status(said, error=True)
            self.load_model()
        self._update_buttons()

    def _button(self, label: str, tip: str) -> QPushButton:
        button = QPushButton(label)
        button.setToolTip(tip)
        return button

    # ------------------------------------------------------------------------------------------- state

    def show_status(self, message: str, error: bool = False, kind: str = "") -> None:
        """kind: what the line is about ("loading", "speaking", "speech"), so a later update knows whether it
        may replace it (model progress replaces only its own lines; an error stays until the next action)."""
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
        self.status_is_error = error
        self.status_kind = kind

    @property
    def model_loading(self) -> bool:
        return self._model_jobs.busy

    def current_voice(self) -> SavedVoice | None:
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
        self.starter_button.setVisible(not has_voice and bool(starter_clips()))
        self.starter_button.setEnabled(not embedding)
        self.record_button.setEnabled(not embedding)
        for button in (self.rename_button, self.delete_button):
            button.setEnabled(has_voice and not embedding)
        self.play_voice_button.setEnabled(has_voice)
        reason = self.speak_unavailable()
        self.speak_button.setEnabled(reason is None and has_voice)
        self.speak_button.setToolTip(SPEAK_TIP if reason is None else reason)
        self.stop_button.setEnabled(sounding)
        has_speech = self.last_audio is not None and len(self.last_audio) > 0
        self.play_again_button.setEnabled(has_speech and not self._speaking)
        self.export_button.setEnabled(has_speech and not self._speaking)

    def speak_unavailable(self) -> str | None:
        """Why Speak cannot work now (no model, a damaged one, still loading), or None."""
        if self.synth is not None:
            return None
        return LOADING_MESSAGE if self.model_loading or self._reload_wanted else self.model_problem

    def _show_engine(self) -> None:
        s = self.settings
        decoding = {"baseline": "token by token", "ssd": "speculative (SSD)",
                    "tldr-ssd": f"TLDR, patch size {s.patch_size} + speculation"}.get(
            s.decoding_mode, f"TLDR, patch size {s.patch_size}")
        self.engine.setText(f"{decoding} · {s.device}")

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

    def save_recorded_voice(self, name: str, sample: ReferenceClip) -> None:
        self.show_status(f"Saving the voice '{name}'…")
        library = self.library
        self._voice_jobs.start(lambda: library.create(name, sample), self._voice_saved, self._job_failed)
        self._update_buttons()

    def add_starter_voices(self) -> None:
        """Make voices from the shipped reference clips, in the background."""
        self.show_status("Adding the starter voices…")
        library, clips = self.library, starter_clips()
        self._voice_jobs.start(lambda: [library.create_from_file(clip.stem, clip) for clip in clips],
                               self._starters_saved, self._job_failed)
        self._update_buttons()

    def _starters_saved(self, voices: list[SavedVoice]) -> None:
        self.refresh_voices(select=voices[0].id)
        self.show_status(f"Added {len(voices)} starter voices: {', '.join(v.name for v in voices)}.")

    def _voice_saved(self, voice: SavedVoice) -> None:
        self.refresh_voices(select=voice.id)
        self.show_status(" ".join([f"The voice '{voice.name}' is saved ({voice.speech_seconds:.1f} s of speech).",
                                   *voice.notices]))

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

    # ------------------------------------------------------------------------------------------- model

    def load_model(self) -> None:
        """Load the speech model in the background for the chosen device (again, when that changes)."""
        if self.model_loading:  # the one loading now is for the old device: load again when it ends
            self._reload_wanted = True
            return
        self.synth, self.model_problem = None, None
        self._prepared.clear()
        self._load_number += 1
        number, relay, model_dir, device = self._load_number, self._relay, self.model_dir, self.settings.device
        if not self.status_is_error:
            self.show_status("Loading the speech model…", kind="loading")
        self._model_jobs.start(
            lambda: load_synthesizer(model_dir, device, lambda step: relay.model_progress.emit(number, step)),
            self._model_loaded, self._model_failed)
        self._update_buttons()

    def _model_progress(self, number: int, step: str) -> None:
        if number == self._load_number and self.status_kind == "loading" and step != "ready":
            self.show_status(f"Loading the speech model: {step}…", kind="loading")

    def _reloaded_instead(self) -> bool:
        """The device changed while a model was loading: drop that load's outcome and load again."""
        if not self._reload_wanted:
            return False
        self._reload_wanted = False
        self.load_model()
        return True

    def _model_loaded(self, synth: Synthesizer) -> None:
        if self._reloaded_instead():
            return
        self.synth = synth
        if self.status_kind == "loading":
            sizes = ", ".join(map(str, synth.patch_sizes)) or "none"
            ssd = "; speculative decoding available" if synth.has_draft else ""
            self.show_status(f"Ready: the speech model runs on {synth.device.type} (patch sizes {sizes}{ssd}).")
        self._update_buttons()

    def _model_failed(self, message: str) -> None:
        if self._reloaded_instead():
            return
        self.model_problem = message
        self.show_status(f"{self.status.text()} {message}" if self.status_is_error else message, error=True)
        self._update_buttons()

    # ------------------------------------------------------------------------------------------- sound

    def play_voice_sample(self) -> None:
        voice = self.current_voice()
        try:
            clip = voice.clip()
        except (OSError, RuntimeError) as error:  # soundfile reports a damaged file as RuntimeError
            self.show_status(f"The sample of '{voice.name}' could not be read ({error}).", error=True)
            return
        self.play_chunks(_chunked(clip), f"Playing the sample of '{voice.name}'…")

    def play_again(self) -> None:
        """Play the last speech again (it is not generated again)."""
        if self.last_audio is None or not len(self.last_audio):
            return
        self.play_chunks(_chunked(self.last_audio), "Playing the last speech again…")

    def play_chunks(self, chunks: Iterable[np.ndarray], message: str) -> None:
        """Play chunks produced in the background; a sound already playing is replaced, not mixed."""
        self.stop()
        session = self.player.session  # taken here, so a Stop before the job starts still counts
        self.show_status(message)
        self._sound_jobs.start(lambda: stream_to_player(chunks, self.player, session), self._sound_made,
                               self._job_failed)
        self._update_buttons()

    def _sound_made(self, result: tuple[np.ndarray, str | None]) -> None:
        _, problem = result
        if problem:
            self.show_status(problem, error=True)
        self._update_buttons()

    def _sound_ended(self) -> None:
        if not self.status_is_error and self.status_kind not in ("speaking", "speech"):
            self.show_status("Finished playing.")  # a speech's figures and an error stay until the next action
        self._update_buttons()

    def speak(self) -> None:
        """Speak the text in the chosen voice: sound starts with the first patch (Ctrl+Enter)."""
        clicked = time.perf_counter()
        reason = self.speak_unavailable()
        if reason is not None:
            self.show_status(reason, error=reason != LOADING_MESSAGE)
            return
        voice = self.current_voice()
        if voice is None:
            self.show_status("Choose a voice first: import or record one.", error=True)
            return
        try:
            decoding = decoding_for(self.settings, self.synth.patch_sizes, self.synth.has_draft)
        except TldrError as error:
            self.show_status(str(error), error=True)
            return
        self.stop()  # a sound still playing (an earlier speech, a sample) is replaced
        request = SpeakRequest(self.editor.toPlainText(), voice, decoding, self.settings.temperature,
                               self.settings.voice_match, self.settings.voice_tuning, self.settings.seed, clicked)
        self._speak_number += 1
        number, relay, synth, player, prepared, library = (self._speak_number, self._relay, self.synth, self.player,
                                                           self._prepared, self.library)
        session = player.session
        self._speaking = True
        self.show_status(f"Generating speech in the voice '{voice.name}'…", kind="speaking")
        self._sound_jobs.start(
            lambda: speak(synth, request, prepared, player, session,
                          lambda seconds: relay.first_sound.emit(number, seconds), library,
                          lambda done: relay.voice_tuning.emit(number, done)),
            self._speech_made, self._speech_failed)
        self._update_buttons()

    def _voice_tuning(self, number: int, done: float) -> None:
        if number == self._speak_number and self._speaking and self.status_kind == "speaking":
            self.show_status(f"Learning this voice (once per voice, Stop cancels): {done:.0%}…", kind="speaking")

    def _first_sound(self, number: int, seconds: float) -> None:
        if number == self._speak_number and self._speaking and self.status_kind == "speaking":
            self.show_status(f"Speaking… first sound {seconds:.2f} s after the click; still generating.",
                             kind="speaking")

    def _speech_made(self, outcome: SpeakOutcome) -> None:
        self._speaking = False
        self.last_outcome = outcome
        if len(outcome.audio):
            self.last_audio = outcome.audio
        figures = describe(outcome)
        if outcome.problem:
            self.show_status(f"{outcome.problem} {figures}", error=True, kind="speech")
        else:
            self.show_status(figures, kind="speech")
        self._update_buttons()

    def _speech_failed(self, message: str) -> None:
        self._speaking = False
        self._job_failed(message)

    def stop(self) -> None:
        """Stop the sound within one block and its producer (the model too) within one chunk (Esc)."""
        self.player.stop()
        self._sound_jobs.wait()
        self._update_buttons()

    def export_audio(self, path: str | Path) -> Path | None:
        """Write the last speech as WAV or FLAC (by the extension; WAV when there is none); None when it could not
        be written (a read-only folder, a full disk), which the status line then says."""
        path = Path(path)
        if path.suffix.lower() not in EXPORT_FORMATS.values():
            path = path.with_name(path.name + ".wav")
        try:
            write_wav(path, self.last_audio, SAMPLE_RATE, subtype="PCM_16")
        except TldrError as error:
            self.show_status(str(error), error=True)
            return None
        self.show_status(f"Saved {len(self.last_audio) / SAMPLE_RATE:.1f} s of speech to {path}.")
        return path

    # ------------------------------------------------------------------------------------------ settings

    def apply_settings(self, settings: Settings) -> None:
        if settings.output_device != self.player.device:
            self.player.stop()
            self.player.device = settings.output_device
        if settings.device != self.library.device:  # the speaker encoder is loaded for one device
            self.library = VoiceLibrary(device=settings.device)
        device_changed = settings.device != self.settings.device
        self.settings = settings
        self._save_settings()
        self._show_engine()
        if device_changed and not nothing_to_load(self.model_dir):  # the model is loaded for one device
            self.stop()
            self.load_model()

    def settings_note(self) -> str | None:
        """What the loaded model cannot do of the current settings (a patch size without an adapter)."""
        if self.synth is None:
            return None
        try:
            decoding_for(self.settings, self.synth.patch_sizes, self.synth.has_draft)
        except TldrError as error:
            return str(error)
        return None

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
        self.export_audio(path)

    def _ask_settings(self) -> None:
        loaded = self.synth is not None
        dialog = SettingsDialog(self.settings, self, self.synth.patch_sizes if loaded else None,
                                self.synth.has_draft if loaded else None)
        if dialog.exec():
            self.apply_settings(dialog.settings())
            note = self.settings_note()
            if self.status_kind != "loading" or note:
                self.show_status(f"Settings saved. {note}" if note else "Settings saved.", error=bool(note))

    def closeEvent(self, event: QCloseEvent) -> None:
        self.stop()
        self._voice_jobs.wait()
        self._reload_wanted = False
        self._model_jobs.wait()  # loading cannot be interrupted; it is seconds at most
        self.player.stop()
        super().closeEvent(event)


def starter_clips() -> list[Path]:
    return sorted(STARTER_VOICES.glob("*.wav"))


def _chunked(audio: np.ndarray) -> Iterable[np.ndarray]:
    step = int(CHUNK_SECONDS * SAMPLE_RATE)
    return (audio[i:i + step] for i in range(0, len(audio), step))


def run() -> int:
    QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication(sys.argv)
    app.setApplicationName("TLDR Voice")
    app.setWindowIcon(QIcon(str(APP_ICON)))
    window = MainWindow()
    window.show()
    return app.exec()
