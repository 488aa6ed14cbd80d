#!/usr/bin/env bash
# Install nginx (with its built-in gRPC proxy module) for the scale-out test
# (tests/e2e/test_scaleout.py), which runs a real nginx with deploy/nginx/nginx.conf.template
# in front of several gradserve processes. Debian's nginx package is enough: the test
# starts its own nginx, as the current user, under a temporary prefix; the system
# service it may also start is not used.
#
# Idempotent, and never fails the build: when a step is impossible (no root, no apt,
# no network), it says why and exits 0; the test then skips with that reason.
set -uo pipefail

give_up() {
    echo "install_nginx: $1; the scale-out test will be skipped" >&2
    exit 0
}

find_nginx() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }
}

if NGINX="$(find_nginx)" && [ -n "$NGINX" ]; then
    echo "install_nginx: already installed: $("$NGINX" -v 2>&1)"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || give_up "nginx is missing and there is no apt-get (install nginx >= 1.13.10 with the grpc module)"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || give_up "nginx is missing and installing it needs root"
    SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || give_up "apt-get update failed"
$SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null || give_up "apt-get install nginx failed"
NGINX="$(find_nginx)" || give_up "nginx installed but not found on PATH"
echo "install_nginx: installed $("$NGINX" -v 2>&1)"
