"""Text templates shipped as package data (TCL for Vivado and Vitis HLS): ``@NAME@`` placeholders.

A template is a plain file (``*.tcl.in``) readable without Python; lines starting with ``#@`` are notes for
its reader and are dropped. :func:`render` fills every placeholder and refuses a template with one left
unfilled or a value no placeholder takes (either is a bug in the caller, not bad user input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def render(package: str, name: str, subs: Mapping[str, object]) -> str:
    """Template ``name`` of ``package`` (e.g. ``("mmfree.boards", "tcl/build.tcl.in")``) with each ``@KEY@``
    replaced by ``str(subs[KEY])``. Raises ``KeyError`` for a placeholder without a value or a value without
    a placeholder."""
    text = resources.files(package).joinpath(name).read_text()
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#@"))
    wanted = set(_PLACEHOLDER.findall(text))
    if wanted != set(subs):
        raise KeyError(f"template {package}:{name}: placeholders without a value {sorted(wanted - set(subs))}, "
                       f"values without a placeholder {sorted(set(subs) - wanted)}")
    return _PLACEHOLDER.sub(lambda m: str(subs[m.group(1)]), text)
