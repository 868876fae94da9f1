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


def test_simulate_generation_model_too_big_for_simulated_ddr():
    """A model whose image does not fit a simulated DDR of the size asked for is refused before the build."""
    from mmfree.sim.accel import simulate_generation

    with pytest.raises(MmfreeError, match="bytes of DDR"):
        simulate_generation("default", [1], 2, progress=False, mem_bytes=1 << 16)


@pytest.mark.parametrize("bad", [3 << 20, 1 << 10, 1 << 41, 2.0**26, True])
def test_simulate_generation_bad_mem_bytes(bad):
    from mmfree.sim.accel import simulate_generation

    with pytest.raises(MmfreeError, match="mem_bytes"):
        simulate_generation("default", [1], 2, progress=False, mem_bytes=bad)


def test_simulated_ddr_sized_to_the_model():
    """The default model keeps the 64 MiB DDR (and so its cached build); a 370M-shape image gets the next power
    of two above its program, buffers and image."""
    from mmfree.host.layout import ddr_needed
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import DEFAULT_HW, SIM_MEM_BYTES, sim_mem_bytes, tb_wrapper

    im, _ = open_int_model("default")
    assert sim_mem_bytes(ddr_needed(compile_model(im), DEFAULT_HW.max_tokens)) == SIM_MEM_BYTES == 64 << 20
    assert sim_mem_bytes(150 << 20) == 256 << 20 and sim_mem_bytes(256 << 20) == 256 << 20
    assert sim_mem_bytes((256 << 20) + 1) == 512 << 20
    assert tb_wrapper(DEFAULT_HW) == tb_wrapper(DEFAULT_HW, mem_bytes=64 << 20)     # the cached default build
    assert ".MEM_WORDS_LOG2(24)" in tb_wrapper(DEFAULT_HW, mem_bytes=256 << 20)
