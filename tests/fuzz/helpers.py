"""Shared pieces of the fuzz suite (hypothesis): the example budget, running the CLI in-process with a
hang guard, and the "clear error or correct result" check.

Budget: ``MMFREE_FUZZ_EXAMPLES`` sets the examples per test; otherwise 12 in the default run and 25x that
with ``MMFREE_SLOW=1`` (or ``-m slow``). docs/reliability.md records cases x examples.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

SLOW = os.environ.get("MMFREE_SLOW") == "1"
DEFAULT_EXAMPLES = 12
SLOW_FACTOR = 25


def examples(scale: float = 1.0) -> int:
    """Examples for one fuzz test: ``scale`` x the budget (at least 3)."""
    base = int(os.environ.get("MMFREE_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES * (SLOW_FACTOR if SLOW else 1))
    return max(3, int(base * scale))


def fuzz(scale: float = 1.0):
    """``@fuzz()``: hypothesis settings of this suite (no deadline: the machine may be loaded; the hang
    guard of :func:`run_cli` bounds each example instead)."""
    return settings(max_examples=examples(scale), deadline=None, derandomize=not SLOW,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


class Hang(Exception):
    pass


@contextmanager
def hang_guard(seconds: int = 120):
    """Fail (raise :class:`Hang`) when the block takes longer than ``seconds``."""
    def alarm(*_):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str], capsys, seconds: int = 120) -> tuple[int, str, str]:
    """``mmfree.cli.main(argv)`` in-process: (exit status, stdout, stderr). Any exception other than a
    usage error escapes (= a traceback: the test fails)."""
    from mmfree.cli import main

    with hang_guard(seconds):
        try:
            rc = main(argv)
        except SystemExit as exc:          # argparse usage error
            rc = int(exc.code)
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_clear(rc: int, err: str, cmd: str) -> None:
    """Exit 0 (a result), 1 (one `mmfree CMD: error:` line) or 2 (a usage error), no traceback."""
    assert "Traceback" not in err, err
    assert rc in (0, 1, 2), (rc, err)
    if rc == 1:
        assert f"mmfree {cmd}: error:" in err, err
    if rc == 2:
        assert "error:" in err, err
