"""The command line answers bad input with one clear line and exit status 2, never a traceback."""

from cli_runner import run_cli


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("text", "audio", "speaker", "corpus"):
        assert command in result.stdout


def test_missing_voice_file_is_a_clear_error_not_a_traceback(tmp_path):
    result = run_cli("audio", "check", str(tmp_path / "nope.wav"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "nope.wav" in result.stderr
    assert "Traceback" not in result.stderr


def test_text_command_prints_words_and_phonemes():
    result = run_cli("text", "It costs $3.50.")
    assert result.returncode == 0, result.stderr
    assert "three dollars" in result.stdout
    assert "phonemes:" in result.stdout
