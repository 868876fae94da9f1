"""The import rule: the reference (pymodel) never imports rtl, hls, sim or boards."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pymodel": ("mmfree.rtl", "mmfree.hls", "mmfree.sim", "mmfree.boards"),
    "rtl": ("mmfree.sim", "mmfree.boards", "mmfree.hls"),
    # hls may read board data (mmfree.boards.boardfile), nothing else of the hardware side
    "hls": ("mmfree.rtl", "mmfree.sim", "mmfree.boards.driver", "mmfree.boards.cli"),
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
    for name in ("mmfree.pymodel", "mmfree.rtl", "mmfree.sim", "mmfree.boards", "mmfree.hls"):
        importlib.import_module(name)
