"""Replicas on NATS JetStream: shard leases with fencing, warm standbys (docs/scaling.md).

Every replica consumes the same feeds and runs the same engine; a shard's markets
(a stable hash of the market id) are published only by the holder of the shard's
lease, a key in a JetStream key-value bucket whose TTL is `lease_ttl_s`. The lease is
taken with compare-and-set (`create`) and renewed with `update(last=revision)`; the
revision at which it was taken is the term's `epoch`, carried in every batch so that
the receiver can refuse an older term. A leader that has not renewed in time stops
publishing the shard at once: silent rather than split-brained.
A standby does not wait for a dead leader's TTL: it watches the leases and takes
over by compare-and-set on a revision it has seen unchanged for longer than the
leader may publish under it (`TAKEOVER_MARGIN`; the argument is in docs/scaling.md).

Each shard batch is first written to a JetStream stream (subject <subject>.<shard>,
only if nothing else wrote there since this term's last write), then handed to the
publishers. A new leader reads the last batch there and every set the stream still
holds for its shard: its seqs continue above them, and its governor starts no looser
than what was last in force (`state.hold_published`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import numpy as np
import orjson
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, Header, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from riskd.config import ClusterSettings
from riskd.engine import Engine
from riskd.publish.base import Batch, Publisher, background_task
from riskd.state import hold_published

log = logging.getLogger("riskd.cluster")

# Publishers whose messages reach the exchange: one per shard, fenced by the term.
FENCED = ("http",)
# Renewals and attempts to take free shards per lease TTL.
TICKS_PER_TTL = 8
# A leader stops publishing this far into the TTL after its last renewal was sent:
# the lease lapses at the server no sooner than a TTL after it arrived there.
FENCE_FRACTION = 0.75
# A standby takes a lease over once its revision has not changed for this much more
# of the TTL on the standby's own clock (it saw the revision after it was sent, so
# the leader has stopped by then): compare-and-set on that revision, no wait for the
# TTL. The margin covers clock rate drift and a late timer in the leader.
TAKEOVER_MARGIN = 0.1
# Messages a lost leader's HTTP publisher may have sent after its last write to the
# stream, per second of the TTL (retries, a large batch in several requests): the
# next leader's HTTP seq starts this far above the recorded one.
HTTP_SEQ_RATE = 10_000
HTTP_SEQ_HEADER = "Riskd-Http-Seq"


def shard_of(market: str, shards: int) -> int:
    """The shard of a market: the same on every replica and every run."""
    return zlib.crc32(market.encode()) % shards


def replica_name(cfg: ClusterSettings) -> str:
    return cfg.replica or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Term:
    """This replica's leadership of one shard."""

    shard: int
    epoch: int  # the lease key's revision when taken
    revision: int  # its revision after the last renewal
    deadline: float  # loop time: no publishing from then on
    seq: int = 0  # the shard's last batch seq
    stream_seq: int = 0  # the stream sequence of the shard's last batch
    publishers: list[Publisher] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    def valid(self, now: float) -> bool:
        return now < self.deadline


