"""The main window: type text, pick a voice, Speak.

Until a trained speech model is installed, the window says so and keeps Speak disabled, so a person is
never left clicking a button that cannot work.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QLabel, QMainWindow, QPlainTextEdit, QPushButton,
                               QVBoxLayout, QWidget)

from tldr_core import paths, text

NO_MODEL_MESSAGE = ("No speech model is installed yet, so Speak is unavailable. "
                    "The default model will ship in resources/default_model.")


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("TLDR Voice")
        self.resize(720, 420)

        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("Type what the voice should say…")
        self.char_count = QLabel()
        self.speak_button = QPushButton("Speak")
        self.speak_button.setToolTip("Speak the text in the chosen voice (Ctrl+Enter)")
        self.status = QLabel()
        self.status.setWordWrap(True)

        controls = QHBoxLayout()
        controls.addWidget(self.char_count)
        controls.addStretch(1)
        controls.addWidget(self.speak_button)
        layout = QVBoxLayout()
        layout.addWidget(self.editor, 1)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)

        self.editor.textChanged.connect(self._update_char_count)
        self._update_char_count()
        model_ready = paths.default_model_installed()
        self.speak_button.setEnabled(model_ready)
        self.status.setText("Ready." if model_ready else NO_MODEL_MESSAGE)

    def _update_char_count(self) -> None:
        n = len(self.editor.toPlainText())
        over = n > text.MAX_TEXT_CHARS
        self.char_count.setText(f"{n:,} / {text.MAX_TEXT_CHARS:,} characters")
        self.char_count.setStyleSheet("color: #b00020;" if over else "")


def run() -> int:
    QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication(sys.argv)
    app.setApplicationName("TLDR Voice")
    window = MainWindow()
    window.show()
    return app.exec()
