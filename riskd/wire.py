"""The published wire format (docs/interfaces.md): parameter sets and their envelopes.

The one place that knows the field names, the rounding and the batch envelope. The
engine hands over the numbers of the sets (`SetRows`, whole arrays); every publisher,
the stream's snapshot and the API send what this module makes of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from riskd.jit import njit
from riskd.model.governor import MODES
from riskd.model.parameters import SIDES, reason_names
from riskd.timeutil import iso

SOURCE = "riskd"
# The RiskInputs fields a set carries, in the column order of `SetRows.inputs` (the
# engine stores the published inputs so); published as p, tau_s, sigma, lambda, J, h_s.
INPUTS = ("p", "tau", "sigma", "lam", "J", "h")
# Times are rounded to decimal places, every other number to significant digits.
_INPUT_PLACES = {"tau": 3, "h": 3}
_LEVERAGE_PLACES = 2


@dataclass(frozen=True, slots=True)
class SetRows:
    """The numbers of some published sets, one row per market."""

    markets: list[str]
    version: np.ndarray
    mode: np.ndarray  # index into MODES
    leverage: np.ndarray  # (n, 2): the sides in SIDES order, as are the margins and fees
    initial_margin: np.ndarray
    maintenance_margin: np.ndarray
    fee_hourly: np.ndarray
    slippage: np.ndarray
    valid_until: np.ndarray  # unix seconds
    reasons: np.ndarray  # bitmask (riskd/model/parameters.py REASONS)
    inputs: np.ndarray  # (n, len(INPUTS))
    # (n, 2) lent notional caps with [insurance] (inf or nan: none on that side);
    # None: no caps at all, `"oi_cap": null`.
    oi_cap: np.ndarray | None = None


# `param_sets` rounds one array, columns: leverage (2), initial margin (2),
# maintenance margin (2), fee (2), slippage, the inputs (INPUTS order); the decimal
# places of the columns rounded to places (the others: 6 significant digits).
_INPUT_COLUMN = 9
_PLACES = {
    0: _LEVERAGE_PLACES,
    1: _LEVERAGE_PLACES,
    **{_INPUT_COLUMN + INPUTS.index(name): places for name, places in _INPUT_PLACES.items()},
}


def param_sets(rows: SetRows) -> list[dict[str, Any]]:
    """The published sets of `rows`. The numbers are rounded for all rows at once, in
    one pass over one array (each number's rounding is its own: the pass's cost is
    per call); the loop only builds the dicts (it runs for every market that changed)."""
    long, short = SIDES
    values = np.concatenate(
        [
            rows.leverage,
            rows.initial_margin,
            rows.maintenance_margin,
            rows.fee_hourly,
            rows.slippage[:, None],
            rows.inputs,
        ],
        axis=1,
    )
    places = _significant_places(values)
    for column, fixed in _PLACES.items():
        places[:, column] = fixed
    rounded = round_places(values, places).tolist()
    caps = _caps(rows.oi_cap, len(rows.markets))
    until = rows.valid_until.tolist()
    until_text = {t: _iso(t) for t in set(until)}  # the sets of a cycle share their expiry
    reasons = rows.reasons.tolist()
    names = {mask: _reason_names(mask) for mask in set(reasons)}
    out = []
    for market, version, mode, v, cap, t, mask in zip(
        rows.markets,
        rows.version.tolist(),
        rows.mode.tolist(),
        rounded,
        caps,
        until,
        reasons,
        strict=True,
    ):
        out.append(
            {
                "market": market,
                "version": version,
                "mode": MODES[mode],
                "max_leverage": {long: v[0], short: v[1]},
                "initial_margin": {long: v[2], short: v[3]},
                "maintenance_margin": {long: v[4], short: v[5]},
                "fee_rate_hourly": {long: v[6], short: v[7]},
                "max_slippage": v[8],
                "oi_cap": cap,
                "valid_until": until_text[t],
                "reasons": list(names[mask]),
                "inputs": {
                    "p": v[9],
                    "tau_s": v[10],
                    "sigma": v[11],
                    "lambda": v[12],
                    "J": v[13],
                    "h_s": v[14],
                },
            }
        )
    return out


def _caps(oi_cap: np.ndarray | None, n: int) -> list[dict[str, float | None] | None]:
    """Per set its `oi_cap`: {"long", "short"} in quote units, null on a side without
    one (infinite: nothing is lent at its margin); all null without caps."""
    if oi_cap is None:
        return [None] * n
    long, short = SIDES
    rounded = round_sig(oi_cap)
    known = np.isfinite(rounded)
    return [
        {long: a if ka else None, short: b if kb else None}
        for (a, b), (ka, kb) in zip(rounded.tolist(), known.tolist(), strict=True)
    ]


def batch(
    instance: str,
    seq: int,
    generated_at: str,
    params: Sequence[dict[str, Any] | orjson.Fragment],
    snapshot: bool = False,
    fence: dict[str, int] | None = None,
) -> bytes:
    """The batch envelope around sets, as sent by every publisher; `snapshot` marks what
    a /v1/stream client gets on connect; `fence` (clustered only) the shard and epoch."""
    doc: dict[str, Any] = {
        "source": SOURCE,
        "instance": instance,
        "seq": seq,
        "generated_at": generated_at,
    }
    if snapshot:
        doc["snapshot"] = True
    if fence:
        doc.update(fence)
    doc["params"] = params
    return orjson.dumps(doc)


def current(generated_at: str, params: list[dict[str, Any]]) -> bytes:
    """Every current set, as `GET /v1/params` answers."""
    return orjson.dumps({"generated_at": generated_at, "params": params})


def round_places(x: np.ndarray, places: int | np.ndarray) -> np.ndarray:
    """Python's round(v, places) of every value: the float nearest to v rounded to that
    many decimal places, half to even on v's exact binary value.

    Scaled by a power of ten, rounded and scaled back, which is exact (the quotient or
    product of two exact numbers, correctly rounded) except where the scaled value lies
    within rounding error of a half: those few go through round() itself. One compiled
    pass (`_round_scaled`): a cycle's sets are rounded in one call, whose cost was its
    dozen numpy calls."""
    x = np.asarray(x, dtype=np.float64)
    places = np.broadcast_to(np.asarray(places, dtype=np.int64), x.shape)
    values = np.ascontiguousarray(x).reshape(-1)
    digits = np.ascontiguousarray(places).reshape(-1)
    out = np.empty_like(values)
    slow = np.empty(values.shape, np.bool_)
    if _round_scaled(values, digits, _POWERS_OF_TEN, out, slow):
        out[slow] = [
            round(v, p) for v, p in zip(values[slow].tolist(), digits[slow].tolist(), strict=True)
        ]
    return out.reshape(x.shape)


# 10 ** k as numpy's power gives it, k = 0 .. 22 (each exact: 10**22 is the largest).
_POWERS_OF_TEN = 10.0 ** np.arange(23)


@njit
def _round_scaled(x, places, powers, out, slow):  # type: ignore[no-untyped-def]
    """`round_places`' exact values into `out`, and `slow`: the values round() must
    take (a power of ten beyond 10**22, or a scaled value within rounding of a half).
    Returns whether there is any. Zeros, infinities and nan are kept as they are."""
    any_slow = False
    for k in range(x.shape[0]):
        v, p = x[k], places[k]
        out[k] = v
        slow[k] = False
        if not np.isfinite(v) or v == 0.0:
            continue
        if abs(p) > 22:
            slow[k] = any_slow = True
            continue
        scale = powers[abs(p)]
        y = v * scale if p >= 0 else v / scale
        if np.abs(y - np.floor(y) - 0.5) <= np.abs(y) * 4e-16:
            slow[k] = any_slow = True
            continue
        rounded = np.rint(y)
        out[k] = rounded / scale if p >= 0 else rounded * scale
    return any_slow


def round_sig(x: np.ndarray, digits: int = 6) -> np.ndarray:
    """float(f"{v:.{digits}g}") of every value: rounded to significant digits, for a
    readable payload (values are already governed)."""
    x = np.asarray(x, dtype=np.float64)
    return round_places(x, _significant_places(x, digits))


def _significant_places(x: np.ndarray, digits: int = 6) -> np.ndarray:
    """The decimal places that round each value to `digits` significant digits."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.abs(x)))
    return np.where(np.isfinite(exponent), digits - 1 - exponent, 0).astype(np.int64)


def _iso(t: float, cache: dict[float, str] = {}) -> str:  # noqa: B006 - a cache on purpose
    """iso(t), remembered: the sets published in one cycle share their valid_until."""
    text = cache.get(t)
    if text is None:
        if len(cache) > 256:
            cache.clear()
        text = cache[t] = iso(t)
    return text


def _reason_names(mask: int, cache: dict[int, tuple[str, ...]] = {}) -> tuple[str, ...]:  # noqa: B006
    names = cache.get(mask)
    if names is None:
        names = cache[mask] = tuple(reason_names(mask))
    return names
