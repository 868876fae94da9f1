"""Shared configuration: where things live on disk. Nothing here imports heavy packages."""

from __future__ import annotations

import os
from pathlib import Path

#: Root of the source checkout (or of the installed package tree).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Directory for build products that may be reused between runs (Verilator builds, exports).

    ``MMFREE_CACHE`` overrides; default ``<checkout>/build`` when writable, else ``~/.cache/mmfree``.
    """
    env = os.environ.get("MMFREE_CACHE")
    if env:
        path = Path(env)
    else:
        path = PACKAGE_ROOT / "build"
        if not os.access(PACKAGE_ROOT, os.W_OK):
            path = Path.home() / ".cache" / "mmfree"
    path.mkdir(parents=True, exist_ok=True)
    return path
