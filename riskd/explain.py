"""Why a market has its parameters: `GET /v1/explain/{market}` and `riskd explain`.

Read-only: the model is evaluated for the one market at the daemon clock with the
scenario-group detail (spec section 4), and the governor's conditions (section 5)
are restated from the same state the next cycle will use.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from riskd.model.governor import LEVERAGE_STEP, MODES, loosening_anchor
from riskd.model.groups import OI_CAP_BINDING
from riskd.model.parameters import BIT, SIDES, RiskInputs, Targets, reason_names
from riskd.model.scenarios import GROUP_NAMES
from riskd.timeutil import iso

if TYPE_CHECKING:
    from riskd.engine import Engine


def _num(x: float, digits: int = 6) -> float | None:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _time(t: float) -> str | None:
    return iso(float(t)) if math.isfinite(float(t)) else None


def explain(engine: Engine, market: str, now: float) -> dict[str, Any] | None:
    """The explanation document of `market` at `now`; None if the market is unknown."""
    i = engine.index.get(market)
    if i is None:
        return None
    meta = engine.meta[i]
    doc: dict[str, Any] = {
        "market": market,
        "title": meta.title if meta else "",
        "now": _time(now),
        "event_at": _time(engine.event_t[i]),
        "resolves_at": _time(engine.resolve_t[i]),
        "published": engine.current.get(market),
        "estimator": _estimator(engine, i),
    }
    if not math.isfinite(now):
        doc.update(inputs=None, model=None, governor=_governor(engine, i, now, None))
        doc["open_interest"] = None
        return doc
    idx = np.array([i])
    inp, tg = engine.targets(now, idx, detail=True)
    doc["inputs"] = _inputs(engine, inp, i)
    doc["freshness"] = _freshness(engine, idx)
    doc["model"] = _model(tg)
    capped = _open_interest(engine, i, inp, tg)
    doc["open_interest"] = capped[0] if capped is not None else None
    target = capped[1] if capped is not None else tg.max_leverage[0]
    doc["governor"] = _governor(engine, i, now, target)
    return doc


def _open_interest(
    engine: Engine, i: int, inp: RiskInputs, tg: Targets
) -> tuple[dict[str, Any], np.ndarray] | None:
    """The group stress (docs/model.md section 10) and whether the cap binds, with the
    leverage target under it; None without caps. The caps and the stress are those of
    the group's last computation (riskd/caps.py), the margins the model's now."""
    caps = engine.capping()
    if caps is None:
        return None
    idx = np.array([i])
    capped = caps.margins(idx, inp, tg, engine.settings.model.maintenance_ratio)
    unit = int(caps.unit[i])
    meta = engine.meta[i]
    sides: dict[str, Any] = {}
    for s, side in enumerate(SIDES):
        oi, cap = float(caps.oi[i, s]), float(caps.cap[i, s])
        sides[side] = {
            "open_interest": _num(oi),
            "oi_cap": _num(cap),
            "used": _num(oi / cap) if cap > 0.0 else None,
            "initial_margin": _num(capped.initial_margin[0, s]),
            "max_leverage": _num(capped.max_leverage[0, s]),
        }
    binding = bool(capped.reasons[0] & BIT[OI_CAP_BINDING])
    doc = {
        "group": caps.names[unit],
        "relation": meta.relation if meta is not None and meta.group is not None else None,
        "expected_shortfall": _num(caps.es[unit]),
        "budget": _num(caps.budget[unit]),
        "utilisation": _num(caps.utilisation(unit)),
        "computed_at": _time(caps.computed_t[unit]),
        "insurance_fund": _num(caps.fund),
        "exchange_state": "stale" if caps.stale else "fresh",
        "sides": sides,
        "binding": OI_CAP_BINDING if binding else None,
        "note": (
            "the group's expected shortfall of lender loss at today's open interest "
            "over its budget (its share of the fund above the socialisation threshold); "
            "margins rise from margin_ramp_start of the cap to the side's value at it "
            "(or at once while the exchange state is stale or missing)"
        ),
    }
    return doc, capped.max_leverage[0]


def _estimator(engine: Engine, i: int) -> dict[str, Any]:
    est = engine.est
    return {
        "ticks": int(est.ticks[i]),
        "jumps": int(est.jumps[i]),
        "last_tick_at": _time(est.t[i]),
        "last_jump_at": _time(est.last_jump_t[i]),
        "sigma2_per_s": _num(est.sigma2[i]),
        "lambda_per_s": _num(est.lam[i]),
        "J2": _num(est.J2[i]),
        "noise2": _num(est.noise2[i]),
        "gap_s": _num(est.gap[i]),
        "half_spread": _num(est.half_spread[i]),
        "depth": _num(est.depth[i]),
        "tick_size": _num(est.tick_size[i]),
    }


def _inputs(engine: Engine, inp: RiskInputs, i: int) -> dict[str, Any]:
    return {
        "p": _num(inp.p[0]),
        "tau_s": _num(inp.tau[0]),
        "sigma": _num(inp.sigma[0]),
        "lambda": _num(inp.lam[0]),
        "J": _num(inp.J[0]),
        "gap_s": _num(inp.gap[0]),
        "h_s": _num(inp.h[0]),
        "half_spread": _num(inp.half_spread[0]),
        # Liquidity (docs/model.md section 4): the depth used, the horizon without the
        # book's share, and what set h.
        "depth": _num(inp.depth[0]) if inp.depth is not None else None,
        "h0_s": _num(inp.h0[0]) if inp.h0 is not None else None,
        "book_ratio": _num(inp.book_ratio[0]) if inp.book_ratio is not None else None,
        "horizon": _horizon_reason(engine, inp, i),
    }


def _freshness(engine: Engine, idx: np.ndarray) -> dict[str, Any]:
    confirmed, booked = engine.freshness(idx)
    return {
        "confirmed_at": _time(confirmed[0]),
        "live_book": bool(booked[0]) if booked is not None else False,
        "rule": (
            "a book held on a live connection: confirmed by every sign of the connection's life"
            if booked is not None and booked[0]
            else "confirmed by messages about the market"
            if engine.link[idx[0]] >= 0
            else "a tape: each row confirms the price"
        ),
    }


def _model(tg: Targets) -> dict[str, Any]:
    """The model's targets before the governor, per side with the scenario groups."""
    sides: dict[str, Any] = {}
    for s, side in enumerate(SIDES):
        entry: dict[str, Any] = {
            "max_leverage": _num(tg.max_leverage[0, s]),
            "initial_margin": _num(tg.initial_margin[0, s]),
            "maintenance_margin": _num(tg.maintenance_margin[0, s]),
            "expected_shortfall": _num(tg.es[0, s]),
            "fee_rate_hourly": _num(tg.fee_rate_hourly[0, s]),
        }
        if tg.es_by_group is not None and tg.fee_by_group is not None:
            entry["margin_by_group"] = {
                name: _num(tg.es_by_group[0, s, k]) for k, name in enumerate(GROUP_NAMES)
            }
            entry["fee_by_group"] = {
                name: _num(tg.fee_by_group[0, s, k]) for k, name in enumerate(GROUP_NAMES)
            }
        sides[side] = entry
    return {
        "q_resolution_within_h": _num(tg.q[0]),
        "max_slippage": _num(tg.max_slippage[0]),
        "reasons": reason_names(int(tg.reasons[0])),
        "sides": sides,
        "note": (
            "targets before the governor; margin_by_group splits the expected "
            "shortfall by scenario group (resolution, news jump, diffusion), "
            "fee_by_group the lender's premium before the fee floor"
        ),
    }


