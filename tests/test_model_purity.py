"""riskd/model stays pure (DEVELOPERS: functional core): numpy and the standard
library's data helpers, no I/O, no asyncio, no clock; time is an argument. Checked
on the source, so a new import or call shows up here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "riskd" / "model"
# What the model may import: data structures, numbers, its siblings, the compiler
# (riskd.jit) and, for type checking only, the settings.
ALLOWED = {"__future__", "dataclasses", "typing", "functools", "math", "numpy",
           "riskd.jit", "riskd.model", "riskd.model.scenarios", "riskd.model.estimator",
           "riskd.model.parameters", "riskd.model.governor"}
TYPE_ONLY = {"riskd.config"}
# Calls that read the world: files, the clock, the environment, randomness.
FORBIDDEN_CALLS = {"open", "print", "input", "time", "monotonic", "now", "getenv", "random",
                   "sleep", "urlopen"}


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(module, under `if TYPE_CHECKING:`) of every import."""
    typed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            typed |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in typed) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in typed))
    return out


def test_the_model_imports_no_io() -> None:
    files = sorted(MODEL.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module, typed in _imports(tree):
            allowed = module in ALLOWED or (typed and module in TYPE_ONLY)
            assert allowed, f"{path.name} imports {module}"


def test_the_model_calls_nothing_that_reads_the_world() -> None:
    for path in sorted(MODEL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {name}"
