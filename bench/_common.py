"""Helpers shared by the bench scripts: recording results into docs/ between markers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).relative_to(ROOT).as_posix() if Path(sys.argv[0]).is_absolute()
                                 else sys.argv[0]] + sys.argv[1:])


def write_section(doc: str, marker: str, body: str) -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in docs/<doc> (appended if absent)."""
    from mmfree.atomic import write_text

    path = ROOT / "docs" / doc
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(path, text)
