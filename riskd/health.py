"""/healthz and /readyz: is the daemon's loop turning, and may the exchange use it."""

from __future__ import annotations

import math
import time

from riskd.config import GovernorSettings
from riskd.engine import Engine
from riskd.feeds.base import Feed, LivenessSource
from riskd.publish.base import Publisher


def alive(last_cycle: float, publish_interval_s: float) -> tuple[bool, str]:
    """Alive while cycles run: none for 5 intervals (at least 5 s) is stuck."""
    idle = time.monotonic() - last_cycle
    return idle < max(5.0, 5 * publish_interval_s), f"last cycle {idle:.1f}s ago"


def not_ready(
    now: float,
    governor: GovernorSettings,
    feeds: list[Feed],
    engine: Engine,
    published: bool,
    publishers: list[Publisher],
) -> list[str]:
    """Why the daemon is not ready (none: ready), apart from its failed tasks."""
    reasons = []
    live = [f for f in feeds if isinstance(f, LivenessSource)]
    stale_after = governor.stale_after_s
    if not live and (not math.isfinite(now) or not (now - engine.now < stale_after)):
        reasons.append("feed_stale")
    for feed in live:
        # Per venue: one silent venue makes the daemon unready for its markets
        # (down; or silent, or none of its markets confirmed, for stale_after_s).
        if not feed.connected:
            reasons.append(f"feed_down:{feed.venue}")
        elif not (now - feed.heard_at < stale_after) or not engine.fresh_on(
            feed.sessions(), now, stale_after
        ):
            reasons.append(f"feed_stale:{feed.venue}")
    if not published:
        reasons.append("nothing_published")
    reasons += [f"publisher_failing:{p.name}" for p in publishers if not p.healthy()]
    return reasons
