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


# A webrtcvad that warns on import as the `webrtcvad` build does (it imports pkg_resources), then is the real one.
NOISY_WEBRTCVAD = """import importlib.machinery, importlib.util, os, sys, warnings
warnings.warn("pkg_resources is deprecated as an API.", UserWarning)
here = os.path.dirname(__file__)
spec = importlib.machinery.PathFinder.find_spec("webrtcvad", [p for p in sys.path if p and p != here])
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
sys.modules["webrtcvad"] = real
"""


def test_stderr_holds_only_the_error_whatever_other_packages_warn(tmp_path):
    """Which of two installed webrtcvad builds wins varies from install to install, and one warns on import; with
    it, and with every warning switched on, a failing command still prints exactly one error line."""
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "webrtcvad.py").write_text(NOISY_WEBRTCVAD)
    result = run_cli("audio", "check", str(tmp_path / "nope.wav"),
                     env={"PYTHONPATH": str(tmp_path / "shim"), "PYTHONWARNINGS": "always"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_one_webrtcvad_is_installed():
    """Two distributions writing one webrtcvad.py would make the trimming code depend on install order."""
    from importlib import metadata

    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert {"webrtcvad", "webrtcvad-wheels"} & installed == {"webrtcvad-wheels"}
