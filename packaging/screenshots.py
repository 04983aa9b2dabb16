"""Take the README's screenshots of the app under Xvfb: the main window after one Speak, and the settings.

    python3 packaging/screenshots.py [--model DIR] [--out docs/screenshots]

writes main_window.png and settings.png at 100 % and main_window_200.png at QT_SCALE_FACTOR=2 (to check that
the layout holds at 200 %). It runs itself under xvfb-run with the xcb platform, in throw-away user folders
(your voices and settings are not touched), with a silent ALSA device so Speak plays without a sound card.
The voice is resources/voices/flite-rms.wav. The model is DIR, else the shipped default model, else the
untrained test model of tests/tiny_model.py (its speech is babble: the window and the figures' layout are
what the picture shows, not the quality or the speed of the real model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog. TLDR speaks four speech tokens per step, so the sound "
        "starts almost at once.")
SILENT_ALSA = 'pcm.!default { type plug; slave.pcm "null" }\n'


def take(out: Path, model: Path | None, scale: str) -> None:
    """In this process (already under Xvfb): open the window, speak once, save the pictures."""
    sys.path.insert(0, str(REPO))
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.settings_dialog import SettingsDialog
    from tldr_core import paths
    from tldr_core.settings import Settings, save_settings
    from tldr_core.voices import VoiceLibrary

    if model is None and not paths.default_model_installed():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_model import make_tiny_model
        model = make_tiny_model(Path(tempfile.mkdtemp()))
        print("no trained model is installed: using the untrained test model (its figures mean nothing)")
    QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication([sys.argv[0]])
    app.setApplicationName("TLDR Voice")
    save_settings(Settings(device="cpu", seed=1))
    VoiceLibrary().create_from_file("Narrator (flite rms)", paths.RESOURCES_DIR / "voices" / "flite-rms.wav")

    window = MainWindow(model_dir=model)
    window.show()
    wait(app, lambda: not window.model_loading, 60)
    window.editor.setPlainText(TEXT)
    if window.synth is not None:
        window.speak()
        wait(app, lambda: not window._speaking and not window.player.is_playing, 60)
    wait(app, lambda: False, 0.3)  # let the last repaint happen
    suffix = "" if scale == "1" else f"_{int(float(scale) * 100)}"
    save(window.grab(), out / f"main_window{suffix}.png")
    if scale == "1":
        dialog = SettingsDialog(window.settings, window)
        dialog.show()
        wait(app, lambda: False, 0.3)
        save(dialog.grab(), out / "settings.png")
        dialog.close()
    window.close()


def wait(app, done, seconds: float) -> None:
    import time
    end = time.monotonic() + seconds
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def save(pixmap, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not pixmap.save(str(path), "PNG", 0):  # 0: smallest file
        raise SystemExit(f"could not write {path}")
    print(f"{path} ({pixmap.width()}x{pixmap.height()}, {path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: shipped model, else the test model)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--scale", default=None, help=argparse.SUPPRESS)  # set for the child under Xvfb
    args = parser.parse_args()
    if args.scale is not None:
        take(args.out.resolve(), args.model, args.scale)
        return
    if shutil.which("xvfb-run") is None:
        raise SystemExit("xvfb-run is needed (apt-get install xvfb)")
    for scale in ("1", "2"):
        with tempfile.TemporaryDirectory() as home:
            alsa = Path(home) / "asoundrc"
            alsa.write_text(SILENT_ALSA)
            env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "QT_SCALE_FACTOR": scale,
                   "XDG_DATA_HOME": f"{home}/data", "XDG_CONFIG_HOME": f"{home}/config",
                   "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{alsa}", "PYTHONPATH": str(REPO)}
            command = [sys.executable, __file__, "--out", str(args.out.resolve()), "--scale", scale]
            if args.model:
                command += ["--model", str(args.model.resolve())]
            subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", *command], env=env, check=True)


if __name__ == "__main__":
    main()
