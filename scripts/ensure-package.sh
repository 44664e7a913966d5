#!/usr/bin/env bash
# `make test` runs this for each server the tests start themselves on 127.0.0.1:
#   scripts/ensure-package.sh PACKAGE "WHAT FOR" BINARY...
# Nothing happens when every BINARY is there. Otherwise Debian's PACKAGE is installed
# non-interactively, as root (CI) or with passwordless sudo; without either, this only
# says how, and the tests that need it skip (under CI=true they fail). A system service
# the package starts is disabled: the tests run their own server on a free port.
set -euo pipefail
package=$1
purpose=$2
shift 2

have() {
  for binary in "$@"; do
    command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || return 1
  done
}

if have "$@"; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: $* not found and no apt-get here; install $package for $purpose" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "note: $* not found; for $purpose:" \
       "sudo apt-get install --no-install-recommends $package" >&2
  exit 0
fi

echo "installing Debian package $package ($*) for $purpose" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
if [ -d /run/systemd/system ] && systemctl is-active --quiet "$package" 2>/dev/null; then
  "${sudo[@]}" systemctl disable --now "$package" >/dev/null 2>&1 || true
fi
have "$@"
