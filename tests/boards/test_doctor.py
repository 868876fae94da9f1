"""`mmfree doctor` (issue 19): every check PASS on the simulated boards, each FAIL with its fix, exit codes, bad
input as one clear error."""

from __future__ import annotations

import json

import pytest

from mmfree.boardfile import load_board
from mmfree.cli import main
from mmfree.sim.accel import DEFAULT_HW

NAMES = ["pynq", "bitstream", "accelerator", "cma", "ddr", "clock", "interrupt", "known_answer", "speed", "power"]


def _doctor(capsys, *argv):
    rc = main(["doctor", *argv])
    out = capsys.readouterr()
    return rc, out


def _json(capsys, *argv):
    rc, out = _doctor(capsys, *argv, "--json")
    return rc, json.loads(out.out)


def _check(rep, name):
    return next(c for c in rep["checks"] if c["name"] == name)


def test_doctor_sim_all_pass(capsys):
    rc, rep = _json(capsys, "--board", "sim")
    assert rc == 0 and rep["ok"] is True and rep["board"] == "sim"
    assert [c["name"] for c in rep["checks"]] == NAMES
    assert all(set(c) == {"name", "ok", "detail", "fix"} and c["ok"] for c in rep["checks"])
    assert "= IntModel" in _check(rep, "known_answer")["detail"]
    assert "tokens/s measured" in _check(rep, "speed")["detail"]
    assert _check(rep, "power")["detail"].startswith("no rails")


def test_doctor_pynq_sim_all_pass(capsys):
    pytest.importorskip("pynq")
    rc, rep = _json(capsys, "--board", "pynq-sim", "--tokens", "4")
    assert rc == 0 and rep["ok"] is True, rep
    assert "part xck26sfvc784-2lv = the kv260's xck26-sfvc784-2LV-c" in _check(rep, "bitstream")["detail"]
    assert "249.9975 MHz (pynq.Clocks), the build asked for 250 MHz" in _check(rep, "clock")["detail"]
    assert "5 interrupts through pynq's Interrupt for 5 passes" == _check(rep, "interrupt")["detail"]
    rc, out = _doctor(capsys, "--board", "pynq-sim", "--tokens", "2")
    assert rc == 0 and "PASS  known_answer" in out.out and "all checks passed (pynq-sim)" in out.out


def test_doctor_fails_small_cma_with_the_kernel_parameter(capsys, monkeypatch):
    """The simulated device with 4 MiB of DDR: the model's 8.7 MiB window does not fit; cma FAILs naming cma=,
    the accelerator cannot open, the run checks say why they did not run; exit 1."""
    pytest.importorskip("pynq")
    import mmfree.sim.pynq_device as SP

    monkeypatch.setattr(SP, "MEM_SIZE", 4 << 20)
    rc, rep = _json(capsys, "--board", "pynq-sim")
    assert rc == 1 and rep["ok"] is False
    cma = _check(rep, "cma")
    assert not cma["ok"] and "cma=" in cma["fix"] and "4.0 MiB contiguous memory free" in cma["detail"]
    assert not _check(rep, "accelerator")["ok"] and "allocate" in _check(rep, "accelerator")["detail"]
    assert _check(rep, "known_answer")["detail"].startswith("not run: the accelerator did not open")
    assert all(c["fix"] for c in rep["checks"] if not c["ok"])
    rc, out = _doctor(capsys, "--board", "pynq-sim")
    assert rc == 1 and "FAIL  cma" in out.out and "fix: raise the CMA size: kernel parameter cma=" in out.out
    assert "some checks FAILED (pynq-sim)" in out.err


def test_doctor_fails_a_clock_the_overlay_does_not_run_at(capsys, tmp_path):
    """A build that asked for 300 MHz while its PL clock runs at 249.9975 MHz: clock FAILs with the fix."""
    pytest.importorskip("pynq")
    from mmfree.boards.hwh import write_sim_overlay

    bit = write_sim_overlay(tmp_path, load_board("kv260"), DEFAULT_HW, 250.0)
    hwh = bit.with_suffix(".hwh")
    text = hwh.read_text()
    key = 'NAME="PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ" VALUE="250"'
    assert key in text
    hwh.write_text(text.replace(key, key.replace('"250"', '"300"')))
    rc, rep = _json(capsys, "--board", "pynq-sim", "--bit", str(bit), "--tokens", "2")
    clock = _check(rep, "clock")
    assert rc == 1 and not clock["ok"] and "asked for 300 MHz" in clock["detail"] and "fclk0_mhz" in clock["fix"]
    assert [c["name"] for c in rep["checks"] if not c["ok"]] == ["clock"]


def test_doctor_real_board_without_one_says_so(capsys, tmp_path):
    """--board kv260 on a machine without a board: the .hwh checks pass, loading fails with the fix, the checks
    that need the accelerator say they did not run; ddr still compares the model with the board file."""
    pytest.importorskip("pynq")
    from mmfree.boards.hwh import write_sim_overlay

    bit = write_sim_overlay(tmp_path, load_board("kv260"), DEFAULT_HW, 250.0)
    rc, rep = _json(capsys, "--board", "kv260", "--bit", str(bit))
    assert rc == 1 and rep["ok"] is False
    b = _check(rep, "bitstream")
    assert not b["ok"] and "no PYNQ board here" in b["detail"] and b["fix"]
    assert _check(rep, "ddr")["ok"] and "the kv260 leaves 3072 MiB" in _check(rep, "ddr")["detail"]
    assert _check(rep, "known_answer")["detail"].startswith("not run: the overlay did not load")


@pytest.mark.parametrize("argv,message", [
    (["--board", "nope"], "unknown board 'nope'"),
    (["--board", "kv260", "--bit", "/nonexistent/x.bit"], "--bit /nonexistent/x.bit does not exist"),
    (["--board", "sim", "--bit", __file__], "--bit is for a PYNQ board or pynq-sim"),
    (["--board", "sim", "--tokens", "0"], "--tokens must be an integer in 1..256"),
    (["--board", "sim", "--timeout", "-1"], "--timeout"),
    (["--board", "pynq-sim", "--bit", __file__], "is not a simulated build's bitstream"),
])
def test_doctor_bad_input_one_clear_error(capsys, argv, message):
    rc, out = _doctor(capsys, *argv)
    assert rc == 1 and out.err.startswith("mmfree doctor: error: ") and message in out.err, out.err
    assert "Traceback" not in out.err and out.out == ""


def test_doctor_nan_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--board", "sim", "--timeout", "nan"])
    assert e.value.code == 2
