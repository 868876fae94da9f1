"""Fuzz every numeric command-line flag (issue 22): any integer, float (NaN and infinities included) or
non-number string. Each run of `mmfree.cli.main` (in-process) ends in exit 0 with a result, or exit 1 with
one `mmfree CMD: error:` line, or exit 2 (usage): no traceback, no hang, no NaN printed.

Commands whose valid run is cheap (generate on the embedded model, perf, energy's model row, hls synth into a
temporary folder) get values from the whole domain. Commands whose valid run is minutes of work (sim, run,
demo, train, build, rtl, hls csim, trigram build) get values from outside their accepted ranges only: there the
property is "refused before any work", checked by the hang guard.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.helpers import assert_clear, fuzz, run_cli

ANY_INT = st.integers(-2**70, 2**70) | st.integers(-3, 5)
ANY_FLOAT = st.floats() | st.floats(-10, 10) | st.sampled_from([0.0, -0.0, 1e-300, 1e300])
#: not numbers for any flag (argparse accepts " 3 ", "1_000" and, for floats, "1e3": those are valid values)
JUNK = st.sampled_from(["", "abc", "0x10", "--", "nan", "-inf", "inf", "1.2.3", "one", "1,5"])
NEG = st.integers(-2**70, 0)


def big(lo: int) -> st.SearchStrategy:
    return st.integers(lo, 2**70)


P = ["--prompt", "def "]
#: (command, base argv, flag, values). Base argv is completed with a temporary --out where "OUT" stands.
CASES = [
    ("generate", ["generate", *P, "--max-new-tokens", "2"], "--temperature", ANY_FLOAT | JUNK),
    ("generate", ["generate", *P, "--max-new-tokens", "2", "--temperature", "0.8"], "--top-p", ANY_FLOAT | JUNK),
    ("generate", ["generate", *P, "--max-new-tokens", "1", "--temperature", "1"], "--seed", ANY_INT | JUNK),
    ("generate", ["generate", *P], "--max-new-tokens", st.integers(-2**70, 3) | JUNK),
    ("generate", ["generate", "--backend", "int", "--draft", "trigram", *P, "--max-new-tokens", "3"], "--max-draft",
     st.integers(-2**70, 6) | JUNK),
    ("generate", ["generate", "--backend", "int", "--draft", "trigram", *P, "--max-new-tokens", "3"], "--draft-nodes",
     st.integers(-2**70, 8) | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--clock-mhz", ANY_FLOAT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--lanes", ANY_INT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--bus-bits", ANY_INT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--engines", ANY_INT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--weight-ports", ANY_INT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json"], "--k", ANY_INT | JUNK),
    ("perf", ["perf", "--model", "370M", "--json", "--k", "4"], "--accept-len", ANY_FLOAT | JUNK),
    ("energy", ["energy", "--backends", "fpga-model", "--model", "370M", "--json"], "--clock-mhz", ANY_FLOAT | JUNK),
    ("energy", ["energy", "--backends", "fpga-model", "--model", "370M", "--json"], "--k", ANY_INT | JUNK),
    ("energy", ["energy", "--backends", "fpga-model", "--model", "370M", "--json", "--k", "4"], "--accept-len",
     ANY_FLOAT | JUNK),
    ("energy", ["energy", "--backends", "fpga-model", "--model", "370M", "--json"], "--tokens", ANY_INT | JUNK),
    ("hls", ["hls", "synth", "--board", "kv260", "--out", "OUT", "--no-run", "--top", "mmfree_dequantize", "--json"],
     "--clock-ns", ANY_FLOAT | JUNK),
    # refused before any work
    ("sim", ["sim", "--prompt-ids", "1"], "--tokens", NEG | big(2049) | JUNK),
    ("sim", ["sim", "--prompt-ids", "1"], "--k", NEG | big(5) | JUNK),
    ("sim", ["sim", "--prompt-ids", "1"], "--latency", NEG | big(4097) | JUNK),
    ("sim", ["sim", "--prompt-ids", "1"], "--weight-ports", ANY_INT.filter(lambda v: v not in (1, 2, 4)) | JUNK),
    ("run", ["run", "--board", "sim", "--prompt-ids", "1"], "--tokens", NEG | JUNK),
    ("run", ["run", "--board", "sim", "--prompt-ids", "1"], "--k", NEG | big(5) | JUNK),
    ("run", ["run", "--board", "sim", "--prompt-ids", "1"], "--streams", NEG | big(17) | JUNK),
    ("run", ["run", "--board", "pynq-sim", "--prompt-ids", "1;2"], "--streams", NEG | big(17) | JUNK),
    ("run", ["run", "--board", "sim", "--prompt-ids", "1"], "--timeout",
     st.floats(max_value=0) | st.sampled_from([math.nan, math.inf, -math.inf]) | JUNK),
    ("demo", ["demo"], "--tokens", NEG | big(1025) | JUNK),
    ("train", ["train", "--out", "OUT"], "--steps", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--batch-size", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--seq-len", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--hidden-size", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--layers", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--intermediate-size", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--vocab-size", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--eval-every", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--save-every", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--warmup", st.integers(-2**70, -1) | JUNK),
    ("train", ["train", "--out", "OUT"], "--threads", NEG | JUNK),
    ("train", ["train", "--out", "OUT"], "--lr",
     st.floats(max_value=0) | st.floats(min_value=10.001) | st.sampled_from([math.nan, math.inf]) | JUNK),
    ("train", ["train", "--out", "OUT"], "--weight-decay",
     st.floats(max_value=-1e-9) | st.floats(min_value=10.001) | st.sampled_from([math.nan, math.inf]) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--clock-mhz",
     st.floats(max_value=9.99) | st.floats(min_value=300.01) | st.sampled_from([math.nan, math.inf]) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--max-width",
     ANY_INT.filter(lambda v: v < 16 or v > 32768 or v & (v - 1)) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--weight-ports",
     ANY_INT.filter(lambda v: v not in (1, 2, 4, 6)) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--vector-lanes",
     ANY_INT.filter(lambda v: v not in (1, 2, 4, 8)) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--engines",
     ANY_INT.filter(lambda v: v not in (1, 2)) | JUNK),
    ("build", ["build", "--board", "kv260", "--out", "OUT", "--no-vivado"], "--max-tokens",
     st.integers(-2**70, 0) | big(17) | JUNK),
    ("rtl", ["rtl", "verilog", "--out", "OUT"], "--lanes", ANY_INT.filter(lambda v: v not in (5, 10, 20, 40, 80)) | JUNK),
    ("rtl", ["rtl", "verilog", "--out", "OUT"], "--tokens", NEG | JUNK),
    ("rtl", ["rtl", "estimate"], "--banks", NEG | JUNK),
    ("hls", ["hls", "csim"], "--tokens", NEG | JUNK),
    ("hls", ["hls", "csim"], "--vectors", st.integers(-2**70, 99) | JUNK),
    ("trigram", ["trigram", "build", "--out", "OUT"], "--sets-log2", NEG | big(27) | JUNK),
    ("trigram", ["trigram", "build", "--out", "OUT"], "--ways", NEG | big(65) | JUNK),
]


@pytest.mark.parametrize("cmd,base,flag,values", CASES, ids=[f"{c[1][0]}{c[2]}" for c in CASES])
def test_numeric_flag(cmd, base, flag, values, tmp_path, capsys):
    @fuzz(0.5)
    @given(v=values)
    def one(v):
        argv = [str(tmp_path / "out") if a == "OUT" else a for a in base] + [f"{flag}={v}"]
        rc, out, err = run_cli(argv, capsys, 120)
        assert_clear(0 if (cmd, rc) == ("perf", 3) else rc, err, cmd)        # perf: 3 = the design does not fit
        assert "NaN" not in out and "Infinity" not in out, out

    one()
