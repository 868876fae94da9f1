"""Child processes that never outlive mmfree (the Verilator simulator, its build, tool runs).

:func:`run` starts a command in its own process group with ``PR_SET_PDEATHSIG = SIGKILL`` (Linux): when the
mmfree process dies for any reason, SIGKILL included, the kernel kills the child. In every other exit path
(return, exception, Ctrl-C, SIGTERM through :func:`terminate_on_signals`) the whole group is killed, so no
grandchild survives either. :func:`kill_all` kills every group still registered (also run at exit).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
_live: dict[int, subprocess.Popen] = {}
_lock = threading.Lock()


def _die_with(parent: int) -> None:
    """preexec_fn (runs in the child before exec): SIGKILL when the parent thread dies; if the parent is
    already gone (it died between fork and here), exit now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(137)


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd, cwd=None, env=None, stdout=None, stderr=None, timeout: float | None = None) -> int:
    """``subprocess.run(cmd, ...).returncode`` with the guarantees of this module. A ``timeout`` (seconds)
    kills the group and raises ``subprocess.TimeoutExpired``."""
    parent = os.getpid()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True,
                         preexec_fn=lambda: _die_with(parent))
    with _lock:
        _live[p.pid] = p
    try:
        return p.wait(timeout)
    finally:
        _kill_group(p)           # grandchildren, and the child itself on an exception
        p.wait()
        with _lock:
            _live.pop(p.pid, None)


def live_pids() -> list[int]:
    """Pids of the children started by :func:`run` that are still running."""
    with _lock:
        return list(_live)


def kill_all() -> None:
    """SIGKILL every process group started by :func:`run` and not finished yet."""
    with _lock:
        procs = list(_live.values())
    for p in procs:
        _kill_group(p)


atexit.register(kill_all)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM/SIGHUP arrives; ``status`` = 128 + the signal number. A
    BaseException (like KeyboardInterrupt) so that no ``except Exception``/``SystemExit`` swallows it."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP kill the children first, then raise :class:`Terminated` in the
    main thread so that every ``finally`` (temporary folders included) runs. Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        kill_all()
        raise Terminated(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
