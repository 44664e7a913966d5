"""Publishers by name (`[publisher.<name>]`), each built the same way: from its config
section and what every publisher may need of the daemon (`PublishContext`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from riskd.publish.base import Publisher, PublishStats
from riskd.publish.http import DeliveryPolicy, HttpPublisher
from riskd.publish.jsonl import JsonlPublisher
from riskd.publish.nats import NatsPublisher
from riskd.publish.websocket import WebsocketPublisher

if TYPE_CHECKING:
    from riskd.config import (
        HttpPublisherSettings,
        JsonlPublisherSettings,
        NatsPublisherSettings,
        PublisherSettings,
        WebsocketPublisherSettings,
    )


@dataclass(frozen=True)
class PublishContext:
    metrics: PublishStats
    instance: str  # `[publisher] instance`, in every message
    snapshot: Callable[[], bytes]  # what a /v1/stream client gets on connect
    # A stream client's message (an exchange state report) and its answer frame.
    on_message: Callable[[str], bytes | None] | None = None
    max_message_bytes: int = 4096  # the largest message a stream client may send
    # The engine's market id -> row (`Engine.index`, grown in place, rows never move):
    # per-market values a publisher keeps by row rather than in a dict (riskd/rows.py).
    rows: Mapping[str, int] | None = None


Builder = Callable[[Any, PublishContext], Publisher]


def _jsonl(cfg: JsonlPublisherSettings, ctx: PublishContext) -> Publisher:
    return JsonlPublisher(cfg.path, ctx.metrics, cfg.fsync, cfg.max_bytes, cfg.backups)


def _http(cfg: HttpPublisherSettings, ctx: PublishContext) -> Publisher:
    return HttpPublisher(
        cfg.url,
        cfg.secret_bytes(),
        ctx.instance,
        ctx.metrics,
        cfg.timeout_s,
        DeliveryPolicy.from_settings(cfg),
        ctx.rows,
    )


def _websocket(cfg: WebsocketPublisherSettings, ctx: PublishContext) -> Publisher:
    return WebsocketPublisher(cfg, ctx.metrics, ctx.snapshot, ctx.on_message, ctx.max_message_bytes)


def _nats(cfg: NatsPublisherSettings, ctx: PublishContext) -> Publisher:
    return NatsPublisher(cfg, ctx.metrics)


# In the order the daemon hands each batch to them: the audit log first.
BUILDERS: dict[str, Builder] = {
    "jsonl": _jsonl,
    "http": _http,
    "websocket": _websocket,
    "nats": _nats,
}


def make_publishers(
    cfg: PublisherSettings, ctx: PublishContext, only: Collection[str] | None = None
) -> list[Publisher]:
    """One publisher per `[publisher.<name>]` section present (of `only`'s names)."""
    names = [name for name in BUILDERS if only is None or name in only]
    sections = {name: getattr(cfg, name) for name in names}
    return [BUILDERS[name](sections[name], ctx) for name in names if sections[name] is not None]
