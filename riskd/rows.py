"""Per-market integers kept at the market's row (`Engine.index`), not in a dict.

A dict entry costs ~38 bytes per market at 100k markets, more once its values are
int objects of their own (above 256); a slot of a typed array costs one to eight.
A market keeps its row for the life of the process (rows are only appended, never
reused or moved, whatever a reload or discovery does), so a value stays at its row.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping


class RowValues:
    """market id -> an integer of `typecode` (array module), `missing` for a market
    never set. `rows`: the engine's id -> row, shared and grown in place. A market it
    does not hold (or no `rows` at all) is kept in a dict, as it would be without rows;
    should it get a row later, its value moves there when next set."""

    def __init__(self, rows: Mapping[str, int] | None, typecode: str, missing: int) -> None:
        self._rows: Mapping[str, int] = rows if rows is not None else {}
        self._missing = missing
        self._values = array(typecode)
        self._other: dict[str, int] = {}  # markets without a row

    def get(self, market: str) -> int:
        i = self._rows.get(market)
        if i is None or (self._other and market in self._other):
            return self._other.get(market, self._missing)
        values = self._values
        return values[i] if i < len(values) else self._missing

    def set(self, market: str, value: int) -> None:
        i = self._rows.get(market)
        if i is None:
            self._other[market] = value
            return
        if self._other:
            self._other.pop(market, None)
        values = self._values
        if i >= len(values):
            # To every row at once: markets come in thousands (a markets file, discovery).
            n = max(i + 1, len(self._rows)) - len(values)
            values += array(values.typecode, [self._missing]) * n
        values[i] = value
