"""The house rules of docs/architecture.md, checked on the source: every module imports only
from its own layer or below, and no import cycle exists anywhere in `thresher/`.

Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "thresher"

# bottom to top; a module may import its own layer and the layers below it
LAYERS = [
    ("ground", ["thresher.specs", "thresher.version", "thresher.common"]),
    ("models", ["thresher.models"]),
    ("components", ["thresher.scorers", "thresher.selectors", "thresher.training", "thresher.dedup"]),
    ("config", ["thresher.config"]),
    ("io", ["thresher.io"]),
    ("pipelines", ["thresher.pipelines"]),
    ("report", ["thresher.report"]),
    ("commands", ["thresher.commands", "thresher.__main__", "thresher"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "thresher" and module.startswith(prefix + "."))
            if inside and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module}: in no layer; add it to LAYERS in tests/test_layers.py"
    return best


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The thresher modules `module` imports (a `from pkg import name` of a submodule counts
    as an import of the submodule)."""
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "thresher"}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            if base.split(".")[0] != "thresher":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            out |= subs if subs and len(subs) == len(node.names) else subs | {base}
    return {m for m in out if m != module}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports_of(m, p, known) if d in known} for m, p in mods.items()}


def test_every_module_is_in_a_layer() -> None:
    for m in modules():
        layer_of(m)


def test_no_import_goes_up_a_layer() -> None:
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
           for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_package_named_like_a_stdlib_module() -> None:
    assert not (PACKAGE.parent / "selectors").exists(), "a top-level `selectors` package shadows the stdlib"
