"""The fuzz suite runs in a scratch working directory and checks that it wrote nothing into the checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _untracked() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True)
    return set(out.stdout.splitlines()) if out.returncode == 0 else set()


@pytest.fixture(autouse=True)
def nothing_written_outside(tmp_path, monkeypatch):
    """Each fuzz test runs in its own temporary working directory; the checkout is unchanged after it."""
    before = _untracked()
    monkeypatch.chdir(tmp_path)
    yield
    assert _untracked() <= before, sorted(_untracked() - before)
