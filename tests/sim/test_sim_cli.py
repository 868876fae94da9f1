"""`mmfree sim` argument and input errors: each is a clear MmfreeError (exit status 1 and one line on stderr)
raised before any simulator starts, so these tests need no Verilator build."""

from __future__ import annotations

import pytest

from mmfree import MmfreeError
from mmfree.cli import main


@pytest.fixture(autouse=True)
def no_simulator(monkeypatch):
    """Any attempt to build or run the RTL fails the test: the errors must come first."""
    import mmfree.sim.accel as A

    def forbidden(*a, **kw):
        raise AssertionError("the simulator was started for an invalid request")

    monkeypatch.setattr(A, "run_job", forbidden)
    monkeypatch.setattr(A, "build_accel", forbidden)


def _err(capsys, *argv):
    rc = main(["sim", *argv, "--json"])
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 1, err
    assert cap.out == "", cap.out
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("mmfree sim: error: "), err
    return last


@pytest.mark.parametrize("argv, needle", [
    (["--model", "/nonexistent/model", "--prompt-ids", "1"], "does not exist"),
    (["--prompt-ids", "1", "--k", "0"], "--k must be 1..4"),
    (["--prompt-ids", "1", "--k", "5"], "--k must be 1..4"),
    (["--prompt-ids", "1", "--tokens", "0"], "--tokens must be >= 1"),
    (["--prompt-ids", "1", "--tokens", "100000"], "at most"),
    (["--prompt-ids", "1", "--latency", "0"], "--latency"),
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", ","], "no tokens"),
    (["--prompt-ids", "1,99999"], "outside the vocabulary"),
    (["--prompt-ids", "-1"], "outside the vocabulary"),
    (["--prompt", ""], "no tokens"),
    (["--prompt-ids", ",".join(["5"] * 2047), "--tokens", "2"], "shorten the prompt"),
    (["--prompt-ids", "1", "--weight-ports", "4", "--memory", "python"], "serves one AXI master"),
])
def test_sim_cli_errors(capsys, argv, needle):
    assert needle in _err(capsys, *argv)


def test_sim_cli_model_file_not_dir(capsys, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    assert "is a file" in _err(capsys, "--model", str(f), "--prompt-ids", "1")


def test_sim_cli_text_prompt_too_long(capsys):
    assert "shorten the prompt" in _err(capsys, "--prompt", "def f(x):\n    return x\n" * 400)


def test_simulate_generation_checks_before_simulating():
    from mmfree.sim.accel import simulate_generation

    for kw, needle in [(dict(prompt_ids=[]), "prompt is empty"), (dict(k=0), "k must be"),
                       (dict(k=5), "k must be"), (dict(n_tokens=0), ">= 1"), (dict(rd_latency=0), "latency"),
                       (dict(memory="dram"), "memory must be"), (dict(prompt_ids=[1] * 3000), "at most")]:
        args = dict(model="default", prompt_ids=[1], n_tokens=2, progress=False)
        args.update(kw)
        with pytest.raises(MmfreeError, match=needle):
            simulate_generation(**args)


def test_simulate_generation_model_too_big_for_simulated_ddr(monkeypatch):
    """A model whose image does not fit the 64 MiB simulated DDR is refused before the build."""
    import mmfree.sim.accel as A
    from mmfree.sim.accel import simulate_generation

    monkeypatch.setattr(A, "SIM_MEM_BYTES", 1 << 16)
    with pytest.raises(MmfreeError, match="bytes of DDR"):
        simulate_generation("default", [1], 2, progress=False)
