"""No leaked process, no leftover temporary folder: SIGTERM or SIGKILL to an mmfree command that runs a
simulator kills the simulator too (PR_SET_PDEATHSIG + a process group, :mod:`mmfree.procs`), and the
command's private temporary folder is removed at once (SIGTERM) or by the next run (SIGKILL) (issue 22,
item 3). The stand-in tests run a real child process (``sleep``) through the same code path in seconds;
the ``sim`` tests kill a real ``mmfree sim`` / ``mmfree run --board sim`` while Verilator runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

#: a CLI run whose `mmfree sim` starts a real child process via mmfree.procs: a tree (a shell and two sleeps)
#: for SIGTERM (the group is killed), one process for SIGKILL (the kernel's PR_SET_PDEATHSIG reaches the
#: direct child only; the Verilator simulator is one process)
STAND_IN = """
import sys, tempfile
import mmfree.sim.accel as A
from mmfree import procs
def fake(*a, **k):
    d = tempfile.mkdtemp(prefix="work-")           # inside the command's private temporary folder
    open(d + "/f", "w").write("x")
    print("READY", flush=True)
    procs.run(CMD)
A.simulate_generation = fake
from mmfree.cli import main
sys.exit(main(["sim", "--prompt-ids", "1", "--tokens", "1"]))
"""


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                kids.setdefault(int(stat[1]), []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def start(argv_or_code, tmp: Path, code: bool = False) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", argv_or_code] if code else [sys.executable, "-m", "mmfree.cli", *argv_or_code]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)


def kill_and_check(p: subprocess.Popen, sig: int, kids: set[int]) -> None:
    p.send_signal(sig)
    p.wait(timeout=60)
    wait_for(lambda: not any(alive(k) for k in kids), 20, f"children {sorted(kids)} to die")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stand_in_simulator_dies_with_the_command(tmp_path, sig):
    tree = sig == signal.SIGTERM
    cmd = '["sh", "-c", "sleep 300 & sleep 301; wait"]' if tree else '["sleep", "300"]'
    p = start(f"CMD = {cmd}\n" + STAND_IN, tmp_path, code=True)
    try:
        assert p.stdout.readline().strip() == "READY", p.stderr.read()
        n = 3 if tree else 1
        kids = wait_for(lambda: (lambda d: d if len(d) >= n else None)(descendants(p.pid)), 30, f"{n} children")
        kill_and_check(p, sig, kids)
    finally:
        p.kill()
    if sig == signal.SIGTERM:
        assert p.returncode == 128 + signal.SIGTERM and "mmfree sim: terminated" in p.stderr.read()
        assert list(tmp_path.iterdir()) == []                        # the private temporary folder is gone
    else:
        left = list(tmp_path.iterdir())
        assert len(left) == 1 and left[0].name.startswith("mmfree.mmfree-tmp-")
        q = start(["generate", "--max-new-tokens", "-1"], tmp_path)   # the next run removes it
        q.communicate(timeout=120)
        assert q.returncode == 1 and list(tmp_path.iterdir()) == []


def test_procs_run_kills_the_group_on_an_exception():
    import threading

    from mmfree import procs

    t = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    old = signal.signal(signal.SIGUSR1, lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    try:
        t.start()
        with pytest.raises(RuntimeError, match="stop"):
            procs.run(["sh", "-c", "sleep 300 & sleep 301; wait"])
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert procs.live_pids() == [] and not descendants(os.getpid()) - {threading.get_native_id()}


def _sim_started(pid: int):
    """The Verilator simulator's pid once it runs (the binary is named after the top: mmfree_accel_tb)."""
    for k in descendants(pid):
        try:
            if "mmfree_accel_tb" in Path(f"/proc/{k}/cmdline").read_bytes().decode(errors="replace").split("\0")[0]:
                return {k} | descendants(k)
        except OSError:
            pass
    return None


@pytest.mark.sim
@pytest.mark.parametrize("argv,sig", [
    (["sim", "--prompt-ids", "1,2", "--tokens", "40", "--json"], signal.SIGTERM),
    (["sim", "--prompt-ids", "1,2", "--tokens", "40", "--json"], signal.SIGKILL),
    (["run", "--board", "sim", "--prompt-ids", "1,2", "--tokens", "40", "--json"], signal.SIGKILL),
])
def test_real_simulator_dies_with_the_command(tmp_path, argv, sig):
    p = start(argv, tmp_path)
    try:
        kids = wait_for(lambda: _sim_started(p.pid), 1500, "the Verilator simulator to start")
        kill_and_check(p, sig, kids)
    finally:
        p.kill()
    if sig == signal.SIGKILL:
        q = start(["generate", "--max-new-tokens", "-1"], tmp_path)
        q.communicate(timeout=120)
    assert list(tmp_path.iterdir()) == []


def test_closed_output_pipe_ends_quietly():
    """`mmfree perf | head`: the reader leaves before the output is written (here: the read end closed at once);
    the command ends without a traceback, exit 141 as a Unix tool killed by SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "mmfree", "perf", "--model", "370M"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
