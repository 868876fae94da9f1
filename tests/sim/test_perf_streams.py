"""The modeled multi-stream pass (mmfree.sim.perf_streams, `mmfree perf --streams B`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import emit_program
from mmfree.sim import perf as P
from mmfree.sim.perf_streams import forest_program, predict_streams

ROOT = Path(__file__).resolve().parents[2]


def test_forest_program_is_the_compilers():
    dims = P.dims_for("370M")
    plain = emit_program(dims)
    assert [(i.op, i.args) for i in forest_program(dims, 1)] == [(i.op, i.args) for i in plain]
    three = forest_program(dims, 3)
    assert [(i.op, i.args) for i in three] == [(i.op, i.args) for i in emit_program(dims, streams=3)]
    loads = [ins for ins in three if ins.op == "LOAD" and ins["dst"] == I.LD_HROOT]
    assert len(loads) == 2 * dims.layers and all(ins["count"] == dims.d for ins in loads)
    stride = RM.state_stride(dims.d, dims.layers)
    assert [(ins["stream"], ins["offset"]) for ins in loads[:2]] == [(1, stride), (2, 2 * stride)]


def test_one_stream_is_plain_decoding():
    r = predict_streams("1.3B", "kv260", 1)
    plain = P.predict("1.3B", "kv260", k=1)
    assert r["aggregate_tokens_per_s"] == pytest.approx(plain["tokens_per_s"])
    assert r["speedup_vs_single_stream"] == pytest.approx(1.0)


def test_streams_share_the_weight_pass():
    prev = None
    for B in (1, 2, 4, 8):
        r = predict_streams("1.3B", "kv260", B)
        assert r["forest_nodes"] == B and r["hw"]["max_tokens"] == B and r["streams"] == B
        # a stream never gets faster than alone; the aggregate grows with every stream
        assert r["per_stream_tokens_per_s"] <= r["single_stream_tokens_per_s"] + 1e-9
        assert r["speedup_vs_single_stream"] <= B + 1e-9
        if prev is not None:
            assert r["aggregate_tokens_per_s"] > prev
        prev = r["aggregate_tokens_per_s"]
    # the per-stream start-state LOADs cost bus time: more than the B-token tree pass
    tree = P.predict("1.3B", "kv260", k=4, hw=P.default_hw(P.dims_for("1.3B"), None, 4))
    assert predict_streams("1.3B", "kv260", 4, hw=P.default_hw(P.dims_for("1.3B"), None, 4))["cycles_per_pass"] > \
        tree["cycles_per_pass"]


def test_streams_with_drafts():
    r = predict_streams("370M", "zcu104", 2, k=2, accept_len=1.75)
    assert r["forest_nodes"] == 4 and r["accept_len"] == 1.75
    one = predict_streams("370M", "zcu104", 2)
    assert r["aggregate_tokens_per_s"] > one["aggregate_tokens_per_s"]


@pytest.mark.parametrize("kw, needle", [(dict(streams=0), "--streams must be"), (dict(streams=17), "--streams must be"),
                                        (dict(streams=4, k=5), "16"), (dict(streams=2, k=2, accept_len=3), "accept-len"),
                                        (dict(streams=2, k=0), "--k must be")])
def test_bad_arguments_refused(kw, needle):
    with pytest.raises(MmfreeError, match=needle):
        predict_streams("370M", "kv260", **kw)
    with pytest.raises(MmfreeError, match="max_tokens"):
        predict_streams("370M", "kv260", 4, hw=P.default_hw(P.dims_for("370M"), None, 2))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mmfree", "perf", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_streams_json_and_table():
    out = _cli("--model", "370M", "--board", "kv260", "--streams", "2", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["streams"] == 2 and r["label"] == "modeled" and r["fits"] is True
    assert r["aggregate_tokens_per_s"] > 1.9 * r["single_stream_tokens_per_s"]
    # 1.3B needs width 8192: two tokens' buffer copies (one per reader) go to URAM, so two streams fit the KV260
    out = _cli("--model", "1.3B", "--board", "kv260", "--streams", "2", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["fits"] is True and r["aggregate_tokens_per_s"] > 1.9 * r["single_stream_tokens_per_s"]
    assert (r["resources"]["bram36"], r["resources"]["uram"]) == (53, 46)
    # four ports x two ways at k = 4: over the KV260's LUTs, with the plain units and the board file's pipelined ones
    for flags, lut in ((["--no-pipelined-units"], "LUT 144,993 of 117,120"), ([], "LUT 140,184 of 117,120")):
        out = _cli("--model", "1.3B", "--board", "kv260", "--streams", "4", *flags)
        assert out.returncode == 3, out.stderr
        assert "aggregate over 4 streams" in out.stdout and "single stream" in out.stdout and "DOES NOT FIT" in out.stdout
        assert lut in out.stdout
    # four ports x one way: four streams fit, at >= 3.5 x the single stream (issue 23's target)
    out = _cli("--model", "1.3B", "--board", "kv260", "--streams", "4", "--weight-ports", "4", "--engines", "1",
               "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["fits"] is True and r["speedup_vs_single_stream"] >= 3.5


@pytest.mark.parametrize("args, needle", [(("--streams", "0"), "--streams must be in 1..16"),
                                          (("--streams", "9", "--k", "2"), "18 tokens per pass"),
                                          (("--streams", "2", "--k", "2", "--accept-len", "3"), "--accept-len")])
def test_cli_bad_streams(args, needle):
    out = _cli(*args)
    assert out.returncode == 1 and "mmfree perf: error: " in out.stderr and needle in out.stderr
    assert "Traceback" not in out.stderr
