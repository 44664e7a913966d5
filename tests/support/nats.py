"""A real nats-server with JetStream on 127.0.0.1, for the cluster tests and
scripts/failover.py. `make test` installs Debian's `nats-server` when missing
(make test-tools)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.config import free_port


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )


class NatsServer:
    """One nats-server process; `stop` and `start` again keep its port and store (the
    JetStream state survives, as on a restarted server)."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server not found: run make test-tools")
        self.binary = binary
        self.store = store
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with (self.store.parent / f"nats-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
                + ["-sd", str(self.store)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("nats-server did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
