"""`mmfree run`: the driver on the simulated board (the RTL under Verilator, one simulator run) bit-exact with
IntModel, and the board paths' clear refusals on a machine without a board."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmfree.cli import main

KEYS = ("tokens", "text", "cycles", "rd_bytes", "stalls", "passes", "verify_steps", "mean_accepted", "bit_exact")


@pytest.mark.sim
def test_run_sim_default_model_is_intmodel_greedy(capfd):
    """capfd: the simulator's own output must not reach stdout (it would break --json)."""
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference

    im, tok_dir = open_int_model("default")
    tok = load_tokenizer(tok_dir)
    ref = greedy_reference(im, tok.encode("def "), 8)
    rc = main(["run", "--board", "sim", "--model", "default", "--prompt", "def ", "--tokens", "8", "--json"])
    res = json.loads(capfd.readouterr().out)
    assert rc == 0
    for key in KEYS:
        assert key in res, key
    assert res["bit_exact"] is True, res["problems"]
    assert res["tokens"] == ref and res["text"] == tok.decode(ref)
    assert res["verify_steps"] == 0 and res["mean_accepted"] == 1.0
    assert res["passes"] == len(tok.encode("def ")) + 8 - 1
    assert res["cycles"] > 0 and res["rd_bytes"] > 0 and res["stalls"] >= 0


