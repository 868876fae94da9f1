"""Shared configuration: where things live on disk. Nothing here imports heavy packages.

Everything the package reads from its own tree goes through :mod:`importlib.resources` (here
:func:`source_digest`), so a wheel installed into site-packages works like a source checkout. Build caches
live in the user's cache directory (:func:`cache_dir`), never inside site-packages.
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import resources
from pathlib import Path

#: The directory holding the ``mmfree`` package's folders: the source checkout, or site-packages for a wheel.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

#: The sources the accelerator's Verilog is generated from, as :func:`source_digest` names them: its cache key.
RTL_SOURCES = ("mmfree.rtl", "mmfree.pymodel:numerics.py", "mmfree.pymodel:layout.py")


def checkout_root() -> Path | None:
    """The source checkout this package runs from (editable install or ``PYTHONPATH``), else ``None``.

    A checkout is recognised by its ``pyproject.toml`` naming the ``mmfree`` project next to ``mmfree/``;
    site-packages never holds one, so an installed wheel always gets ``None``.
    """
    pyproject = PACKAGE_ROOT / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    return PACKAGE_ROOT if 'name = "mmfree"' in text else None


def user_cache_dir() -> Path:
    """The per-user cache directory for mmfree: ``$XDG_CACHE_HOME/mmfree`` (default ``~/.cache/mmfree``);
    ``%LOCALAPPDATA%\\mmfree\\cache`` on Windows, ``~/Library/Caches/mmfree`` on macOS."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "mmfree" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mmfree"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmfree"


def cache_dir() -> Path:
    """Directory for build products that may be reused between runs (Verilator builds, exports); created.

    ``MMFREE_CACHE`` overrides. Default: ``<checkout>/build`` when running from a writable source checkout
    (:func:`checkout_root`; next to the sources, removed by ``make clean``), else :func:`user_cache_dir`.
    Entries are keyed by content digests, so any directory may be shared between checkouts and installs.
    """
    env = os.environ.get("MMFREE_CACHE")
    if env:
        path = Path(env)
    else:
        root = checkout_root()
        path = root / "build" if root is not None and os.access(root, os.W_OK) else user_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_digest(*sources: str, extra: str | bytes = b"", length: int = 16) -> str:
    """A hex digest of installed source files, for cache keys that change whenever the code does.

    Each source is ``"mmfree.rtl"`` (every ``*.py`` of that package, sorted by name) or
    ``"mmfree.pymodel:numerics.py"`` (one file of a package). ``extra`` (e.g. build parameters) is hashed
    first. Reads through :mod:`importlib.resources`, so a checkout and an installed wheel agree.
    """
    h = hashlib.sha256(extra if isinstance(extra, bytes) else extra.encode())
    for src in sources:
        package, _, name = src.partition(":")
        root = resources.files(package)
        files = [root / name] if name else sorted((f for f in root.iterdir() if f.name.endswith(".py")),
                                                  key=lambda f: f.name)
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:length]
