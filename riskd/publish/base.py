"""The one small contract every publisher sink implements."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from riskd import wire


@dataclass
class Batch:
    """One published message: the envelope of interfaces.md around changed sets."""

    instance: str
    seq: int
    generated_at: str
    params: list[dict[str, Any]]
    # Markets whose set in this batch is tighter than their previous one (the
    # governor's `Decision.tightened`): publishers send these first. Not in the body.
    tightened: frozenset[str] = frozenset()
    # Clustered (riskd/cluster.py): {"shard": ..., "epoch": ...}, in the body.
    fence: dict[str, int] | None = None
    _body: bytes | None = field(default=None, repr=False)

    def body(self) -> bytes:
        if self._body is None:
            self._body = wire.batch(
                self.instance, self.seq, self.generated_at, self.params, fence=self.fence
            )
        return self._body


class Publisher(Protocol):
    """A sink for batches. `submit` never blocks the cycle; `drain` flushes on shutdown."""

    name: str

    async def start(self) -> None: ...

    def submit(self, batch: Batch) -> None: ...

    async def drain(self, timeout: float) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """False while the last attempt to deliver failed."""
        ...


def background_task(pub: Publisher) -> asyncio.Task[Any] | None:
    """The task a started publisher runs between batches, if it has one, for the
    daemon to supervise: its `task` attribute, else the `_task` the HTTP publisher
    keeps. A publisher whose task dies is restarted by `close()` then `start()`."""
    task = getattr(pub, "task", None)
    if task is None:
        task = getattr(pub, "_task", None)
    return task if isinstance(task, asyncio.Task) else None


class PublishStats(Protocol):
    """Where publishers report outcomes (the metrics module implements it)."""

    def published(self, publisher: str, result: str, latency_s: float | None) -> None: ...

    def circuit(self, publisher: str, is_open: bool) -> None: ...
