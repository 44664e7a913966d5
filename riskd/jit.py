"""Compiled per-market loops: `njit`, and where their machine code is cached.

The model's recursions and per-market scenario sums are loops over a few dozen
numbers per market, where numpy's per-call cost is everything; numba compiles
them. Compiling takes seconds, so the machine code is cached on disk, and three
things about numba's cache need care here:
- it is keyed on the source file of each compiled function only, so after an
  edit to a kernel that another file's kernel calls, the caller's cached code
  would run the old callee: the cache lives in a directory named after a hash of
  riskd's own sources, and any change to them starts a fresh one;
- it needs a writable directory (site-packages is often read-only in a
  deployment): NUMBA_CACHE_DIR when set, else the user's cache directory, else
  the temp directory; with none writable, kernels compile at each start;
- nothing of it is set up at import (importing riskd writes nothing to disk): each
  entry point calls `configure_cache` once at start.
Same semantics as numpy for float errors (division by zero gives inf or nan).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

PACKAGE = Path(__file__).resolve().parent


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def cache_dir() -> Path | None:
    """Where compiled kernels are kept (None: nowhere writable, compile at each start).
    Creates the directory."""
    try:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    except RuntimeError:  # no home directory
        xdg = ""
    bases = [
        os.environ.get("NUMBA_CACHE_DIR"),
        xdg and str(Path(xdg) / "riskd"),
        str(Path(tempfile.gettempdir()) / f"riskd-{os.getuid()}"),
    ]
    tag = f"numba-{numba.__version__}-{_sources_hash()}"
    for base in bases:
        if base and _writable(Path(base) / tag):
            return Path(base) / tag
    return None


# Every kernel, for the check that `engine.compile_kernels` compiles what a live cycle
# runs (tests/test_jit.py), and for `configure_cache` to turn their caching on.
KERNELS: list[Any] = []
# The cache configured by `configure_cache`: unset until then.
_configured: list[Path | None] = []


def configure_cache() -> Path | None:
    """Keep compiled kernels in `cache_dir()` from now on: what each entry point calls
    once at start, before its first kernel runs (later calls return the same folder).

    numba picks a kernel's cache folder, and creates it, when caching is turned on for
    the kernel (decorating with cache=True does that at import, reading
    numba.config.CACHE_DIR then): so kernels are decorated without a cache and turned
    on here, or at decoration once configured."""
    if not _configured:
        folder = cache_dir()
        _configured.append(folder)
        if folder is not None:
            numba.config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]
            for kernel in KERNELS:
                kernel.enable_caching()
    return _configured[0]


def njit(fn: Callable[..., Any] | None = None, *, inline: bool = False) -> Any:
    """numba.njit with numpy's float error semantics, cached once `configure_cache` ran.

    `inline=True` puts a helper's body into each caller (numba's inline="always"): a
    compiled call that takes arrays pays two atomic reference-count updates per array
    and call, more than the body of a short per-row helper costs."""
    if fn is None:
        return lambda f: njit(f, inline=inline)
    kernel = numba.njit(error_model="numpy", inline="always" if inline else "never")(fn)
    KERNELS.append(kernel)
    if _configured and _configured[0] is not None:
        kernel.enable_caching()
    return kernel


# numpy's float functions on one value, for the kernels' per-market loops: the same
# result as the numpy call on an array, nan and infinities included (a zero's sign
# aside: numpy's own loops differ there).
MAX_FLOAT = float(np.finfo(np.float64).max)


@njit
def maximum(a: float, b: float) -> float:
    """np.maximum: nan if either is."""
    return a + b if np.isnan(a) or np.isnan(b) else max(a, b)


@njit
def minimum(a: float, b: float) -> float:
    """np.minimum: nan if either is."""
    return a + b if np.isnan(a) or np.isnan(b) else min(a, b)


@njit
def fmax(a: float, b: float) -> float:
    """np.fmax: the other one if one is nan."""
    if np.isnan(a):
        return b
    return a if np.isnan(b) else max(a, b)


@njit
def clip(x: float, low: float, high: float) -> float:
    """np.clip: nan if any is."""
    return minimum(maximum(x, low), high)


@njit
def nan_to_zero(x: float) -> float:
    """np.nan_to_num(x, nan=0.0): infinities become the largest finite floats."""
    if np.isnan(x):
        return 0.0
    return min(max(x, -MAX_FLOAT), MAX_FLOAT)


@njit
def fmin(a: float, b: float) -> float:
    """np.fmin: the other one if one is nan."""
    if np.isnan(a):
        return b
    return a if np.isnan(b) else min(a, b)