def _governor(engine: Engine, i: int, now: float, target_lev: np.ndarray | None) -> dict[str, Any]:
    gcfg = engine.settings.governor
    est, g = engine.est, engine.gov
    last_tick, last_jump = float(est.t[i]), float(est.last_jump_t[i])
    event_t, resolve_t = float(engine.event_t[i]), float(engine.resolve_t[i])
    since_tick = now - last_tick
    since_jump = now - last_jump
    cooldown_until = last_jump + gcfg.jump_cooldown_s
    halt_until = last_jump + gcfg.halt_after_jump_s
    freeze_from = event_t - gcfg.freeze_before_resolution_s
    resolved = now >= resolve_t
    cond = engine.conditions(now, np.array([i]))
    out: dict[str, Any] = {
        "mode": MODES[int(g.mode[i])] if g.mode[i] >= 0 else None,
        "version": int(g.version[i]),
        "published_at": _time(g.published_at[i]),
        "valid_until": _time(g.valid_until[i]),
        "last_change_at": _time(g.changed_at[i]),
        "reasons": reason_names(int(g.reasons[i])),
        "stale": {
            "active": not (since_tick < gcfg.stale_after_s),
            "since_last_tick_s": _num(since_tick),
            "after_s": gcfg.stale_after_s,
        },
        "warming_up": not bool(cond.warm[0]),
        "jump_cooldown": {
            "active": bool(since_jump < gcfg.jump_cooldown_s),
            "until": _time(cooldown_until),
        },
        "halt": {
            "active": bool(since_jump < gcfg.halt_after_jump_s),
            "until": _time(halt_until) if gcfg.halt_after_jump_s > 0 else None,
        },
        "freeze": {"active": bool(now >= freeze_from and not resolved), "from": _time(freeze_from)},
        "resolved": bool(resolved),
        "override": None,
    }
    override = engine.overrides.get(engine.ids[i])
    if override is not None:
        out["override"] = override.as_dict()
    pending = _pending_loosening(engine, i, target_lev) if target_lev is not None else {}
    out["pending_loosening"] = pending or None
    out["loosening"] = {
        "max_step": gcfg.max_loosen_step,
        "interval_s": gcfg.loosen_interval_s,
        "deadband": gcfg.deadband,
    }
    return out


