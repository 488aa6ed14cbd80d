#!/usr/bin/env bash
# Install Debian's chromium for the lab page's browser test (tests/e2e/test_lab_page.py),
# which drives it with Playwright's Python package (a dev extra) at /usr/bin/chromium.
# Playwright's own browser download (`playwright install`) needs its CDN, which CI
# cannot reach; Debian's package comes from the apt mirror like nginx's.
#
# Idempotent, and never fails the build: when a step is impossible (no root, no apt,
# no network), it says why and exits 0; the test then skips with that reason.
set -uo pipefail

CHROMIUM=/usr/bin/chromium

give_up() {
    echo "install_browser: $1; the lab page's browser test will be skipped" >&2
    exit 0
}

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || give_up "chromium is missing and there is no apt-get"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || give_up "chromium is missing and installing it needs root"
    SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || give_up "apt-get update failed"
$SUDO apt-get install -y -qq chromium >/dev/null || give_up "apt-get install chromium failed"
[ -x "$CHROMIUM" ] || give_up "chromium installed but $CHROMIUM is missing"
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null)"
