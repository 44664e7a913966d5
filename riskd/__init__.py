"""riskd: jump-aware risk parameters for leveraged prediction markets."""

from __future__ import annotations

__version__ = "0.1.0"
