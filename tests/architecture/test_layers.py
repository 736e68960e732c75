"""The import graph of ``laion_hf`` is acyclic and layered: cli → engines → stages →
io/_util/errors (issue 17). Built from the source with ``ast``, imports inside functions
included, so a hidden import cannot sneak a cycle or an upward edge in."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "laion_hf"

# layer of each top-level part of the package; a module may import only its own layer or lower
LAYERS = {
    "cli": 4,
    "demo": 3,
    "engines": 3,
    "engine_ray": 3,
    "testing": 3,
    "metadata": 2,
    "images": 2,
    "clip": 2,
    "shards": 2,
    "hub": 2,
    "loader": 2,
    "torch": 2,
    "index": 2,
    "serve": 2,
    "eval": 2,
    "world": 2,
    "train": 2,
    "reproduce": 3,
    "builder": 2,
    "filters": 2,
    "schema": 2,
    "sources": 2,
    "blocklist": 2,
    "sampling": 2,
    "stats": 2,
    "synth": 2,
    "provenance": 2,
    "export": 2,
    "io": 1,
    "_util": 1,
    "errors": 1,
    "_lazy": 1,
    "__init__": 5,  # the package re-exports
}
# stages that may import each other, downstream → upstream only (DESIGN.md)
METADATA = {
    "metadata",
    "builder",
    "filters",
    "schema",
    "sources",
    "blocklist",
    "sampling",
    "stats",
    "synth",
    "provenance",
    "export",
}
UPSTREAM = {
    "images": METADATA,
    "clip": METADATA | {"images"},
    "shards": METADATA | {"images", "clip"},
    "hub": METADATA | {"images", "clip", "shards"},
    "loader": METADATA | {"images", "clip", "shards", "hub"},
    "torch": METADATA | {"images", "clip", "shards", "hub", "loader"},
    "index": METADATA | {"images", "clip", "shards", "hub"},
    "serve": METADATA | {"images", "clip", "shards", "hub", "index"},
    "world": METADATA | {"images", "clip", "shards"},
    "eval": METADATA | {"images", "clip", "shards", "hub", "loader", "torch", "world"},
    "train": METADATA | {"images", "clip", "shards", "hub", "loader", "torch", "world", "eval"},
}
for _m in METADATA:
    UPSTREAM[_m] = METADATA - {_m}
UPSTREAM["synth"] = UPSTREAM["synth"] | {"world"}  # `synth --world` draws its rows from the world


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }  # annotations only: never imported at run time
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "laion_hf" or m.startswith("laion_hf.")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the laion_hf modules it imports (names resolved to existing modules)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imp in _imports(path, name):
            while imp not in files and "." in imp:
                imp = imp.rpartition(".")[0]  # `from laion_hf.x import func` -> laion_hf.x
            if imp in files and imp != name and imp != "laion_hf":
                targets.add(imp)
        graph[name] = targets
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not color.get(nxt) and (found := visit(nxt)):
                return found
        color[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if not color.get(node) and (found := visit(node)):
            return found
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that go up a layer, or sideways between stages against the pipeline's direction."""
    bad = []
    for src, targets in graph.items():
        a = _part(src)
        for dst in targets:
            b = _part(dst)
            if a == b or b == "__init__":
                continue
            la, lb = LAYERS.get(a), LAYERS.get(b)
            if la is None or lb is None:
                bad.append(f"{src} -> {dst}: unknown part ({a if la is None else b}); add it to LAYERS")
            elif lb > la:
                bad.append(f"{src} -> {dst}: goes up from layer {la} to {lb}")
            elif la == lb == 2 and b not in UPSTREAM.get(a, set()):
                bad.append(f"{src} -> {dst}: stage {a} may not import stage {b} (only upstream stages)")
            elif b == "testing" and a != "demo":
                bad.append(f"{src} -> {dst}: laion_hf.testing is for tests, benchmarks and the demo only")
    return sorted(bad)


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_import_goes_down_a_layer_or_upstream():
    assert layer_violations(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_edge():
    """The checker itself: a deliberate cycle and an upward import are found."""
    graph = {
        "laion_hf.filters": {"laion_hf.builder"},
        "laion_hf.builder": {"laion_hf.filters"},
        "laion_hf.images.fetch": {"laion_hf.cli"},
    }
    assert find_cycle(graph) is not None
    assert any("goes up" in v for v in layer_violations(graph))
