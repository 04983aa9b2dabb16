#!/usr/bin/env bash
# Set up TLDR Voice on Debian 12 with Python 3.11: system libraries, a virtual environment in .venv, the project.
#   bash packaging/setup.sh app    # what the desktop app needs
#   bash packaging/setup.sh test   # plus test tools, corpus voices and the speaker-encoder reference
# Safe to rerun: apt and pip skip what is already there.
set -euo pipefail
mode="${1:-app}"
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

# Qt's xcb platform plugin, PortAudio for sounddevice, libsndfile for soundfile; python3-venv for .venv; gcc and
# headers: pyworld (the codec's voice analysis) and webrtcvad (resemblyzer's, tests) build from source.
apt_packages=(python3-venv libportaudio2 libsndfile1 libgl1 libegl1 libfontconfig1 libxkbcommon0 libglib2.0-0
  libdbus-1-3 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-shape0 libxcb-xkb1 gcc python3-dev)
extras="cpu"
if command -v nvidia-smi >/dev/null 2>&1; then extras="gpu"; fi
if [ "$mode" = "test" ]; then
  # xvfb, xauth and x11-utils (xwininfo): tests start the app, packaged too, on a virtual screen.
  apt_packages+=(espeak-ng flite sox xvfb xauth x11-utils libasound2-plugins alsa-utils)
  extras="$extras,test,corpus,export,eval,package"
elif [ "$mode" != "app" ]; then
  echo "usage: bash packaging/setup.sh [app|test]" >&2; exit 2
fi

missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first and pinned: here it resolves to the CPU build; on a desktop with a GPU, PyPI's build includes CUDA.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[$extras]"
# resemblyzer (the [export] extra) pulls in `webrtcvad`, which writes the same webrtcvad.py as webrtcvad-wheels and
# imports the deprecated pkg_resources: which copy wins varied from install to install. Keep the wheels build only.
if .venv/bin/pip show -q webrtcvad >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y webrtcvad
  .venv/bin/pip install -q --force-reinstall --no-deps webrtcvad-wheels
fi
# resemblyzer also pulls in `typing`, a backport that Python 3.11's own typing module shadows anyway; PyInstaller
# (packaging/build_app.sh) refuses to run while it is installed.
if .venv/bin/pip show -q typing >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y typing
fi
echo "TLDR Voice is set up in .venv ($extras)."
