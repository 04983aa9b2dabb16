#!/bin/sh
# Install the offline speech engines that `tldr-voice corpus build` synthesises its corpus with.
#
# espeak-ng, flite and festival (+ 3 festvox voices) are in Debian's main section; RHVoice's English voices
# are in contrib/non-free and SVOX Pico (pico2wave) is in non-free, so those sections are enabled first.
# Safe to run again: it changes the apt sources only when a section is missing, and apt-get install skips
# what is already there. Uses sudo when not run as root.
#
#   sh packaging/debian/install-voices.sh
set -eu

PACKAGES="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
rhvoice rhvoice-english libttspico-utils"

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

# Replace a file with the output of a sed script, only when that changes it (keeps a .orig copy once).
edit() {
    file=$1
    script=$2
    tmp=$(mktemp)
    sed -E "$script" "$file" >"$tmp"
    if ! cmp -s "$file" "$tmp"; then
        [ -e "$file.orig" ] || $SUDO cp -p "$file" "$file.orig"
        $SUDO cp "$tmp" "$file"
        echo "enabled contrib and non-free in $file"
    fi
    rm -f "$tmp"
}

# Add a component word to a line unless it is already there ("non-free-firmware" is not "non-free").
add() {
    echo "/(^|[[:space:]])$1([[:space:]]|\$)/!s/\$/ $1/"
}

. /etc/os-release
case "${ID:-}" in
debian)
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # Debian 12 and later: deb822 format
        edit /etc/apt/sources.list.d/debian.sources "/^Components:/{$(add contrib);$(add non-free)}"
    fi
    if [ -f /etc/apt/sources.list ]; then  # the classic one-line format, Debian's own mirrors only
        edit /etc/apt/sources.list \
            "/^deb(-src)?[[:space:]].*debian.*[[:space:]]main([[:space:]]|\$)/{$(add contrib);$(add non-free)}"
    fi
    ;;
ubuntu)  # the same packages live in universe and multiverse
    $SUDO apt-get install -y software-properties-common
    $SUDO add-apt-repository -y universe
    $SUDO add-apt-repository -y multiverse
    ;;
*)
    echo "This script knows Debian and Ubuntu; on ${PRETTY_NAME:-this system} install the equivalents of:" >&2
    echo "  $PACKAGES" >&2
    exit 1
    ;;
esac

$SUDO apt-get update
# shellcheck disable=SC2086  # the package list is meant to split into words
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
echo "Speech engines installed. Kokoro comes from PyPI: pip install 'tldr-voice[corpus]'."
