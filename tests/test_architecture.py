"""The package's shape, checked on the source so that a new import shows up here, not
in a review (docs/architecture.md):
- riskd/model stays pure (DEVELOPERS: functional core): numpy and the standard
  library's data helpers, no I/O, no asyncio, no clock; time is an argument;
- every venue codec turns bytes into ticks and nothing else: no sockets, no event
  loop, no clock, no logging;
- no import cycle at run time (imports under `if TYPE_CHECKING:` and inside
  functions aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "riskd"
MODEL = PACKAGE / "model"
# What the model may import: data structures, numbers, its siblings, the compiler
# (riskd.jit) and, for type checking only, the settings.
ALLOWED = {
    "__future__",
    "dataclasses",
    "typing",
    "functools",
    "math",
    "numpy",
    "riskd.jit",
    "riskd.model",
    "riskd.model.scenarios",
    "riskd.model.estimator",
    "riskd.model.parameters",
    "riskd.model.governor",
}
TYPE_ONLY = {"riskd.config"}
# Calls that read the world: files, the clock, the environment, randomness.
FORBIDDEN_CALLS = {
    "open",
    "print",
    "input",
    "time",
    "monotonic",
    "now",
    "getenv",
    "random",
    "sleep",
    "urlopen",
}


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
            allowed = (
                module in ALLOWED
                or module.startswith("riskd.model.")
                or (typed and module in TYPE_ONLY)
            )
            assert allowed, f"{path.name} imports {module}"


def test_the_model_calls_nothing_that_reads_the_world() -> None:
    for path in sorted(MODEL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {name}"


# What a codec (and a venue's store of codec state) may import: data helpers, the JSON
# parsers, the tick and market types, shared codec helpers, its venue's config (types
# only at run time) and its venue's store.
CODEC_ALLOWED = {
    "__future__",
    "array",
    "math",
    "json",
    "dataclasses",
    "typing",
    "collections.abc",
    "datetime",
    "enum",
    "orjson",
    "msgspec",
    "numpy",
    "riskd.feeds.base",
    "riskd.feeds.codec",
    "riskd.markets",
    "riskd.ticks",
    "riskd.timeutil",
}


def _codecs() -> list[Path]:
    return sorted(
        [
            PACKAGE / "feeds" / "codec.py",
            *PACKAGE.glob("feeds/*/codec.py"),
            *PACKAGE.glob("feeds/*/store.py"),
        ]
    )


def test_codecs_import_only_data_helpers() -> None:
    codecs = _codecs()
    assert len(codecs) >= 4  # the shared helpers and one per venue
    for path in codecs:
        venue = path.parent.name
        for module, typed in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            own = module.startswith(f"riskd.feeds.{venue}.") and module.rsplit(".", 1)[1] in (
                "config",
                "store",
                "_store",
            )
            assert typed or own or module in CODEC_ALLOWED, (
                f"{path.relative_to(PACKAGE)} imports {module}"
            )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, modules: set[str]) -> set[str]:
    """The riskd modules `path` imports when it is loaded: its top-level imports (not
    those under `if TYPE_CHECKING:` or inside functions), and the packages above them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from riskd.x import y`: y may be a module of its own.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return found & modules


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, if any (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_at_run_time() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _load_time_imports(path, set(files)) - {name} for name, path in files.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _njit(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(getattr(d, "id", getattr(d, "attr", None)) == "njit" for d in node.decorator_list)


def test_no_function_over_60_lines_outside_the_compiled_kernels() -> None:
    # A compiled kernel (riskd/jit.py) is one loop over every market; the locals it
    # carries from step to step would become long argument lists in helpers.
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not _njit(node):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {lines}")
    assert not long, long
