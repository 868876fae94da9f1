"""`mmfree run --streams B` and `Accelerator.generate_streams`: B independent streams decoded together through the
transport-agnostic host (mmfree.host.streams) on the ISA emulator, on pynq's own stack over the simulated device
(pynq-sim) and on the RTL under Verilator (sim, slow); each stream's tokens and the number of passes equal the
integer reference's multi-stream loop (pymodel.multistream.generate_streams) exactly."""

from __future__ import annotations

import json

import pytest

from mmfree.cli import main
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend, open_int_model
from mmfree.pymodel.multistream import generate_streams as reference_streams
from mmfree.sim.accel import DEFAULT_HW


@pytest.fixture(scope="module")
def im():
    return open_int_model("default")[0]


def _run(capsys, *argv):
    rc = main(["run", "--json", *argv])
    return rc, json.loads(capsys.readouterr().out)


def test_accelerator_generate_streams_on_the_emulator(im):
    """The Python API on the ISA emulator board: Accelerator.generate_streams, counters, the reference's passes."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.sim.emulator import EmulatedBoard

    prompts = [[315, 646, 78], [10], [90, 298, 265, 346, 363]]
    with Accelerator(EmulatedBoard(DEFAULT_HW), open_model("default", streams=3)) as acc:
        g = acc.generate_streams(prompts, 6)
    ref = reference_streams(im, prompts, 6, max_nodes=DEFAULT_HW.max_tokens)
    assert g.tokens == ref.tokens == [generate(IntBackend(im), p, 6).tokens for p in prompts]
    c = g.counters
    assert c["passes"] == ref.passes == 3 + 5 and c["prefill_passes"] == 3 and c["decode_passes"] == 5
    assert c["tokens_per_decode_pass"] == 3.0 and all(t is not None for t in g.texts)


def test_generate_streams_decode_first_on_the_emulator(im):
    """decode_first (the server's schedule): the same tokens, the pass count of the reference's loop with the same
    schedule (here one more pass than prompts-first: the short prompt decodes while the long one is fed)."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.sim.emulator import EmulatedBoard

    prompts = [[315, 646, 78], [10], [90, 298, 265, 346, 363]]
    with Accelerator(EmulatedBoard(DEFAULT_HW), open_model("default", streams=3)) as acc:
        g = acc.generate_streams(prompts, 6, decode_first=True)
    ref = reference_streams(im, prompts, 6, max_nodes=DEFAULT_HW.max_tokens, decode_first=True)
    plain = reference_streams(im, prompts, 6, max_nodes=DEFAULT_HW.max_tokens)
    assert g.tokens == ref.tokens == plain.tokens
    assert g.counters["passes"] == ref.passes == plain.passes + 1 == 9


def test_run_pynq_sim_streams_decode_first(capsys, im):
    """--decode-first through `mmfree run --board pynq-sim --streams`: bit-exact, and the pass count checked against
    the reference's loop with the same schedule."""
    pytest.importorskip("pynq")
    rc, res = _run(capsys, "--board", "pynq-sim", "--streams", "3", "--tokens", "6", "--decode-first",
                   "--prompt-ids", "315,646,78;10;90,298,265,346,363")
    ref = reference_streams(im, res["prompt_ids"], 6, max_nodes=DEFAULT_HW.max_tokens, decode_first=True)
    assert rc == 0 and res["bit_exact"] is True and res["problems"] == []
    assert res["tokens"] == ref.tokens and res["passes"] == res["reference_passes"] == ref.passes == 9


@pytest.mark.parametrize("argv, passes", [(["--prompt-ids", "3,7;1,4"], 5), (["--prompt", "def hello(x):"], 13)])
def test_run_pynq_sim_streams_equal_the_reference(capsys, im, argv, passes):
    """--board pynq-sim --streams: pynq.Overlay, MMIO, allocate and one interrupt per pass; every stream equals its
    plain greedy decoding and the pass count the reference's (prompts in one pass when they fit: 1 + 4 passes for
    two streams of 5 tokens; 4 prompts of 4..7 tokens pack into 6 passes of 4 tokens, then 7 decode passes)."""
    pytest.importorskip("pynq")
    B = 2 if "--prompt-ids" in argv else 4
    rc, res = _run(capsys, "--board", "pynq-sim", "--streams", str(B), "--tokens", "5" if B == 2 else "8", *argv)
    n = 5 if B == 2 else 8
    ref = reference_streams(im, res["prompt_ids"], n, max_nodes=DEFAULT_HW.max_tokens)
    assert rc == 0 and res["bit_exact"] is True and res["problems"] == []
    assert res["tokens"] == ref.tokens == [generate(IntBackend(im), p, n).tokens for p in res["prompt_ids"]]
    assert res["passes"] == res["reference_passes"] == ref.passes == passes == res["interrupts"]
    if B == 2:
        assert res["prompt_ids"] == [[3, 7], [1, 4]] and ref.passes == reference_streams(im, [[3, 7], [1, 4]], 5).passes
    assert res["decode_passes"] == n - 1 and res["tokens_per_decode_pass"] == B
    assert sum(map(len, res["tokens"])) > res["passes"]          # the streams shared the weight passes


def test_run_pynq_sim_streams_sample_each_with_its_own_generator(capsys, im):
    pytest.importorskip("pynq")
    rc, res = _run(capsys, "--board", "pynq-sim", "--streams", "3", "--prompt", "def hello(x):", "--tokens", "8",
                   "--temperature", "0.9", "--top-p", "0.95", "--seed", "4")
    assert rc == 0 and res["bit_exact"] is True
    assert res["tokens"] == [generate(IntBackend(im), p, 8, 0.9, 0.95, 4).tokens for p in res["prompt_ids"]]
    assert res["tokens"] != [generate(IntBackend(im), p, 8).tokens for p in res["prompt_ids"]]     # it sampled


@pytest.mark.parametrize("argv, needle", [
    (["--streams", "0"], "--streams must be 1..16"), (["--streams", "17"], "--streams must be 1..16"),
    (["--streams", "5", "--prompt-ids", "1;2;3;4;5"], "--streams 5: this bitstream verifies 4 tokens per pass"),
    (["--streams", "2", "--draft", "trigram"], "--draft does not apply with --streams"),
    (["--streams", "2", "--k", "2"], "--k does not apply with --streams"),
    (["--streams", "2", "--draft", "trigram", "--onchip"], "does not apply with --streams"),
    (["--streams", "2", "--prompt-ids", "1;2;3"], "gives 3 prompts"),
    (["--streams", "3", "--prompt-ids", "1,2"], "the prompt is 2 tokens"),
    (["--streams", "2", "--prompt-ids", "1;", "--tokens", "2"], "--prompt-ids is empty"),
    (["--decode-first"], "--decode-first schedules multi-stream passes: it goes with --streams B")])
def test_run_streams_bad_input(capsys, argv, needle):
    pytest.importorskip("pynq")
    rc = main(["run", "--board", "pynq-sim", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and "mmfree run: error: " in err and needle in err, err
    assert "Traceback" not in err


def test_run_streams_bad_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--board", "pynq-sim", "--streams", "two"])
    assert e.value.code == 2 and "argument --streams: invalid int value" in capsys.readouterr().err
    rc = main(["run", "--board", "sim", "--streams", "2", "--temperature", "0.5"])
    assert rc == 1 and "the simulated board's multi-stream run (Verilator) is greedy" in capsys.readouterr().err


@pytest.mark.sim
def test_run_sim_streams_on_the_rtl(capfd):
    """--board sim --streams 2: the same host loop on the RTL under Verilator (one simulator run, the smallest test
    model): bit-exact per pass, per stream and in the pass count."""
    from tests.sim import helpers as H

    path = H.export_random("d64")
    rc = main(["run", "--board", "sim", "--model", str(path), "--streams", "2", "--prompt-ids", "3,7;1,4",
               "--tokens", "3", "--json"])
    res = json.loads(capfd.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True and res["problems"] == []
    assert res["passes"] == res["reference_passes"] == 3 and res["board"] == "sim"
    im = H.load("d64")
    assert res["tokens"] == [generate(IntBackend(im), p, 3).tokens for p in ([3, 7], [1, 4])]


@pytest.mark.parametrize("flags, logits", [([], True), (["--no-logits"], False)])
def test_run_board_streams_writes_logits_unless_no_logits(capsys, monkeypatch, flags, logits):
    """`mmfree run --board kv260 --bitstream X --streams 2` (the real-board path: Accelerator.from_bitstream through
    pynq on the simulated PYNQ device): every pass writes its logits unless --no-logits, as the one-stream and
    pynq-sim runs do (the flag reaching the host's run_forest, the layer that sets the pass's WRITE_LOGITS bit)."""
    pytest.importorskip("pynq")
    from mmfree.boards.pynq import sim_overlay
    from mmfree.host.accel import AccelHost

    seen, run_forest = [], AccelHost.run_forest

    def spy(self, tokens, parents, starts, write_logits=True):
        seen.append(write_logits)
        return run_forest(self, tokens, parents, starts, write_logits)

    monkeypatch.setattr(AccelHost, "run_forest", spy)
    with sim_overlay() as (ov, _, _):
        rc, res = _run(capsys, "--board", "kv260", "--bitstream", str(ov.bitfile_name), "--streams", "2",
                       "--prompt-ids", "1,2", "--tokens", "3", *flags)
    assert rc == 0 and res["board"] == "kv260" and len(res["tokens"]) == 2
    assert seen and set(seen) == {logits}, seen