class Cluster:
    """The leases this replica holds and the shard batches it publishes under them.

    `fenced(instance)` builds a shard's exchange-facing publishers; `local` are the
    replica's own (the audit log, /v1/stream): they get what it publishes as leader."""

    def __init__(
        self,
        cfg: ClusterSettings,
        instance: str,
        engine: Engine,
        local: list[Publisher],
        fenced: Callable[[str], list[Publisher]],
    ) -> None:
        self.cfg = cfg
        self.instance = instance
        self.engine = engine
        self.local = local
        self.fenced = fenced
        self.replica = replica_name(cfg)
        self.ttl = cfg.lease_ttl_s
        self.terms: dict[int, Term] = {}
        self.live = 1  # replicas present, this one included
        self.latest: dict[str, dict[str, Any]] = {}  # market -> newest set in the stream
        self.followed = 0  # stream sequence of the last batch read
        # shard -> (its lease's revision, loop time this replica first saw it)
        self.seen: dict[int, tuple[int, float]] = {}
        self._shards: dict[str, int] = {}
        self._queue: asyncio.Queue[tuple[int, int, Batch]] = asyncio.Queue()
        self._closing: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._nc: Any = None
        self._js: JetStreamContext | None = None
        self._leases: KeyValue | None = None

    # --- what the pipeline calls --------------------------------------------------

    def shard(self, market: str) -> int:
        shard = self._shards.get(market)
        if shard is None:
            shard = self._shards[market] = shard_of(market, self.cfg.shards)
        return shard

    def submit(self, batch: Batch) -> None:
        """A cycle's batch: the part of each shard this replica leads, queued for the
        stream and then the publishers; the rest is dropped (another replica's)."""
        parts: dict[int, list[dict[str, Any]]] = {}
        for entry in batch.params:
            parts.setdefault(self.shard(entry["market"]), []).append(entry)
        now = asyncio.get_running_loop().time()
        for shard, params in parts.items():
            term = self.terms.get(shard)
            if term is None or not term.valid(now):
                continue
            term.seq += 1
            markets = {e["market"] for e in params}
            self._queue.put_nowait(
                (
                    shard,
                    term.epoch,
                    Batch(
                        f"{self.instance}/{shard}",
                        term.seq,
                        batch.generated_at,
                        params,
                        tightened=batch.tightened & markets,
                        fence={"shard": shard, "epoch": term.epoch},
                    ),
                )
            )

    def leading(self) -> list[int]:
        return sorted(self.terms)

    # --- the tasks ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, then hold leases and publish until cancelled."""
        try:
            await self._connect()
            await self._follow()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send(), name="cluster-send")
                group.create_task(self._leases_loop(), name="cluster-leases")
                group.create_task(self._watch(), name="cluster-watch")
        finally:
            for term in list(self.terms.values()):
                self._drop(term, "cluster task ended")
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
                self._nc = None

    async def _connect(self) -> None:
        async def quiet(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        while True:
            try:
                self._nc = await nats.connect(
                    self.cfg.nats_url,
                    connect_timeout=max(0.2, self.ttl / 2),
                    reconnect_time_wait=min(0.2, self.ttl / TICKS_PER_TTL),
                    max_reconnect_attempts=-1,
                    error_cb=quiet,
                )
                break
            except Exception as exc:  # not up yet: no leases, nothing published
                log.warning("cluster: cannot reach %s: %s", self.cfg.nats_url, exc)
                await asyncio.sleep(self.ttl / 2)
        self._js = self._nc.jetstream(timeout=max(0.1, self.ttl / TICKS_PER_TTL * 2))
        await self._create_stores()
        log.info("cluster: replica %s on %s", self.replica, self.cfg.nats_url)

    async def _create_stores(self) -> None:
        assert self._js is not None
        js, cfg = self._js, self.cfg
        # File storage: epochs (revisions) must go on rising after a server restart.
        self._leases = await js.create_key_value(
            KeyValueConfig(bucket=cfg.bucket, ttl=self.ttl, history=1, storage=StorageType.FILE)
        )
        await js.create_key_value(
            KeyValueConfig(
                bucket=self._presence_bucket,
                ttl=2 * self.ttl,
                history=1,
                storage=StorageType.FILE,
            )
        )
        stream = StreamConfig(
            name=cfg.stream,
            subjects=[f"{cfg.subject}.*"],
            max_age=cfg.history_s,
            storage=StorageType.FILE,
        )
        try:
            await js.add_stream(stream)
        except BadRequestError:  # there with other limits: take ours
            await js.update_stream(stream)

    @property
    def _presence_bucket(self) -> str:
        return f"{self.cfg.bucket}_replicas"

    async def _follow(self) -> None:
        """Read every batch in the stream as it comes: the newest set of each market."""
        assert self._js is not None

        async def took(msg: Any) -> None:
            try:
                doc = orjson.loads(msg.data)
                self._note(doc["params"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("cluster: an unreadable batch in the stream")
            self.followed = max(self.followed, msg.metadata.sequence.stream)

        await self._js.subscribe(
            f"{self.cfg.subject}.*",
            cb=took,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )

    def _note(self, params: list[dict[str, Any]]) -> None:
        latest = self.latest
        for entry in params:
            have = latest.get(entry["market"])
            if have is None or entry["version"] >= have["version"]:
                latest[entry["market"]] = entry

    async def _send(self) -> None:
        """Each queued shard batch: to the stream, then (still leading) to the publishers."""
        assert self._js is not None
        loop = asyncio.get_running_loop()
        while True:
            shard, epoch, batch = await self._queue.get()
            term = self.terms.get(shard)
            if term is None or term.epoch != epoch or not term.valid(loop.time()):
                continue
            headers = {
                Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(term.stream_seq),
                HTTP_SEQ_HEADER: str(_http_seq(term.publishers)),
            }
            try:
                ack = await self._js.publish(
                    f"{self.cfg.subject}.{shard}", batch.body(), headers=headers
                )
            except Exception as exc:  # another writer, or no server: nothing goes out
                self._drop(term, f"cannot write to the stream: {exc!r}")
                continue
            term.stream_seq = ack.seq
            if self.terms.get(shard) is not term or not term.valid(loop.time()):
                continue
            for pub in (*self.local, *term.publishers):
                try:
                    pub.submit(batch)
                except Exception:  # one sink failing never blocks another
                    log.exception("publisher %s failed to take a batch", pub.name)

    # --- leases -------------------------------------------------------------------

    async def _leases_loop(self) -> None:
        tick = 0
        while True:
            if tick % (TICKS_PER_TTL // 2) == 0:
                await self._presence()
            tick += 1
            for term in list(self.terms.values()):
                await self._renew(term)
            target = math.ceil(self.cfg.shards / max(1, self.live))
            excess = len(self.terms) - target
            if excess > 0:
                for shard in sorted(self.terms, reverse=True)[:excess]:
                    await self._release(self.terms[shard], "rebalancing")
            elif excess < 0 and not self._stopping:
                await self._take(target)
            await asyncio.sleep(self._pause(target))

    def _pause(self, target: int) -> float:
        """Until the next tick, or sooner when a lease this replica wants goes stale."""
        pause = self.ttl / TICKS_PER_TTL
        if len(self.terms) < target and not self._stopping:
            now = asyncio.get_running_loop().time()
            for shard in self.seen.keys() - self.terms.keys():
                # One already stale, and not taken, waits for the next tick.
                stale_in = self._stale_at(shard) - now
                if stale_in > 0:
                    pause = min(pause, stale_in)
        return pause

    def _stale_at(self, shard: int) -> float:
        """When the holder of the shard's lease, as last seen, has surely stopped."""
        _, seen_at = self.seen[shard]
        return seen_at + (FENCE_FRACTION + TAKEOVER_MARGIN) * self.ttl

    async def _watch(self) -> None:
        """Every change of a lease, noted on this replica's clock when it is seen."""
        assert self._leases is not None
        while True:
            try:
                watcher = await self._leases.watchall()
                async for entry in watcher:
                    if entry is None or not entry.key.startswith("shard-"):
                        continue
                    self._saw(int(entry.key.removeprefix("shard-")), entry)
            except Exception as exc:  # no server: the TTL still frees the leases
                log.debug("cluster: watching the leases: %r", exc)
                await asyncio.sleep(self.ttl / TICKS_PER_TTL)

    def _saw(self, shard: int, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE"):
            self.seen.pop(shard, None)
            return
        have = self.seen.get(shard)
        if have is None or have[0] != entry.revision:
            self.seen[shard] = (entry.revision, asyncio.get_running_loop().time())

    async def _presence(self) -> None:
        """Say this replica is here; count the replicas that said so within 2 TTLs."""
        assert self._js is not None
        try:
            presence = await self._js.key_value(self._presence_bucket)
            await presence.put(self.replica, b"")
            info = await self._js.stream_info(f"KV_{self._presence_bucket}", subjects_filter=">")
            self.live = max(1, len(info.state.subjects or {}))
        except Exception as exc:
            log.debug("cluster: presence: %r", exc)

    def _key(self, shard: int) -> str:
        return f"shard-{shard}"

    async def _renew(self, term: Term) -> None:
        assert self._leases is not None
        sent = asyncio.get_running_loop().time()
        try:
            revision = await self._leases.update(
                self._key(term.shard), self.replica.encode(), last=term.revision
            )
        except KeyWrongLastSequenceError:
            self._drop(term, "lease lost")
            return
        except Exception as exc:  # the deadline stops the publishing if this goes on
            log.debug("cluster: renewing shard %d: %r", term.shard, exc)
            return
        if self.terms.get(term.shard) is not term:
            await self._release(term, "renewed after its deadline")
            return
        term.revision = revision
        self._arm(term, sent + FENCE_FRACTION * self.ttl)

    async def _take(self, target: int) -> None:
        """Free shards, in this replica's own order (replicas try different ones first)."""
        assert self._leases is not None
        order = sorted(
            range(self.cfg.shards), key=lambda s: zlib.crc32(f"{self.replica}/{s}".encode())
        )
        for shard in order:
            if len(self.terms) >= target:
                return
            if shard in self.terms:
                continue
            sent = asyncio.get_running_loop().time()
            try:
                revision = await self._claim(shard, sent)
            except KeyWrongLastSequenceError:
                continue  # held by another replica
            except Exception as exc:
                log.debug("cluster: taking shard %d: %r", shard, exc)
                return
            term = Term(shard, revision, revision, sent + FENCE_FRACTION * self.ttl)
            try:
                await self._catch_up(term)
            except Exception as exc:
                log.warning("cluster: shard %d: cannot read the stream: %r", shard, exc)
                await self._release(term, "no catch-up")
                continue
            await self._lead(term)

    async def _claim(self, shard: int, now: float) -> int:
        """The shard's lease: over from a holder gone silent (compare-and-set on the
        revision seen, which its renewal would have changed), or created when free."""
        assert self._leases is not None
        key, value = self._key(shard), self.replica.encode()
        seen = self.seen.get(shard)
        if seen is not None and now >= self._stale_at(shard):
            with contextlib.suppress(KeyWrongLastSequenceError):
                revision = await self._leases.update(key, value, last=seen[0])
                log.info("cluster: shard %d taken over from revision %d", shard, seen[0])
                return revision
        return await self._leases.create(key, value)

    async def _catch_up(self, term: Term) -> None:
        """Before a new term publishes: its seqs above the shard's last batch, and the
        governor of its markets no looser than the sets still in force."""
        assert self._js is not None
        subject = f"{self.cfg.subject}.{term.shard}"
        http_seq = 0
        try:
            last = await self._js.get_last_msg(self.cfg.stream, subject)
        except NotFoundError:
            last = None
        if last is not None and last.data:
            doc = orjson.loads(last.data)
            term.seq, term.stream_seq = int(doc["seq"]), int(last.seq or 0)
            http_seq = int((last.headers or {}).get(HTTP_SEQ_HEADER, 0))
            http_seq += int(HTTP_SEQ_RATE * self.ttl) + 1000
            # The follower may not have read up to it yet.
            for _ in range(20):
                if self.followed >= term.stream_seq:
                    break
                await asyncio.sleep(0.01)
            self._note(doc["params"])
        term.publishers = self.fenced(f"{self.instance}/{term.shard}")
        for pub in term.publishers:
            if isinstance(getattr(pub, "seq", None), int):
                pub.seq = max(pub.seq, http_seq)  # type: ignore[attr-defined]
            if hasattr(pub, "fence"):
                pub.fence = {"shard": term.shard, "epoch": term.epoch}
        self._hold(term.shard)

    def _hold(self, shard: int) -> None:
        """The shard's markets: held at their last sets in force and republished in
        the next cycle with higher versions (the exchange hears the new term at once)."""
        engine = self.engine
        rows = [i for i, m in enumerate(engine.ids) if self.shard(m) == shard]
        held = hold_published(
            engine, {m: e for m, e in self.latest.items() if self.shard(m) == shard}
        )
        if rows:
            idx = np.array(rows, dtype=np.int64)
            engine.gov.valid_until[idx] = np.nan
            engine.due_t[idx] = -np.inf
        log.info(
            "cluster: shard %d: %d markets, %d held at the sets in force",
            shard,
            len(rows),
            held,
            extra={"shard": shard},
        )

    async def _lead(self, term: Term) -> None:
        for pub in term.publishers:
            await pub.start()
        if not term.valid(asyncio.get_running_loop().time()):
            await self._release(term, "took too long to start")
            return
        self.terms[term.shard] = term
        self._arm(term, term.deadline)
        log.info(
            "cluster: leading shard %d, epoch %d",
            term.shard,
            term.epoch,
            extra={"shard": term.shard, "epoch": term.epoch, "reason": "lease_taken"},
        )

    def _arm(self, term: Term, deadline: float) -> None:
        """Stop publishing the shard at `deadline` unless renewed before."""
        term.deadline = deadline
        if term.timer is not None:
            term.timer.cancel()
        loop = asyncio.get_running_loop()
        term.timer = loop.call_at(deadline, self._drop, term, "lease not renewed in time")

    def _drop(self, term: Term, why: str) -> None:
        """Stop publishing the shard now: its pending messages are dropped, a request
        in flight is cancelled."""
        if term.timer is not None:
            term.timer.cancel()
        if self.terms.get(term.shard) is not term:
            return
        del self.terms[term.shard]
        term.deadline = -math.inf
        for pub in term.publishers:
            task = background_task(pub)
            if task is not None:
                task.cancel()
        closing = asyncio.ensure_future(_close_all(term.publishers))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        log.warning(
            "cluster: stopped publishing shard %d (epoch %d): %s",
            term.shard,
            term.epoch,
            why,
            extra={"shard": term.shard, "epoch": term.epoch, "reason": "lease_dropped"},
        )

    async def _release(self, term: Term, why: str) -> None:
        """Stop publishing, then free the lease for another replica at once."""
        self._drop(term, why)
        if self._leases is None:
            return
        with contextlib.suppress(Exception):
            await self._leases.delete(self._key(term.shard), last=term.revision)

    async def stop(self, deadline: float) -> None:
        """Shutdown: what is queued goes out (bounded by `deadline`), then the leases
        are released so that a standby takes over without waiting for the TTL."""
        self._stopping = True
        terms = list(self.terms.values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while not self._queue.empty() and self.terms:
                    await asyncio.sleep(0.01)
                await asyncio.gather(*(p.drain(deadline) for t in terms for p in t.publishers))
        for term in terms:
            await self._release(term, "shutting down")
        await asyncio.gather(*self._closing, return_exceptions=True)


def _http_seq(publishers: list[Publisher]) -> int:
    return max((getattr(p, "seq", 0) for p in publishers), default=0)


async def _close_all(publishers: list[Publisher]) -> None:
    for pub in publishers:
        with contextlib.suppress(Exception):
            await pub.close()