def test_run_on_a_board_without_one_says_so(capsys):
    rc = main(["run", "--board", "kv260", "--prompt-ids", "1,2", "--tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no PYNQ board here" in err or "pynq is not installed: this runs on a PYNQ board image" in err


def test_run_bad_arguments(capsys):
    for argv, msg in ((["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
                      (["--tokens", "0"], "--tokens must be >= 1"),
                      (["--timeout", "0"], "--timeout must be > 0")):
        rc = main(["run", "--board", "sim", *argv])
        assert rc == 1 and msg in capsys.readouterr().err
    rc = main(["run", "--board", "zedboard", "--prompt-ids", "1"])
    assert rc == 1 and "unknown board 'zedboard'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e9"])
def test_run_timeout_must_be_finite_and_positive(capsys, monkeypatch, value):
    """--timeout nan/inf/<= 0/more than a day: one clear error before anything runs, on every board."""
    import mmfree.sim.accel as SA
    from mmfree.boards import pynq as BP

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    monkeypatch.setattr(BP, "_pynq", lambda: pytest.fail("pynq was touched"))
    for board in ("sim", "kv260"):
        argv = ["run", "--board", board, "--prompt-ids", "1", "--tokens", "2", f"--timeout={value}"]
        if value in ("nan", "inf", "-inf"):         # not a number to range-check: a usage error (mmfree.cli.check_finite)
            with pytest.raises(SystemExit) as exc:
                main(argv)
            err = capsys.readouterr().err
            assert exc.value.code == 2 and "argument --timeout: must be a finite number" in err, err
            continue
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and "mmfree run: error: --timeout must be > 0, finite and at most 86400 seconds" in err, err


def test_run_tokens_bounded_by_memory(capsys, monkeypatch):
    """--tokens beyond what the board's memory (or the simulated board's positions) holds is refused up front."""
    import mmfree.sim.accel as SA
    from mmfree.boards import pynq as BP

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    monkeypatch.setattr(BP, "_pynq", lambda: pytest.fail("pynq was touched"))
    rc = main(["run", "--board", "sim", "--prompt-ids", "1,2", "--tokens", "2047"])
    assert rc == 1 and "prompt (2 tokens) + --tokens 2047 = 2049 positions; the simulated board runs at most 2048" \
        in capsys.readouterr().err
    rc = main(["run", "--board", "pynq-z2", "--prompt-ids", "1", "--tokens", str(10 ** 9)])
    err = capsys.readouterr().err
    assert rc == 1 and f"--tokens {10 ** 9} is more than the pynq-z2 can hold: at most" in err, err


@pytest.mark.parametrize("extra", [[], ["--draft", "trigram", "--onchip"]])
def test_run_pynq_sim_through_pynq_itself(capsys, extra):
    """--board pynq-sim: pynq's DefaultIP, MMIO and allocate (real PynqBuffers, flush/invalidate) over the simulated
    pynq device, the tokens equal to IntModel greedy decoding; pynq's active device is restored afterwards."""
    pynq = pytest.importorskip("pynq")
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference

    before = vars(pynq.Device).get("_active_device")
    rc = main(["run", "--board", "pynq-sim", "--prompt", "def ", "--tokens", "10", "--json", *extra])
    res = json.loads(capsys.readouterr().out)
    im, tok_dir = open_int_model("default")
    ref = greedy_reference(im, load_tokenizer(tok_dir).encode("def "), 10)
    assert rc == 0 and res["bit_exact"] is True and res["tokens"] == ref == res["reference_tokens"]
    assert res["board"] == "pynq-sim" and res.get("onchip", False) == bool(extra)
    assert vars(pynq.Device).get("_active_device") is before


@pytest.mark.parametrize("extra", [[], ["--draft", "trigram", "--k", "4"],
                                   ["--draft", "trigram", "--k", "4", "--tree-rule", "count-guided"]])
def test_run_pynq_sim_samples_like_the_reference(capsys, extra):
    """--board pynq-sim --temperature/--top-p/--seed: the host samples from the passes' logits through pynq's stack,
    token for token what the integer reference samples with the same seed (plain, template and count-guided trees)."""
    pytest.importorskip("pynq")
    from mmfree.pymodel.drafters import TrigramDrafter
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference, sampling_reference

    rc = main(["run", "--board", "pynq-sim", "--prompt", "def ", "--tokens", "10", "--json", "--temperature", "0.9",
               "--top-p", "0.95", "--seed", "5", *extra])
    res = json.loads(capsys.readouterr().out)
    im, tok_dir = open_int_model("default")
    ids = load_tokenizer(tok_dir).encode("def ")
    table = TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table if extra else None
    rule = "count-guided" if "count-guided" in extra else None
    ref = sampling_reference(im, ids, 10, 0.9, 0.95, 5, table, 4 if extra else 1, rule)
    assert rc == 0 and res["bit_exact"] is True and res["tokens"] == ref == res["reference_tokens"]
    assert ref != greedy_reference(im, ids, 10)           # the run sampled


def test_run_sim_refuses_bad_prompts_before_simulating(capsys, monkeypatch):
    import mmfree.sim.accel as SA

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    rc = main(["run", "--board", "sim", "--prompt-ids", "1,99999", "--tokens", "2"])
    assert rc == 1 and "outside the vocabulary [0, 4096)" in capsys.readouterr().err
    rc = main(["run", "--board", "sim", "--prompt-ids", "1", "--k", "9", "--draft", "trigram"])
    assert rc == 1 and "--k must be in 1..4" in capsys.readouterr().err


@pytest.mark.sim
def test_run_sim_trigram_without_logits(capfd):
    """--draft trigram --no-logits: the same greedy tokens, bit-exact states and argmax, no logits written (fewer
    bytes written than with them), and the cycles split into prefill and decode."""
    args = ["run", "--board", "sim", "--model", "default", "--prompt", "def ", "--tokens", "6", "--draft", "trigram",
            "--json"]
    with_logits = (main(args), json.loads(capfd.readouterr().out))
    without = (main(args + ["--no-logits"]), json.loads(capfd.readouterr().out))
    for rc, res in (with_logits, without):
        assert rc == 0 and res["bit_exact"] is True, res["problems"]
        assert res["cycles"] == res["prefill_cycles"] + res["decode_cycles"]
    assert without[1]["tokens"] == with_logits[1]["tokens"]
    assert without[1]["wr_bytes"] < with_logits[1]["wr_bytes"]


def test_run_onchip_bad_arguments(capsys, monkeypatch):
    import mmfree.sim.accel as SA

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    for argv, msg in ((["--onchip"], "--onchip runs the accelerator's trigram draft engine: give --draft trigram"),
                      (["--onchip", "--draft", "lookup"], "give --draft trigram"),
                      (["--onchip", "--draft", "trigram", "--k", "2"], "--k does not apply to --onchip")):
        rc = main(["run", "--board", "sim", "--prompt-ids", "1,2", "--tokens", "4", *argv])
        assert rc == 1 and msg in capsys.readouterr().err, argv
    help_text = subprocess.run([sys.executable, "-m", "mmfree", "run", "--help"], capture_output=True, text=True).stdout
    assert "--onchip" in help_text and "gen_passes" in help_text


def test_run_tree_rule_bad_arguments(capsys, monkeypatch):
    import mmfree.sim.accel as SA

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    for argv in (["--tree-rule", "template"], ["--draft", "lookup", "--tree-rule", "count-guided"]):
        rc = main(["run", "--board", "sim", "--prompt-ids", "1,2", "--tokens", "4", *argv])
        assert rc == 1 and "--tree-rule chooses the shape of trigram draft trees: add --draft trigram" in \
            capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exc:
        main(["run", "--board", "sim", "--prompt-ids", "1", "--draft", "trigram", "--tree-rule", "widest"])
    assert exc.value.code == 2 and "--tree-rule" in capsys.readouterr().err


@pytest.mark.sim
def test_run_sim_onchip_is_the_reference_speculative_loop(capfd):
    """The RTL's GENERATE through the driver: the greedy tokens, GEN_PASSES equal to speculative_generate's
    verify_steps, the adapted table word for word (all inside bit_exact), the prefill passes replayed."""
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference

    im, tok_dir = open_int_model("default")
    ref = greedy_reference(im, load_tokenizer(tok_dir).encode("def "), 16)
    rc = main(["run", "--board", "sim", "--model", "default", "--prompt", "def ", "--tokens", "16", "--draft",
               "trigram", "--onchip", "--no-logits", "--json"])
    res = json.loads(capfd.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True, res["problems"]
    assert res["tokens"] == ref and res["onchip"] is True and res["gen_count"] == 15
    assert res["gen_passes"] == res["reference_verify_steps"] == res["verify_steps"] < 15
    assert res["gen_cycles"] > 0 and res["cycles"] == res["prefill_cycles"] + res["decode_cycles"]
    assert "prefill passes only" in res["replayed"]


@pytest.mark.sim
@pytest.mark.parametrize("draft", ["none", "trigram"])
def test_run_sim_samples_as_the_reference(capfd, draft):
    """--temperature / --seed on the simulated RTL: the host samples from the logits each pass returns, so the tokens
    equal the integer reference's sampling with the same seed (pymodel.generate, or speculative_generate with the
    driver's k = 4 template for trigram drafts), and every pass is bit-exact."""
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.sim.run import greedy_reference, sampling_reference

    im, tok_dir = open_int_model("default")
    ids = load_tokenizer(tok_dir).encode("def ")
    rc = main(["run", "--board", "sim", "--model", "default", "--prompt", "def ", "--tokens", "6", "--draft", draft,
               "--temperature", "1.2", "--seed", "11", "--json"])
    res = json.loads(capfd.readouterr().out)
    assert rc == 0 and res["bit_exact"] is True, res["problems"]
    table = None
    if draft == "trigram":
        from mmfree.pymodel.drafters import TrigramDrafter

        table = TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table
    assert res["tokens"] == res["reference_tokens"] == sampling_reference(im, ids, 6, 1.2, 1.0, 11, table,
                                                                           4 if table else 1)
    assert res["tokens"] != greedy_reference(im, ids, 6)


def test_run_sampling_bad_arguments(capsys, monkeypatch):
    import mmfree.sim.accel as SA

    monkeypatch.setattr(SA, "run_job", lambda *a, **k: pytest.fail("the simulator was started"))
    for argv, msg in ((["--temperature", "-1"], "--temperature must be a finite number >= 0"),
                      (["--temperature", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
                      (["--temperature", "1", "--seed", "-2"], "--seed must be an integer >= 0"),
                      (["--temperature", "0.7", "--draft", "trigram", "--onchip"], "GenLoop) emits each node's argmax "
                                                                                  "and cannot sample")):
        rc = main(["run", "--board", "sim", "--prompt-ids", "1,2", "--tokens", "4", *argv])
        assert rc == 1 and msg in capsys.readouterr().err, argv
