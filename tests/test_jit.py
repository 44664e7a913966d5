"""Where compiled kernels are cached (riskd/jit.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from riskd import jit


def cache_dir_with(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", "import riskd.jit as j; print(j.CACHE_DIR)"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


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


def test_any_source_change_means_a_fresh_cache(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
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
