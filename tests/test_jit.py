"""Compiled kernels (riskd/jit.py): where they are cached, and that what is compiled up
front is what the daemon runs."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riskd import jit
from riskd.model import estimator

FED_TAPE = Path(__file__).resolve().parents[1] / "data" / "tapes" / "fed_dec2025"


def cache_dir_with(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import riskd.jit as j; print(j.configure_cache())"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_importing_the_kernels_writes_nothing(tmp_path: Path) -> None:
    # numba makes a kernel's cache folder when its caching is turned on: at start
    # (configure_cache), not at import.
    bases = {
        "NUMBA_CACHE_DIR": tmp_path / "numba",
        "XDG_CACHE_HOME": tmp_path / "xdg",
        "TMPDIR": tmp_path / "tmp",
        "HOME": tmp_path / "home",
    }
    (tmp_path / "tmp").mkdir()
    code = (
        "import riskd.jit, riskd.engine, riskd.backtest.simulate, riskd.backtest.policies;"
        " print(len(riskd.jit.KERNELS))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **{k: str(v) for k, v in bases.items()}},
    )
    assert int(out.stdout) > 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["tmp"]


def test_cache_goes_where_numba_cache_dir_says(tmp_path: Path) -> None:
    found = cache_dir_with({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert Path(found).parent == tmp_path
    assert Path(found).name.startswith("numba-")


def test_unwritable_cache_dir_falls_back_to_the_users_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    xdg = tmp_path / "xdg"
    found = cache_dir_with({"NUMBA_CACHE_DIR": str(blocker), "XDG_CACHE_HOME": str(xdg)})
    assert Path(found).parent == xdg / "riskd"


def test_any_source_change_means_a_fresh_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # numba keys its cache on each kernel's own file: a caller compiled against an old
    # callee in another file would survive an edit of the callee without this.
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(jit, "PACKAGE", tmp_path)
    before = jit._sources_hash()
    assert jit._sources_hash() == before
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    added = jit._sources_hash()
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert len({before, added, jit._sources_hash()}) == 3


LIVE_CYCLES = """
import sys
from pathlib import Path

from riskd import jit
from riskd.backtest import runner
from riskd.config import Settings
from riskd.engine import Engine, compile_kernels
from riskd.explain import explain
from riskd.feeds.base import Tick
from riskd.feeds.polymarket.codec import PolymarketCodec
from riskd.markets import Market

settings = Settings()
if sys.argv[1] == "image":  # the image's build step (Dockerfile): a backtest, then
    runner.run(Path(sys.argv[2]), settings)  # the daemon's own kernels
    compile_kernels(settings)
else:  # a daemon's start
    compile_kernels(settings)


def name(kernel):
    return f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}"


compiled = {name(k): set(k.signatures) for k in jit.KERNELS}
compile_kernels(settings)
# What a daemon runs: many markets, ticks with and without a book, a jump, cycles that
# evaluate some markets and cycles that evaluate all, the API's explanations.
t0 = 1_700_000_000.0
markets = {f"m{k}": Market(f"m{k}", t0 + 86_400 * (k + 1), t0 + 86_400 * (k + 1))
           for k in range(5)}
engine = Engine(settings, markets, discover=False)
for n in range(40):
    t = t0 + 60.0 * n
    engine.ingest([Tick(f"m{k}", t + k, 0.3 + 0.01 * (n % 7) + 0.05 * k,
                        *((0.29 + 0.05 * k, 0.31 + 0.05 * k, 100.0) if k % 2 else ()))
                   for k in range(5) if (n + k) % 3])
    if n == 30:
        engine.ingest([Tick("m1", t + 30, 0.95)])
    engine.cycle(t + 59)
    if n % 10 == 0:  # the API's /v1/explain
        explain(engine, "m1", t + 59)
# Frames read together from Polymarket: ticks as columns.
codec = PolymarketCodec.for_markets(
    [Market(f"m{k}", t0 + 86_400 * 9, t0 + 86_400 * 9, polymarket_yes_token=str(100 + k))
     for k in range(5)]
)
frames = [(
    '{"event_type":"price_change","timestamp":"%d","price_changes":[{"asset_id":"%d",'
    '"price":"0.4","size":"5","side":"BUY","best_bid":"0.4","best_ask":"0.42"}]}'
    % ((t + 3600 + j) * 1000, 100 + j % 5)
).encode() for j in range(20)]
engine.enqueue(codec.decode_batch(frames, t + 3600, print).ticks, t + 3600)
engine.cycle(t + 3600)
new = {name(k): sorted(map(str, set(k.signatures) - compiled[name(k)])) for k in jit.KERNELS}
print({kernel: sigs for kernel, sigs in new.items() if sigs})
"""


@pytest.mark.parametrize("first", ["compile_kernels", "image"])
def test_kernels_compiled_up_front_are_what_the_live_cycle_runs(first: str) -> None:
    """A kernel type signature that only a live cycle uses is compiled in that cycle on
    a machine's first start: seconds with the feed streaming into a blocked loop. What
    is compiled up front: `compile_kernels` at the daemon's start, and the image's
    build step, a backtest and the daemon's kernels (Dockerfile). In a fresh process:
    this one's kernels already have what other tests ran."""
    out = subprocess.run(
        [sys.executable, "-c", LIVE_CYCLES, first, str(FED_TAPE)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "{}"


BIG = float(np.finfo(np.float64).max)
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 0.5, 1.0, -1.0, BIG, -BIG]


def test_the_kernels_float_helpers_are_numpys() -> None:
    """The kernels' per-value helpers give numpy's results, nan and infinities included:
    the glue moved into kernels computes what numpy computed."""
    a, b = np.array(list(itertools.product(SPECIAL, repeat=2))).T
    for helper, ufunc in [
        (jit.maximum, np.maximum),
        (jit.minimum, np.minimum),
        (jit.fmax, np.fmax),
        (jit.fmin, np.fmin),
    ]:
        got = np.array([helper(x, y) for x, y in zip(a, b, strict=True)])
        assert np.array_equal(got, ufunc(a, b), equal_nan=True), helper
    x, low, high = np.array(list(itertools.product(SPECIAL, repeat=3))).T
    got = np.array([jit.clip(*v) for v in zip(x, low, high, strict=True)])
    assert np.array_equal(got, np.clip(x, low, high), equal_nan=True)
    values = np.array(SPECIAL)
    got = np.array([jit.nan_to_zero(v) for v in values])
    assert np.array_equal(got, np.nan_to_num(values, nan=0.0))
    assert np.array_equal(
        estimator.elapsed(values.copy()), np.maximum(np.nan_to_num(values, nan=0.0), 0.0)
    )
