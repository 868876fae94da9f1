"""The import rule: imports between top-level packages flow one way, with no cycle (docs/architecture.md).

The graph is built from the source text (``ast``, every ``import`` and ``from ... import``, also those inside
functions), one node per layer:

    base <- pymodel <- rtl <- host <- {sim, hls} <- boards <- app

``base`` is the ``mmfree`` folder's shared modules (``__init__``, ``config``, ``atomic``, ``toolchain``,
``boardfile``); ``app`` is every command-line module (``mmfree/cli*.py``, ``mmfree/demo.py``,
``mmfree/__main__.py`` and each area's ``cli*.py``), which may import anything below it. An arrow means "may
import"; a layer imports only the layers to its left (``sim`` and ``hls`` not each other).
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("mmfree", "pymodel", "rtl", "host", "sim", "hls", "boards")
BASE_MODULES = ("__init__", "config", "atomic", "toolchain", "boardfile")
APP_MODULES = ("__main__", "demo", "serve")  # besides every cli*.py; serve is the server subpackage

#: layer -> the layers it may import (itself always allowed)
ALLOWED = {
    "base": set(),
    "pymodel": {"base"},
    "rtl": {"base", "pymodel"},
    "host": {"base", "pymodel", "rtl"},
    "sim": {"base", "pymodel", "rtl", "host"},
    "hls": {"base", "pymodel", "rtl", "host"},
    "boards": {"base", "pymodel", "rtl", "host", "sim", "hls"},
    "app": {"base", "pymodel", "rtl", "host", "sim", "hls", "boards"},
}


def _is_app(module: str) -> bool:
    return module.startswith("cli") or module in APP_MODULES


def layer_of_file(path: Path) -> str:
    """The layer of a source file of the package (``path`` relative to the repository root)."""
    folder, stem = path.parts[0], path.stem
    if _is_app(stem) and len(path.parts) == 2:
        return "app"
    if folder == "mmfree" and len(path.parts) > 2 and _is_app(path.parts[1]):
        return "app"
    if folder == "mmfree":
        return "base"
    return folder


def layer_of_module(name: str) -> str | None:
    """The layer of an imported module name, None for anything outside ``mmfree``."""
    parts = name.split(".")
    if parts[0] != "mmfree":
        return None
    if len(parts) == 1:
        return "base"
    if parts[1] in FOLDERS[1:]:
        return "app" if len(parts) > 2 and _is_app(parts[2]) else parts[1]
    return "app" if _is_app(parts[1]) else "base"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for a in node.names:          # ``from mmfree.boards import pynq``: the submodule counts
                yield f"{node.module}.{a.name}"


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing layer, imported layer) -> the import statements that make the edge (between layers only)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            src = layer_of_file(rel)
            for name in _imports(path):
                dst = layer_of_module(name)
                if dst is not None and dst != src:
                    edges.setdefault((src, dst), []).append(f"{rel} imports {name}")
    return edges


def find_cycle(edges) -> list[str] | None:
    """One cycle of the layer graph as [a, b, ..., a], or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node, [node])
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def edges():
    return import_edges()


def test_layers_are_classified():
    assert layer_of_file(Path("mmfree/cli_core.py")) == "app"
    assert layer_of_file(Path("mmfree/boardfile.py")) == "base"
    assert layer_of_file(Path("sim/cli_perf.py")) == "app"
    assert layer_of_file(Path("sim/benches/accel.py")) == "sim"
    assert layer_of_module("mmfree.boards.cli") == "app" and layer_of_module("mmfree.cli") == "app"
    assert layer_of_module("mmfree") == "base" and layer_of_module("mmfree.boardfile") == "base"
    assert layer_of_module("mmfree.host.accel") == "host" and layer_of_module("numpy") is None


def test_no_import_cycle_between_packages(edges):
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between top-level packages: " + " -> ".join(cycle) + "\n" + "\n".join(
        line for a, b in zip(cycle, cycle[1:]) for line in edges[(a, b)][:3])


def test_cycle_finder_finds_cycles():
    assert find_cycle({("sim", "boards"): [], ("boards", "sim"): []}) in (["boards", "sim", "boards"],
                                                                          ["sim", "boards", "sim"])
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) == ["a", "b", "c", "a"]
    assert find_cycle({("boards", "sim"): [], ("sim", "host"): []}) is None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_import_direction(edges, layer):
    bad = [line for (a, b), lines in edges.items() if a == layer and b not in ALLOWED[layer] for line in lines]
    assert not bad, (f"imports flow one way (base <- pymodel <- rtl <- host <- sim/hls <- boards <- app); "
                     f"{layer} may import only {sorted(ALLOWED[layer]) or 'nothing of mmfree'}:\n" + "\n".join(bad))


@pytest.mark.parametrize("src,dst", [("sim", "boards"), ("host", "sim"), ("host", "boards"), ("pymodel", "rtl"),
                                     ("pymodel", "host"), ("pymodel", "sim"), ("pymodel", "boards"),
                                     ("pymodel", "hls"), ("pymodel", "app"), ("rtl", "host")])
def test_forbidden_edges(edges, src, dst):
    """The edges the rule exists to prevent, named one by one."""
    assert (src, dst) not in edges, f"{src} must not import {dst}:\n" + "\n".join(edges[(src, dst)])


def test_namespace_imports():
    for name in ("mmfree.pymodel", "mmfree.rtl", "mmfree.host", "mmfree.sim", "mmfree.boards", "mmfree.hls",
                 "mmfree.serve"):
        importlib.import_module(name)


def test_serve_reaches_the_hardware_side_in_one_function():
    """The server imports the accelerator driver (and the simulated board) only in engine.open_accelerator, so
    moving the driver means changing one function."""
    bad = []
    for path in (ROOT / "mmfree" / "serve").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        owner = {}                                      # node -> the innermost function that holds it
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if node is not fn:
                        owner[node] = fn.name           # inner functions come later in the walk and win
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            where = owner.get(node, "module level")
            if any(m.startswith(("mmfree.boards", "mmfree.sim", "mmfree.rtl")) for m in mods) \
                    and where != "open_accelerator":
                bad.append(f"{path.relative_to(ROOT)}: {where} imports {mods}")
    assert not bad, "\n".join(bad)
