#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs it.
# Browser tests drive Debian's Chromium through Playwright (no browser download).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests use, installed when missing: the browser the browser tests drive, and
# the emoji font, list and text layout the data-set test renders with.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
[ -f /usr/share/unicode/emoji/emoji-test.txt ] || missing+=(unicode-data)
for lib in libfribidi0 libharfbuzz0b; do  # Pillow's Raqm text layout, which the emoji renderer needs
  dpkg -s "$lib" >/dev/null 2>&1 || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -e .
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export ARPG_REQUIRE_BROWSER=1  # Chromium was installed above: the browser tests must run, not skip
python -m pytest -q "$@"
