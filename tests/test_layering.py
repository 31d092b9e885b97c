"""The code's layering (README "How the code is laid out"): no import cycles, and each layer
imports only the layers below it that it is allowed to.

Every module under tools/cosmicai and inference/cosmicai is parsed (imports inside functions
and under TYPE_CHECKING included): an import is an edge whether or not it runs at import time.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = (ROOT / "tools", ROOT / "inference")

# layer -> the modules it holds (a module belongs to the layer of its longest matching prefix)
LAYERS: dict[str, tuple[str, ...]] = {
    # import no other cosmicai module
    "leaf": ("cosmicai.errors", "cosmicai.peak_memory", "cosmicai.atomic"),
    "inference": ("cosmicai.inference",),  # model, data, engine: the executor's compute
    "layout": ("cosmicai.pipeline.layout", "cosmicai.pipeline.s3objects"),  # where objects live
    "common": (  # leaf helpers: inputs, platform settings, claims, the local store, FMI, ...
        "cosmicai.safe_input",
        "cosmicai.logs",
        "cosmicai.defaults",
        "cosmicai.target",
        "cosmicai.artifacts",
        "cosmicai.asl",
        "cosmicai.payload",
        "cosmicai.claims",
        "cosmicai.local_store",
        "cosmicai.reference_results",
        "cosmicai.comm",
        "cosmicai.rendezvous",
        "cosmicai.compat",
    ),
    "pipeline": ("cosmicai.pipeline",),  # the Lambda steps: init, executor, summarize
    "runs": (  # reading runs (the run store) and what is made of them; starting and following
        "cosmicai.run_store",
        "cosmicai.run_metrics",
        "cosmicai.run_cost",
        "cosmicai.cost",
        "cosmicai.lambda_report",
        "cosmicai.report_html",
        "cosmicai.runner",
    ),
    "localcloud": ("cosmicai.localcloud",),  # the embedded cloud and a local run's session
    "workflows": (  # what runs the platform many times: tuning, the demo, benchmarks
        "cosmicai.tune",
        "cosmicai.demo",
        "cosmicai.bench_pipeline",
        "cosmicai.bench_cost",
    ),
    "cli": ("cosmicai.cli",),
}

# layer -> the layers it may import besides itself
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "inference": {"leaf"},
    "layout": {"leaf"},
    "common": {"leaf", "layout"},
    "pipeline": {"leaf", "inference", "layout", "common"},
    "runs": {"leaf", "layout", "common"},
    "localcloud": {"leaf", "layout", "common", "runs"},
    "workflows": {"leaf", "inference", "layout", "common", "pipeline", "runs", "localcloud"},
    "cli": {"leaf", "inference", "layout", "common", "runs", "localcloud", "workflows"},
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the cosmicai namespace package."""
    modules = {}
    for root in SOURCE_ROOTS:
        for path in sorted((root / "cosmicai").rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _known(name: str) -> str | None:
    """The module `name` is, or the innermost module that holds it (`pkg.mod.attr` -> pkg.mod)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[str]:
    """The cosmicai modules that `module` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "cosmicai" and (found := _known(name)) not in (None, module):
                yield found


GRAPH = {module: set(_imports(module)) for module in MODULES}


def layer_of(module: str) -> str:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README)")
    return max(matches)[1]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its nodes, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_parser_sees_every_kind_of_import() -> None:
    """It finds function-local and `from pkg import module` imports (the test can fail)."""
    assert "cosmicai.localcloud.session" in GRAPH["cosmicai.tune"]  # inside a function
    assert "cosmicai.inference.metrics" in GRAPH["cosmicai.pipeline.summarize"]
    assert "cosmicai.pipeline.executor" in GRAPH["cosmicai.bench_cost"]  # from pkg import mod
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_itself_back() -> None:
    assert _cycle(GRAPH) is None


def test_the_allowed_layer_edges_are_a_dag_over_the_listed_layers() -> None:
    assert set(ALLOWED) == set(LAYERS)
    assert all(allowed <= set(LAYERS) for allowed in ALLOWED.values())
    assert _cycle(ALLOWED) is None


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    wrong = sorted(
        f"{module} imports {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        if layer_of(module) == layer
        for target in targets
        if layer_of(target) not in ALLOWED[layer] | {layer}
    )
    assert wrong == [], f"layer {layer} may import only {sorted(ALLOWED[layer])}"


def test_the_analysis_does_not_reach_into_the_local_cloud() -> None:
    """run_metrics reads runs only through the run store, never through cosmicai.localcloud."""
    reached, todo = set(), ["cosmicai.run_metrics"]
    while todo:
        for target in GRAPH[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert "cosmicai.run_store" in reached
    assert not [m for m in reached if m.startswith("cosmicai.localcloud")]


def test_the_readme_table_is_this_one() -> None:
    """README.md's "How the code is laid out" lists these layers, modules and allowed edges."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    table = {cells[0].strip(): cells for cells in rows[2:]}  # after the header and its rule
    assert list(table) == list(LAYERS)
    for layer, (_, modules, allowed) in table.items():
        names = re.sub(r"\([^)]*\)", "", modules).split("`")[1::2]  # less (notes)
        assert names, layer
        for name in names:
            assert layer_of(name if name.startswith("cosmicai") else f"cosmicai.{name}") == layer
        listed = {word.strip() for word in allowed.split(",")} - {"nothing"}
        assert listed == ALLOWED[layer], layer
