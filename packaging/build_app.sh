#!/usr/bin/env bash
# Build the one-folder desktop package with PyInstaller (packaging/tldr_voice.spec):
#   bash packaging/build_app.sh                               # -> dist/TLDRVoice/ (work files in build/)
#   bash packaging/build_app.sh --distpath DIR --workpath DIR  # elsewhere; other PyInstaller options pass through
# Uses .venv (made with `packaging/setup.sh app` when missing) and installs PyInstaller into it when missing.
#
# dist/TLDRVoice/ runs on a Linux desktop without Python or the venv: copy the folder anywhere, run ./TLDRVoice;
# ./TLDRVoice --check runs the speech path once without the window; ./install-desktop-entry.sh adds it to the
# application menu. The machine needs the system libraries Qt and PortAudio load (packaging/setup.sh app lists
# them: libgl1 libegl1 libfontconfig1 libxkbcommon-x11-0 libxcb-cursor0 ... libportaudio2).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash packaging/setup.sh app
.venv/bin/python -c "import PyInstaller" 2>/dev/null || .venv/bin/pip install -q -e ".[package]"
.venv/bin/python -m PyInstaller --noconfirm --clean --log-level WARN "$@" packaging/tldr_voice.spec
