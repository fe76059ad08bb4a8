#!/usr/bin/env bash
# Headless Chromium for the annotation app's browser test (tests/annotate/test_browser.py).
# Debian's packages, never `playwright install` (no browser downloads from CDNs). Idempotent: does
# nothing when /usr/bin/chromium exists. Uses sudo when not root and sudo works without a password.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "install-browser: /usr/bin/chromium is missing and this user cannot install packages;" >&2
  echo "  run as root: apt-get update && apt-get install -y chromium chromium-driver" >&2
  echo "  (until then the browser test fails: tests/annotate/test_browser.py)" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
echo "install-browser: installed $(/usr/bin/chromium --version)"
