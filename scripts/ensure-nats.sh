#!/usr/bin/env bash
# `make test` runs this: the cluster tests (tests/test_cluster.py) and
# scripts/failover.py start their own `nats-server` (JetStream) on 127.0.0.1.
# Debian's `nats-server` package ships it (2.9: key-value buckets with a TTL and
# compare-and-set, which the leases use). Nothing happens when it is already there.
# Otherwise it is installed non-interactively, as root (CI) or with passwordless sudo;
# without either, this only says how, and those tests skip (under CI=true they fail).
set -euo pipefail

if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: nats-server not found and no apt-get here; install nats-server (2.9 or" \
       "later) to run tests/test_cluster.py" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "note: nats-server not found; to run tests/test_cluster.py:" \
       "sudo apt-get install --no-install-recommends nats-server" >&2
  exit 0
fi

echo "installing Debian package nats-server for the cluster tests" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends nats-server >/dev/null
# The tests start their own server on a free port; a system service is not needed.
if [ -d /run/systemd/system ] && systemctl is-active --quiet nats-server 2>/dev/null; then
  "${sudo[@]}" systemctl disable --now nats-server >/dev/null 2>&1 || true
fi
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]