def _pending_loosening(engine: Engine, i: int, target_lev: np.ndarray) -> dict[str, Any]:
    """Per side whose target is above what is published: the governor's next step."""
    gcfg, g = engine.settings.governor, engine.gov
    pending: dict[str, Any] = {}
    if g.mode[i] < 0:
        return pending
    anchor = float(loosening_anchor(g, engine.est.last_jump_t, gcfg.jump_cooldown_s)[i])
    for s, side in enumerate(SIDES):
        published = float(g.leverage[i, s])
        # Published values move in LEVERAGE_STEP steps (rounded down).
        target = math.floor(float(target_lev[s]) / LEVERAGE_STEP + 1e-9) * LEVERAGE_STEP
        if target > published + 1e-9:
            step = min(target, published * (1 + gcfg.max_loosen_step))
            pending[side] = {
                "published_max_leverage": _num(published),
                "target_max_leverage": _num(target),
                "next_step_max_leverage": _num(step),
                "next_step_not_before": _time(anchor + gcfg.loosen_interval_s)
                if math.isfinite(anchor)
                else None,
                # A step smaller than the deadband is not published on its own.
                "held_by_deadband": step / published - 1.0 < gcfg.deadband,
            }
    return pending


def format_text(doc: dict[str, Any]) -> str:
    """The explanation as a few readable blocks (`riskd explain`)."""
    lines: list[str] = []
    title = f" ({doc['title']})" if doc.get("title") else ""
    lines.append(f"market {doc['market']}{title} at {doc.get('now')}")
    lines.append(f"  event at {doc.get('event_at')}, resolves at {doc.get('resolves_at')}")
    pub = doc.get("published")
    if pub:
        lev, fee = pub["max_leverage"], pub["fee_rate_hourly"]
        lines.append(
            f"published v{pub['version']}: mode {pub['mode']}, max leverage "
            f"long {lev['long']}x / short {lev['short']}x, fee/h long "
            f"{fee['long']:.3g} / short {fee['short']:.3g}, max slippage "
            f"{pub['max_slippage']:.3g}, valid until {pub['valid_until']}"
        )
        lines.append(f"  reasons: {', '.join(pub['reasons']) or 'none'}")
    else:
        lines.append("published: nothing yet")
    inp = doc.get("inputs")
    if inp:
        lines.append("inputs: " + ", ".join(f"{k} {_fmt(v)}" for k, v in inp.items()))
    e = doc["estimator"]
    lines.append(
        f"estimator: {e['ticks']} ticks, {e['jumps']} jumps, last tick "
        f"{e['last_tick_at']}, last jump {e['last_jump_at']}"
    )
    if doc.get("model"):
        lines += _model_lines(doc["model"])
    lines += _governor_lines(doc["governor"])
    if doc.get("open_interest"):
        lines += _open_interest_lines(doc["open_interest"])
    return "\n".join(lines) + "\n"


