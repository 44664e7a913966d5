#!/usr/bin/env bash
# `make test` runs this: the monitoring tests (tests/test_monitoring.py) need the
# `prometheus` and `promtool` binaries. Debian's `prometheus` package ships both in
# /usr/bin. Nothing happens when they are already on PATH. Otherwise they are installed
# non-interactively, as root (CI) or with passwordless sudo; without either, this only
# says how, and those tests skip (under CI=true they fail instead).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: prometheus/promtool not found and no apt-get here; install Prometheus" \
       "(both binaries) to run tests/test_monitoring.py" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "note: prometheus/promtool not found; to run tests/test_monitoring.py:" \
       "sudo apt-get install --no-install-recommends prometheus" >&2
  exit 0
fi

echo "installing Debian package prometheus (prometheus, promtool) for the monitoring tests" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package enables a system service; on a machine that runs systemd it would now
# scrape in the background. The tests start their own Prometheus on a free port.
if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus 2>/dev/null; then
  "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
