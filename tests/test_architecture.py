"""The package's layout (docs/architecture.md): sub-packages by concern, imports that only point down, no import
circle, modules of a readable size.  Read from the source with ``ast`` (function-level imports included), so a
lazy import cannot hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asym_trl"

# Each unit (a top-level module or a sub-package) and its layer: a unit may import from its own unit and from units
# of a strictly lower layer, nothing else.  docs/architecture.md draws the same table.
LAYERS = {
    "errors": 0,  # one-line user errors: used by every part
    "trl_compat": 0,  # every private of TRL 1.16 that asym_trl touches
    "generation": 1,  # generation backends and vLLM: serve, disk sync, worker extension, weight check, CPU attention
    "task": 2,  # the math task: rewards, the verifier, data, evaluation
    "method": 3,  # the paper's math: advantages, the estimator registry, the success rule, the adaptive beta
    "rollouts": 4,  # between scoring and the loss: zero-signal skip, dynamic sampling, row operations
    "diagnostics": 4,  # the paper's measurements, validation, exploration, plots, statistics over seeds
    "lifecycle": 4,  # how a run stops, checkpoints, a lost peer, flaky rewards, upstream log noise
    "config": 5,  # AsymGRPOConfig
    "trainer": 6,  # AsymGRPOTrainer
    "async_trainer": 6,  # AsymAsyncGRPOTrainer
    "launch": 7,  # recipes, the preflight checks, the model card and Hub push
    "train": 8,  # the accelerate entry point (`python -m asym_trl.train`)
    "cli": 8,  # the `asym-trl` command (sub-commands imported by name, when run)
    "train_async": 9,  # the asynchronous entry point (reuses train's helpers)
    "apps": 10,  # applications of the library: quickstart, the tiny model, countdown, the multi-node rehearsal
}
MAX_LINES = 450
MAX_TRAINER_LINES = 220


def _modules() -> dict[str, Path]:
    """``{dotted name: path}`` of every module of the package (``asym_trl.x.y``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str | None:
    """The layout unit of ``asym_trl.a.b`` (``a``); None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    return _imports_of_source(module, path, path.read_text())


def _imports_of_source(module: str, path: Path, source: str) -> set[str]:
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                root = ".".join(anchor + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when it is one
            names = [f"{root}.{a.name}" if f"{root}.{a.name}" in MODULES else root for a in node.names]
        else:
            continue
        targets.update(name for name in names if name.split(".")[0] == "asym_trl")
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {None}
    assert units == set(LAYERS), f"units without a layer: {units - set(LAYERS)}; stale: {set(LAYERS) - units}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """The edges of ``graph`` that do not point down (to the own unit or a lower layer)."""
    upward = []
    for module, targets in graph.items():
        unit = _unit(module)
        if unit is None:
            continue
        for target in targets:
            other = _unit(target)
            if other is None:  # the public face: nothing below may import it
                upward.append(f"{module} -> {target} (the package's public face)")
            elif other != unit and LAYERS[other] >= LAYERS[unit]:
                upward.append(f"{module} (layer {LAYERS[unit]}) -> {target} (layer {LAYERS[other]})")
    return sorted(upward)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one module."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_imports_only_point_down():
    upward = upward_imports(GRAPH)
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_circle():
    assert not import_circles(GRAPH)


def test_the_architecture_checks_can_fail():
    """The circle that issue 26 removed (``preflight`` importing ``import_object`` from ``train``, lazily, inside a
    function), written back into a copy of the graph, is found by both checks."""
    assert "asym_trl.launch.preflight" in GRAPH["asym_trl.train"]  # a real edge, read from the source
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["asym_trl.launch.preflight"].add("asym_trl.train")
    assert upward_imports(graph) == ["asym_trl.launch.preflight (layer 7) -> asym_trl.train (layer 8)"]
    (circle,) = import_circles(graph)  # with every module on a path train -> ... -> preflight (e.g. via hub)
    assert {"asym_trl.launch.preflight", "asym_trl.train"} <= set(circle)
    source = "def f():\n    from ..train import import_object\n"
    path = PACKAGE / "launch" / "preflight.py"
    assert "asym_trl.train" in _imports_of_source("asym_trl.launch.preflight", path, source)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    limit = MAX_TRAINER_LINES if module == "asym_trl.trainer" else MAX_LINES
    assert lines <= limit, f"{module} has {lines} lines (at most {limit}): split it by concern"


def test_sub_packages_say_what_they_hold_and_may_import():
    for module, path in MODULES.items():
        if path.name != "__init__.py" or module == "asym_trl":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert len(doc) > 150, f"{module}: its docstring says what it holds and what it may import"
        assert "import" in doc, f"{module}: its docstring names what it may import"


def test_top_folder_holds_the_public_face_the_entry_modules_and_the_base():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "config", "trainer", "async_trainer", "train", "train_async", "cli", "errors",
                   "trl_compat"}  # fmt: skip


def test_the_public_face_and_the_commands_resolve():
    """Every lazy public name and every ``asym-trl`` sub-command names a module that exists after the move."""
    import asym_trl
    from asym_trl.cli import COMMANDS

    for name in asym_trl.__all__:
        assert getattr(asym_trl, name) is not None
    for command, (module, _) in COMMANDS.items():
        assert module in MODULES, f"asym-trl {command}: {module} is not a module of the package"
