"""Record a voice: countdown, live level meter, Stop (or the maximum length), play back, name it, save.

The recording is checked as soon as it ends (tldr_core.audio.prepare_reference_clip, off the UI thread); a
recording that is too short, silent or clipped is refused right here, with the reason and a Record again
button, before anything is saved.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout,
                               QWidget)

from app.audio_io import SILENCE_DBFS, AudioDeviceError, Player, Recorder
from app.worker import Background
from tldr_core.audio import MAX_SAMPLE_SECONDS, ReferenceClip, prepare_reference_clip
from tldr_core.errors import TldrError
from tldr_core.voices import VoiceLibrary

METER_FLOOR_DBFS = -60  # the meter's left end; speech sits around -30 to -6
METER_UPDATES_PER_SECOND = 20


class RecordDialog(QDialog):
    """On accept, `name` and `sample` (a prepared ReferenceClip) say what to save."""

    def __init__(self, library: VoiceLibrary, player: Player, input_device: str | None = None,
                 countdown_seconds: int = 3, max_seconds: float = MAX_SAMPLE_SECONDS,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Record a voice")
        self.library, self.player = library, player
        self.recorder = Recorder(input_device, max_seconds)
        self.countdown_seconds = countdown_seconds
        self.sample: ReferenceClip | None = None
        self.name = ""
        self.recording = False  # from start to Stop; the stream itself may already have ended at the maximum
        self._count = 0
        self._checker = Background(self)

        self.instructions = QLabel(f"Read a few sentences in your normal voice, 10 to {max_seconds:.0f} seconds, "
                                   f"in a quiet room. Recording stops by itself after {max_seconds:.0f} s.")
        self.instructions.setWordWrap(True)
        self.meter = QProgressBar()
        self.meter.setRange(METER_FLOOR_DBFS, 0)
        self.meter.setFormat("%v dBFS")
        self.meter.setValue(METER_FLOOR_DBFS)
        self.meter.setToolTip("Input level: aim for the loud parts of your speech between -20 and -6 dBFS.")
        self.clock = QLabel()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.record_button = QPushButton("Record")
        self.stop_button = QPushButton("Stop")
        self.play_button = QPushButton("Play back")
        self.play_button.setToolTip("Listen to the recording as it will be saved (silence trimmed)")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("Name of this voice")
        self.save_button = QPushButton("Save voice")
        self.save_button.setDefault(True)
        cancel_button = QPushButton("Cancel")

        meter_row = QHBoxLayout()
        meter_row.addWidget(self.meter, 1)
        meter_row.addWidget(self.clock)
        transport = QHBoxLayout()
        for button in (self.record_button, self.stop_button, self.play_button):
            transport.addWidget(button)
        transport.addStretch(1)
        save_row = QHBoxLayout()
        save_row.addWidget(self.name_edit, 1)
        save_row.addWidget(self.save_button)
        save_row.addWidget(cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.instructions)
        layout.addLayout(meter_row)
        layout.addLayout(transport)
        layout.addWidget(self.message)
        layout.addLayout(save_row)

        self.tick = QTimer(self)
        self.tick.timeout.connect(self._tick)
        self.record_button.clicked.connect(self.start_countdown)
        self.stop_button.clicked.connect(self.stop_recording)
        self.play_button.clicked.connect(self.play_back)
        self.save_button.clicked.connect(self.save)
        cancel_button.clicked.connect(self.reject)
        self.name_edit.textChanged.connect(self._update_buttons)
        self._update_buttons()

    # ------------------------------------------------------------------------------------------ recording

    def start_countdown(self) -> None:
        self.sample = None
        self.message.setText("")
        self._count = self.countdown_seconds
        self._countdown_step()

    def _countdown_step(self) -> None:
        if self._count > 0:
            self.clock.setText(f"Recording in {self._count}…")
            self._count -= 1
            QTimer.singleShot(1000, self._countdown_step)
            self.record_button.setEnabled(False)
            return
        try:
            self.recorder.start()
        except AudioDeviceError as error:
            self._show_problem(str(error))
            return
        self.recording = True
        self.tick.start(1000 // METER_UPDATES_PER_SECOND)
        self._update_buttons()

    def _tick(self) -> None:
        level = self.recorder.level_dbfs
        self.meter.setValue(max(METER_FLOOR_DBFS, round(level)) if level > SILENCE_DBFS else METER_FLOOR_DBFS)
        self.clock.setText(f"{self.recorder.seconds:.1f} s / {self.recorder.max_seconds:.0f} s")
        if not self.recorder.is_recording:  # the maximum length was reached
            self.stop_recording()

    def stop_recording(self) -> None:
        self.recording = False
        self.tick.stop()
        samples, rate = self.recorder.stop(), self.recorder.sample_rate
        self.meter.setValue(METER_FLOOR_DBFS)
        self.message.setText("Checking the recording…")
        self._checker.start(lambda: prepare_reference_clip(samples, rate), self._checked, self._show_problem)
        self._update_buttons()

    def _checked(self, sample: ReferenceClip) -> None:
        self.sample = sample
        self.message.setStyleSheet("")
        notes = " ".join(sample.notices)
        self.message.setText(f"Recorded {sample.speech_seconds:.1f} s of speech. Play it back, name it and "
                             f"save it. {notes}".strip())
        self._update_buttons()

    def _show_problem(self, message: str) -> None:
        self.message.setText(message)
        self.message.setStyleSheet("color: #b00020;")
        self.record_button.setText("Record again")
        self._update_buttons()

    # ----------------------------------------------------------------------------------------- after it

    def play_back(self) -> None:
        self.player.stop()
        try:
            self.player.push(self.sample.samples)
            self.player.finish()
        except AudioDeviceError as error:
            self.message.setText(str(error))

    def save(self) -> None:
        try:
            self.name = self.library.check_name(self.name_edit.text())
        except TldrError as error:
            self._show_problem(str(error))
            return
        self.accept()

    def done(self, result: int) -> None:
        """Closing by any way ends the recording and its checks first."""
        self.tick.stop()
        self.recorder.stop()
        self._checker.wait()
        super().done(result)

    def _update_buttons(self) -> None:
        recording = self.recording
        checking = self._checker.busy
        self.record_button.setEnabled(not recording and not checking)
        self.stop_button.setEnabled(recording)
        self.play_button.setEnabled(self.sample is not None and not recording)
        self.save_button.setEnabled(self.sample is not None and bool(self.name_edit.text().strip()))
