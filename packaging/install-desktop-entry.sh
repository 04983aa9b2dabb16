#!/bin/sh
# Add TLDR Voice to the desktop's application menu, for this user: run it from the unpacked TLDRVoice folder
# (`./install-desktop-entry.sh`); run it again after moving the folder. `--remove` takes the entry away.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
if [ "${1:-}" = "--remove" ]; then
  rm -f "$apps/tldr-voice.desktop" "$icons/tldr-voice.png"
  echo "Removed TLDR Voice from the application menu."
  exit 0
fi
mkdir -p "$apps" "$icons"
cp "$here/tldr-voice.png" "$icons/tldr-voice.png"
# The entry as shipped, with the executable's full path (a desktop entry cannot find it relative to itself).
while IFS= read -r line; do
  case "$line" in
    Exec=TLDRVoice) printf 'Exec="%s/TLDRVoice"\n' "$here" ;;
    *) printf '%s\n' "$line" ;;
  esac
done < "$here/tldr-voice.desktop" > "$apps/tldr-voice.desktop"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
echo "Added TLDR Voice to the application menu ($apps/tldr-voice.desktop)."
