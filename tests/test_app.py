"""The main window opens without a display and tells the truth about what it can do."""

from app.main_window import NO_MODEL_MESSAGE, MainWindow
from tldr_core import paths, text


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


def test_speak_is_disabled_with_a_reason_when_no_model_is_installed(qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.speak_button.isEnabled()
    assert window.status.text() == NO_MODEL_MESSAGE
