"""The import rule: the reference (pymodel) never imports rtl, hls, sim or boards."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pymodel": ("mmfree.rtl", "mmfree.hls", "mmfree.sim", "mmfree.boards", "mmfree.serve"),
    "rtl": ("mmfree.sim", "mmfree.boards", "mmfree.hls", "mmfree.serve"),
    # hls may read board data (mmfree.boards.boardfile), nothing else of the hardware side
    "hls": ("mmfree.rtl", "mmfree.sim", "mmfree.boards.driver", "mmfree.boards.cli", "mmfree.serve"),
    # the server (mmfree/serve) sits on top of every area: none of them imports it
    "sim": ("mmfree.serve",),
    "boards": ("mmfree.serve",),
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_import_direction(folder):
    bad = []
    for path in (ROOT / folder).rglob("*.py"):
        for name in _imports(path):
            if name.startswith(FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "imports flow one way (reference <- rtl/hls/sim/boards):\n" + "\n".join(bad)


def test_namespace_imports():
    for name in ("mmfree.pymodel", "mmfree.rtl", "mmfree.sim", "mmfree.boards", "mmfree.hls", "mmfree.serve"):
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