def _open_interest_lines(oi: dict[str, Any]) -> list[str]:
    """The group stress and, per side, the open interest against its cap."""
    lines = [
        f"open interest: group {oi['group'] or '(alone)'}, ES {_fmt(oi['expected_shortfall'])}"
        f" of budget {_fmt(oi['budget'])} (utilisation {_fmt(oi['utilisation'])}), "
        f"exchange state {oi['exchange_state']}, binding: {oi['binding'] or 'none'}"
    ]
    for side, s in oi["sides"].items():
        lines.append(
            f"  {side:<6} open interest {_fmt(s['open_interest'])} of cap {_fmt(s['oi_cap'])}"
            f" -> margin {_fmt(s['initial_margin'])}, max leverage {_fmt(s['max_leverage'])}"
        )
    return lines


def _model_lines(model: dict[str, Any]) -> list[str]:
    """The model's targets: a summary line, then a table of the sides."""
    lines = [
        f"model (before the governor): q(resolution within h) "
        f"{_fmt(model['q_resolution_within_h'])}, max slippage "
        f"{_fmt(model['max_slippage'])}, reasons "
        f"{', '.join(model['reasons']) or 'none'}"
    ]
    lines.append(
        f"  {'side':<6} {'lev':>7} {'margin':>9} {'ES':>9}  "
        + "  ".join(f"{g + ' ES':>14}" for g in GROUP_NAMES)
        + f"  {'fee/h':>10}  "
        + "  ".join(f"{g + ' fee':>15}" for g in GROUP_NAMES)
    )
    for side, s in model["sides"].items():
        row = (
            f"  {side:<6} {_fmt(s['max_leverage']):>7} {_fmt(s['initial_margin']):>9} "
            f"{_fmt(s['expected_shortfall']):>9}  "
        )
        row += "  ".join(f"{_fmt(s.get('margin_by_group', {}).get(g)):>14}" for g in GROUP_NAMES)
        row += f"  {_fmt(s['fee_rate_hourly']):>10}  "
        row += "  ".join(f"{_fmt(s.get('fee_by_group', {}).get(g)):>15}" for g in GROUP_NAMES)
        lines.append(row)
    return lines


def _governor_lines(gov: dict[str, Any]) -> list[str]:
    """The governor: what is active, then what waits (cool-down, freeze, loosening)."""
    active = [name for name in ("stale", "jump_cooldown", "halt", "freeze") if gov[name]["active"]]
    if gov["warming_up"]:
        active.append("warming_up")
    if gov["resolved"]:
        active.append("resolved")
    lines = [
        f"governor: v{gov['version']} mode {gov['mode']}, active: {', '.join(active) or 'nothing'}"
    ]
    if gov["jump_cooldown"]["active"]:
        lines.append(f"  jump cool-down until {gov['jump_cooldown']['until']}")
    if gov["freeze"]["from"]:
        lines.append(f"  resolution freeze from {gov['freeze']['from']}")
    for side, p in (gov.get("pending_loosening") or {}).items():
        held = " (under the deadband: held)" if p["held_by_deadband"] else ""
        lines.append(
            f"  pending loosening {side}: {_fmt(p['published_max_leverage'])}x -> "
            f"target {_fmt(p['target_max_leverage'])}x, next step "
            f"{_fmt(p['next_step_max_leverage'])}x not before "
            f"{p['next_step_not_before']}{held}"
        )
    if gov.get("override"):
        o = gov["override"]
        lines.append(
            f"  override: mode {o['mode']}, max leverage {o['max_leverage']}, "
            f"loosen {o['loosen']}, by {o['actor'] or '?'}: {o['note'] or '-'}"
        )
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _horizon_reason(engine: Engine, inp: RiskInputs, i: int) -> str:
    """Why h is what it is (docs/model.md section 4)."""
    cfg = engine.settings.model
    h = float(inp.h[0])
    h0 = h if inp.h0 is None else float(inp.h0[0])
    depth = math.nan if inp.depth is None else float(inp.depth[0])
    if h > h0:
        return (
            f"a thin book: {depth:g} shares within max_slippage of the mid, against a "
            f"reference position of {float(engine.notional[i]):g} (book_ratio > 1): "
            f"the rest waits for the book to refill (book_refill_s each)"
        )
    if h > cfg.liquidation_horizon_s:
        return "sparse prices: k_liquidity times the gap between confirmations"
    if math.isfinite(depth):
        return "the book covers the reference position: the base horizon"
    return "the base horizon (liquidation_horizon_s)"
