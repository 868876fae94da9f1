"""The performance model (mmfree.sim.perf) and `mmfree perf`: program mirror, image size, predictions,
bad input; the RTL validation (marker sim) runs the accelerator on small shapes and compares cycles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.pymodel.layout import Dims
from mmfree.rtl import params as PARAMS
from mmfree.sim import perf as P

ROOT = Path(__file__).resolve().parents[2]
#: (build, config, run) recorded outside 5 %, allowed 12 % with a reason here. None: the read-latency runs (48-300
#: cycles, issue 27) are within 5 % since the model gives a vector read that fits its client's window the bus
#: rate (d96 k = 4 at 300 cycles was +7.9 %, now +4.6 %).
KNOWN_GAPS: set = set()
#: The same for the realistic-memory runs. None: the PYNQ-Z2 build on the PYNQ-Z2 DDR model, where the controller's
#: aggregate (not the ports) binds, was +5.5 % and +7.0 % with logits written, +3.7 % without (issue 23): the model
#: charged the main port's own transfers (LOADs, embedding rows, STOREs) at each port's equal share of the aggregate,
#: while the simulated controller serves the main port first; at ``perf.main_port_rate`` all four are within 3.4 %.
REALISTIC_KNOWN_GAPS: set = set()
#: The same for the random back-pressure runs (issue 27). None: the four-port d512 k = 4 runs (-5.1 %, -5.4 % at rate
#: 0.75) and d64 k = 4 without logits at rate 0.25 (-6.3 %) are within 5 % (-3.5 %, -3.7 %, -4.1 %) since the model
#: lets a STORE's W beats take the main port's bus as the packer produces them, not all at the STORE's start
#: (``perf._Bus.spread``): placed at the start they fell in an idle gap between prefetches and cost nothing.
RANDOM_KNOWN_GAPS: set = set()
KEYS = ("rows", "count", "src", "nproj", "slot", "bank", "epi", "flags", "dst", "fields", "tstride", "vocab", "stride16")


@pytest.fixture(scope="module")
def default_compiled():
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.rtl.compiler import compile_model

    im, _ = open_int_model("default")
    return im, compile_model(im)


def test_program_mirrors_the_compiler(default_compiled):
    """The performance model replays the compiler's own emitter and planner without the model's data: the
    same instructions with the same timing operands (and the same offsets), the same image size."""
    from mmfree.rtl.compiler import emit_program, plan_image

    im, c = default_compiled
    prog = emit_program(im.dims)
    assert [i.op for i in prog] == [i.op for i in c.instrs]
    for a, b in zip(c.instrs, prog):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}, (a, b)
        if a.op not in ("SETC", "SETF"):        # only the model's constants differ
            assert dict(a.args) == dict(b.args), (a, b)
    assert plan_image(im.dims).size == len(c.image)
    assert plan_image(im.dims).symbols == c.symbols


def test_image_block_of_the_wrong_size_is_refused(default_compiled):
    """build_image checks every block against the plan: a truncated tensor (a corrupt export) is named."""
    from mmfree.rtl.compiler import build_image, plan_image

    im, c = default_compiled

    class Truncated:
        def __getattr__(self, name):
            return getattr(im, name)

        def tensor(self, name):
            t = im.tensor(name)
            return t[:-1] if name == "lm_head.w" else t

    with pytest.raises(MmfreeError, match="image block w_head.*re-export"):
        build_image(Truncated(), plan_image(im.dims))
    assert build_image(im, plan_image(im.dims)) == c.image


def test_compiled_program_gives_the_same_cycles(default_compiled):
    from mmfree.sim.accel import DEFAULT_HW

    im, c = default_compiled
    for k in (1, 4):
        a = P.pass_cycles(im.dims, DEFAULT_HW, k).cycles
        b = P.pass_cycles(im.dims, DEFAULT_HW, k, prog=c.instrs).cycles
        assert a == b


def test_dims_for():
    assert P.dims_for("1.3B") == Dims(32000, 2048, 5632, 24)
    assert P.dims_for("370M") == Dims(32000, 1024, 2816, 24)
    assert P.dims_for("2.7B") == Dims(32000, 2560, 6912, 32)
    assert P.dims_for("default") == Dims(4096, 240, 640, 4)
    with pytest.raises(MmfreeError, match="not one of"):
        P.dims_for("/nonexistent/model")


def test_dims_for_export_dir(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"dims": {"vocab": 97, "d": 64, "inter": 172, "layers": 1}}))
    assert P.dims_for(str(tmp_path)) == Dims(97, 64, 172, 1)


def test_predict_keys_and_phases():
    r = P.predict("1.3B", "kv260", clock_mhz=250)
    for key in ("tokens_per_s", "cycles_per_token", "bytes_per_token", "roofline_tokens_per_s", "fits", "phases",
                "ddr_bytes_per_s", "onchip_bits", "resources", "assumptions"):
        assert key in r
    assert r["label"] == "modeled"
    assert abs(sum(r["phases"].values()) - r["cycles_per_pass"]) < 1.0 + 1e-6 * r["cycles_per_pass"]
    assert r["fits"] and not r["problems"]
    assert r["tokens_per_s"] == pytest.approx(250e6 / r["cycles_per_token"])
    # every assumption printed with its source
    assert all(a["source"] for a in r["assumptions"].values())


def test_kv260_13b_against_its_rooflines():
    """One 128-bit weight port: >= 90 % of that port's roofline, far below the DDR roofline. The board's
    four-port build: DDR-bound, within 10 % of the ceiling the published DDR efficiency leaves (reported
    honestly: fraction_of_roofline)."""
    dims = P.dims_for("1.3B")
    one = P.predict(dims, "kv260", clock_mhz=250, hw=P.default_hw(dims, None, 1, weight_ports=1))
    assert one["bus_limited_by"] == "hp_port" and one["hw"]["weight_ports"] == 1
    assert one["tokens_per_s"] >= 0.9 * one["port_roofline_tokens_per_s"] * P.assumption("hp_port_efficiency")
    r = P.predict("1.3B", "kv260", clock_mhz=250)
    # the published controller efficiency (sim/ddr.py: 16 of 19.2 GB/s) leaves 4 GB/s to each of 4 ports; each
    # port's own cap (hp_port_efficiency between refreshes) binds first
    assert r["hw"]["weight_ports"] == 4 and r["bus_limited_by"] == "hp_port"
    assert r["ddr_model"]["aggregate_bytes_per_s"] == pytest.approx(16.0e9)
    assert r["tokens_per_s"] > 3 * one["tokens_per_s"]
    assert r["tokens_per_s"] >= 0.9 * r["bus_rate_beats_per_cycle"] * r["port_roofline_tokens_per_s"]
    assert r["ddr_bytes_per_s"] <= r["ddr_model"]["aggregate_bytes_per_s"]
    assert r["ideal_memory"]["tokens_per_s"] > r["tokens_per_s"]
    assert r["tokens_per_s"] <= r["roofline_tokens_per_s"] <= r["physical_limit_tokens_per_s"] * 1.01
    assert r["fraction_of_roofline"] == pytest.approx(r["tokens_per_s"] / r["roofline_tokens_per_s"])


def test_kv260_six_ports_bind_at_the_ddr_aggregate():
    """Six weight ports (HP0-HP3 + HPC0-HPC1): 6 x 4 GB/s of ports exceed the controller's 16 GB/s aggregate, so the
    aggregate binds (each port gets an equal sixth) where four ports were each bound by their own cap; the modeled
    DDR traffic stays within the aggregate, and the extra engines are counted in the resources."""
    dims = P.dims_for("1.3B")
    four = P.predict(dims, "kv260", clock_mhz=250)
    six = P.predict(dims, "kv260", clock_mhz=250, hw=P.default_hw(dims, None, 1, weight_ports=6))
    assert six["hw"]["weight_ports"] == 6 and six["bus_limited_by"] == "ddr"
    agg = six["ddr_model"]["aggregate_bytes_per_s"]
    assert six["bus_rate_beats_per_cycle"] == pytest.approx(agg / (6 * 16 * 250e6))
    assert six["ddr_bytes_per_s"] <= agg
    assert six["tokens_per_s"] >= four["tokens_per_s"]
    assert six["resources"]["lut"] > four["resources"]["lut"] and six["onchip_bits"] > four["onchip_bits"]


def test_kv260_six_ports_one_engine_k3_fits():
    """The k = 3 build of docs/performance.md's acceptance section, as `mmfree perf` takes it (the flags of `mmfree
    build --weight-ports 6 --engines 1 --max-tokens 3`): 6 engines in all, width 8192 for 1.3B, the DDR aggregate
    binds, above 110 tok/s; it fits the KV260 now that every vector buffer memory has one read port (a copy per
    reader, rtl/buffers.py), so URAM holds them: 70 BRAM36 and 54 URAM, where a read port per reader on one memory
    needed 286 BRAM36 of 144. Six ports x two engines do not fit (LUT): exit 3, the class named; their memories want
    66 URAM288 of 64, so two go to block RAM. All of it with the plain units (``--no-pipelined-units``) and with the
    board file's pipelined ones (the default), which the model prices with their own unit estimates."""
    for piped, lut_two in (("--no-pipelined-units", "LUT 141,964 of 117,120"),
                           ("--pipelined-units", "LUT 137,979 of 117,120")):
        out = _cli("perf", "--model", "1.3B", "--board", "kv260", "--weight-ports", "6", "--engines", "1", "--k", "3",
                   "--accept-len", "2.28", piped, "--json")
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert (r["hw"]["weight_ports"], r["hw"]["matvec_engines"], r["hw"]["max_tokens"], r["hw"]["max_width"]) == \
            (6, 1, 3, 8192)
        assert r["hw"]["pipelined_units"] is (piped == "--pipelined-units")
        assert r["fits"] is True and r["bus_limited_by"] == "ddr" and r["tokens_per_s"] > 110 and r["problems"] == []
        assert all(r["resources"]["fit"].values())
        assert (r["resources"]["bram36"], r["resources"]["uram"]) == (70, 54)
        out = _cli("perf", "--model", "1.3B", "--board", "kv260", "--weight-ports", "6", "--engines", "2", "--k", "3",
                   "--accept-len", "2.28", piped, "--json")
        assert out.returncode == 3, out.stderr
        two = json.loads(out.stdout)
        assert not two["fits"] and two["resources"]["lut"] > r["resources"]["lut"] > 0
        assert any(lut_two in p for p in two["problems"]), two["problems"]
        assert (two["resources"]["bram36"], two["resources"]["uram"]) == (78, 64)  # 66 wanted: a weight queue to BRAM
    default = json.loads(_cli("perf", "--model", "1.3B", "--board", "kv260", "--weight-ports", "6", "--engines", "1",
                              "--k", "3", "--accept-len", "2.28", "--json").stdout)
    assert default["hw"]["pipelined_units"] is True and default["resources"] == r["resources"]


@pytest.mark.parametrize("board,ports,match", [
    ("pynq-z2", 6, r"--weight-ports 6 is more than the 4 HP port\(s\) of the pynq-z2 .*choose at most 4"),
    ("kv260", 3, r"--weight-ports / build.weight_ports 3: .* 1, 2, 4, 6 AXI masters; choose one of those"),
])
def test_weight_ports_the_board_lacks_are_refused(board, ports, match):
    from mmfree.boardfile import load_board

    with pytest.raises(MmfreeError, match=match):
        P.default_hw(P.dims_for("370M"), load_board(board), 1, weight_ports=ports)


def test_bandwidth_bound_scaling():
    """Halving the clock roughly halves tokens/s when the port binds; k with full acceptance multiplies it."""
    dims = P.dims_for("370M")
    hw1 = P.default_hw(dims, None, 1, weight_ports=1)
    a = P.predict(dims, "kv260", clock_mhz=250, hw=hw1)
    b = P.predict(dims, "kv260", clock_mhz=125, hw=hw1)
    assert 0.45 < b["tokens_per_s"] / a["tokens_per_s"] < 0.55
    c = P.predict(dims, "kv260", clock_mhz=250, k=4, accept_len=4, hw=P.default_hw(dims, None, 4, weight_ports=1))
    assert c["tokens_per_s"] > 3 * a["tokens_per_s"]


def test_model_too_big_for_ddr():
    r = P.predict("1.3B", "pynq-z2")
    assert not r["fits"]
    assert any("MiB of DDR" in p and "pynq-z2" in p for p in r["problems"])


def test_bad_arguments():
    with pytest.raises(MmfreeError, match="accept-len"):
        P.predict("370M", "kv260", k=2, accept_len=3)
    with pytest.raises(MmfreeError, match="clock"):
        P.predict("370M", "kv260", clock_mhz=0)


def _board(tmp_path, **edits):
    d = json.loads((ROOT / "boards" / "kv260" / "board.json").read_text())
    for path, v in edits.items():
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        if v is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = v
    f = tmp_path / "b.json"
    f.write_text(json.dumps(d))
    return f"custom:{f}"


def test_bad_board_files(tmp_path):
    with pytest.raises(MmfreeError, match="'ddr.peak_gbps'"):
        P.predict("370M", _board(tmp_path, **{"ddr.peak_gbps": 30.0}))
    with pytest.raises(MmfreeError, match="'pl'"):
        P.predict("370M", _board(tmp_path, pl=None))
    with pytest.raises(MmfreeError, match="'hp_ports.width_bits'"):
        P.predict("370M", _board(tmp_path, **{"hp_ports.width_bits": 96}))


def test_resources_and_onchip():
    from mmfree.rtl.compiler import HwConfig

    hw = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096)
    mems = P.onchip_memories(hw)
    assert sum(m["bits"] for m in mems) > 4096 * 4 * 32 * 6
    assert P.bram36_for(4096 * 4, 32) == 16
    assert P.bram36_for(512, 72) == 1
    part = {"lut": 117120, "ff": 234240, "dsp": 1248, "bram36": 144, "uram": 64}
    r = P.estimate_resources(hw, "xcup", part)
    assert r["lut"] > 10000 and r["dsp"] > 0 and set(r["fit"]) == {"lut", "ff", "dsp", "bram36", "uram"}
    tiny = dict(part, bram36=10, uram=0)
    assert not P.estimate_resources(hw, "xcup", tiny)["fits"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mmfree", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_weight_ports_six_and_bad_counts():
    """`mmfree perf --weight-ports 6` on the KV260 (HP0-HP3 + HPC0-HPC1); 6 on the PYNQ-Z2 (HP0-HP3 only) is one
    clear error (exit 1) naming hp_ports.names and the fix; a count no build has is a usage error (exit 2)."""
    out = _cli("perf", "--model", "1.3B", "--board", "kv260", "--weight-ports", "6", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hw"]["weight_ports"] == 6
    out = _cli("perf", "--model", "370M", "--board", "pynq-z2", "--weight-ports", "6")
    assert out.returncode == 1 and "mmfree perf: error: --weight-ports 6 is more than the 4 HP port(s) of the pynq-z2" \
        in out.stderr and "choose at most 4" in out.stderr and "Traceback" not in out.stderr
    out = _cli("perf", "--model", "370M", "--board", "kv260", "--weight-ports", "5")
    assert out.returncode == 2 and "invalid choice: 5" in out.stderr


def test_cli_json_and_table(tmp_path):
    out = _cli("perf", "--model", "1.3B", "--board", "kv260", "--clock-mhz", "250", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["tokens_per_s"] > 0 and r["fits"] is True and "assumptions" in r
    # issue 23: the realistic-memory figure and the ideal-memory one side by side, the DDR model with its source
    assert r["ideal_memory"]["tokens_per_s"] > r["tokens_per_s"] and r["ddr_model"]["source"]
    assert r["ideal_memory"]["fraction_of_roofline"] > r["fraction_of_roofline"]
    out = _cli("perf", "--model", "370M", "--board", "zcu104", "--k", "4", "--accept-len", "2.5", "--engines", "1")
    assert out.returncode == 0, out.stderr
    assert "tokens/s" in out.stdout and "weight_stream" in out.stdout
    out = _cli("perf", "--model", "2.7B", "--board", "pynq-z2")
    assert out.returncode == 3 and "DOES NOT FIT" in out.stdout
    out = _cli("perf", "--model", "370M", "--board", _board(tmp_path, **{"ddr.rate_mts": 3200}))
    assert out.returncode == 1 and "ddr.peak_gbps" in out.stderr


def test_recorded_rtl_cycles_within_5_percent():
    """The model against the RTL cycles recorded by bench/perf_validate.py --record (no simulation here)."""
    rec = json.loads((ROOT / "boards" / "data" / "perf_validation.json").read_text())
    from mmfree.rtl.compiler import HwConfig
    from mmfree.sim.accel import DEFAULT_HW, LANES2_HW, LANES4_HW, PORTS4_HW, PORTS6_HW

    n = {"default": 0, "ports4": 0, "ports6": 0, "pynqz2": 0, "pipelined": 0, "lanes2": 0, "lanes4": 0}
    pynqz2 = HwConfig(bus_bytes=8, max_tokens=2, max_width=1024, weight_ports=2, matvec_engines=1)
    piped = HwConfig(**{**DEFAULT_HW.__dict__, "pipelined_units": True})    # the pipelined vector units
    builds = [("default", DEFAULT_HW, rec["runs"]), ("ports4", PORTS4_HW, rec.get("runs_by_hw", {}).get("ports4", {})),
              ("ports6", PORTS6_HW, rec.get("runs_by_hw", {}).get("ports6", {})),
              ("pynqz2", pynqz2, rec.get("runs_by_hw", {}).get("pynqz2", {})),
              ("pipelined", piped, rec.get("runs_by_hw", {}).get("pipelined", {})),
              ("lanes2", LANES2_HW, rec.get("runs_by_hw", {}).get("lanes2", {})),
              ("lanes4", LANES4_HW, rec.get("runs_by_hw", {}).get("lanes4", {}))]
    for hw_name, hw, runs_of in builds:
        for name, runs in runs_of.items():
            c = rec["configs"][name]
            dims = Dims(c["vocab"], c["d"], c["inter"], c["layers"])
            for key, v in runs.items():
                base, _, lat = key.partition("@L")           # runs at another read latency end "@L<cycles>"
                k, wl = int(base.split("-")[0]), not base.endswith("-nologits")
                lat = int(lat) if lat else rec["rd_latency"]
                m = P.pass_cycles(dims, hw, k, rate=1.0, rd_latency=lat, write_logits=wl)
                tol = 0.12 if (hw_name, name, key) in KNOWN_GAPS else 0.05
                assert abs(m.cycles - v["cycles"]) <= tol * v["cycles"], (hw_name, name, key, m.cycles, v["cycles"])
                n[hw_name] += 1
    assert (n["default"] >= 16 and n["ports4"] >= 16 and n["pipelined"] >= 12 and n["lanes2"] >= 12
            and n["lanes4"] >= 12), n


def _bench_validate():
    """bench/perf_validate.py as a module (its ``model_cycles`` / ``parse_key`` are what the bench compares)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import perf_validate
    finally:
        sys.path.pop(0)
    return perf_validate


def test_recorded_six_ports_one_engine_runs_within_5_percent():
    """The six-port x one-engine build (bench/perf_validate.py --hw ports6e1 --record: sim.accel.PORTS6E1_HW, the k = 3
    KV260 build of docs/performance.md's acceptance section) against its recorded ideal-memory RTL runs, k = 1 and
    k = 3, within 5 %."""
    rec = json.loads((ROOT / "boards" / "data" / "perf_validation.json").read_text())
    V = _bench_validate()
    seen = set()
    for name, runs in rec.get("runs_by_hw", {}).get("ports6e1", {}).items():
        for key, v in runs.items():
            k, wl, lat = V.parse_key(key)
            m = V.model_cycles(name, k, wl, "ports6e1", lat)
            assert abs(m - v["cycles"]) <= 0.05 * v["cycles"], (name, key, m, v["cycles"])
            seen.add((name, k))
    assert {(c, k) for c in ("d96", "d512") for k in (1, 3)} <= seen, seen


def test_recorded_realistic_memory_runs_within_5_percent():
    """The model against the RTL runs on the simulated DDR's realistic option (bench/perf_validate.py --memory
    realistic --record): the model at the realistic memory's average bus rate and mean latency, within 5 %
    (12 % for the REALISTIC_KNOWN_GAPS)."""
    rec = json.loads((ROOT / "boards" / "data" / "perf_validation.json").read_text())
    V = _bench_validate()
    n = 0
    for hw_name, runs_of in rec.get("realistic_runs", {}).items():
        for name, runs in runs_of.items():
            for key, v in runs.items():
                k, wl, lat = V.parse_key(key)
                m = V.model_cycles(name, k, wl, hw_name, lat, "realistic")
                tol = 0.12 if (hw_name, name, key) in REALISTIC_KNOWN_GAPS else 0.05
                assert abs(m - v["cycles"]) <= tol * v["cycles"], (hw_name, name, key, m, v["cycles"])
                n += 1
    assert n >= 8, n


def _recorded_runs(section: str):
    """(build, config, run key, counters) of every run recorded under ``section`` of perf_validation.json."""
    rec = json.loads((ROOT / "boards" / "data" / "perf_validation.json").read_text())
    for hw_name, runs_of in rec.get(section, {}).items():
        for name, runs in runs_of.items():
            for key, v in runs.items():
                yield hw_name, name, key, v


def test_recorded_random_backpressure_runs_within_5_percent():
    """The model against the RTL runs on the simulated DDR's random back-pressure (bench/perf_validate.py --memory
    random --rate 0.5,0.75 --record, and 0.25): ``pass_cycles(..., rate=r)`` within 5 % of CYCLES (12 % for the
    RANDOM_KNOWN_GAPS), on the default and the PYNQ-Z2 builds, each at rates 0.5 and 0.75."""
    V = _bench_validate()
    seen = set()
    for hw_name, name, key, v in _recorded_runs("random_runs"):
        k, wl, lat = V.parse_key(key)
        rate = V.parse_rate(key)
        m = V.model_cycles(name, k, wl, hw_name, lat, "random", rate)
        tol = 0.12 if (hw_name, name, key) in RANDOM_KNOWN_GAPS else 0.05
        assert abs(m - v["cycles"]) <= tol * v["cycles"], (hw_name, name, key, m, v["cycles"])
        seen.add((hw_name, rate))
    assert {(h, r) for h in ("default", "pynqz2") for r in (0.5, 0.75)} <= seen, seen


def test_recorded_forest_runs_within_5_percent():
    """Multi-stream passes (bench/perf_validate.py --configs d64,d96,d200 --streams 2,4 --record: one forest of B
    streams x k tokens from nonzero start states on the RTL, bit-exact against IntModel) against
    ``pass_cycles(..., B x k, prog=forest_program(dims, B))`` (what ``predict_streams`` prices), within 5 %."""
    V = _bench_validate()
    seen = set()
    for hw_name, name, key, v in _recorded_runs("stream_runs"):
        B, k, wl = V.parse_stream_key(key)
        m = V.model_forest_cycles(name, B, k, wl, hw_name)
        assert v["bit_exact"] is True, (hw_name, name, key)
        assert abs(m - v["cycles"]) <= 0.05 * v["cycles"], (hw_name, name, key, m, v["cycles"])
        seen.add((name, B, wl))
    assert {(c, B, wl) for c in ("d64", "d96", "d200") for B in (2, 4) for wl in (True, False)} <= seen, seen


def test_forest_program_is_timed_as_the_compiled_one():
    """The model prices ``forest_program(dims, B)``; the RTL runs the program ``compile_model(..., streams=B)``
    assembles: the same cycles, and more than the single-stream program of B tokens (the LOAD HROOTs)."""
    from mmfree.pymodel.intmodel import IntModel
    from mmfree.rtl import isa as I
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import DEFAULT_HW
    from mmfree.sim.perf_streams import forest_program

    V = _bench_validate()
    im = IntModel.load(V.export_config("d96"))
    for B in (2, 4):
        ran = I.disassemble(compile_model(im, streams=B).program)[1]
        model = P.pass_cycles(im.dims, DEFAULT_HW, B, prog=forest_program(im.dims, B)).cycles
        assert P.pass_cycles(im.dims, DEFAULT_HW, B, prog=ran).cycles == model
        assert model > P.pass_cycles(im.dims, DEFAULT_HW, B).cycles


@pytest.mark.parametrize("streams", ["0", "17", "x", "2,", "4 --k 2", "2 --memory random", "2 --latency 48",
                                     "2 --same-as-recorded"])
def test_bench_refuses_bad_streams(streams):
    """bench/perf_validate.py --streams outside 1..16, B x k over the build's max_tokens, or with another memory,
    latency or --same-as-recorded: one line naming --streams, exit 2, nothing simulated."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "perf_validate.py"), "--configs", "d64", "--streams",
                          *streams.split()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--streams" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("rate", ["0", "1.5", "x", ""])
def test_bench_refuses_a_bad_bus_rate(rate):
    """bench/perf_validate.py --rate outside (0, 1]: one line naming --rate, exit 2, nothing simulated."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "perf_validate.py"), "--memory", "random", "--rate", rate,
                          "--configs", "d64"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--rate must be" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bench_refuses_to_record_another_seed():
    """Only seed 1 of the random back-pressure memory is recorded (run keys carry no seed): --seed 2 --record exits 2
    with one line, before anything is simulated."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "perf_validate.py"), "--memory", "random", "--seed", "2",
                          "--record", "--configs", "d64"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "only seed 1 is recorded" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.sim
def test_model_against_rtl_random_backpressure():
    """The smallest case on the RTL (d64, k = 1, default build) with the simulated DDR's random back-pressure at
    rate 0.5: slower than the ideal memory, and the model at bus rate 0.5 within 5 % of CYCLES."""
    V = _bench_validate()
    rnd = V.rtl_cycles("d64", (1,), "default", logits=(True,), memory="random", rate=0.5)
    ideal = V.rtl_cycles("d64", (1,), "default", logits=(True,))
    key = V.run_key(1, True, rate=0.5)
    assert set(rnd) == {key} and V.parse_rate(key) == 0.5 and V.parse_key(key) == (1, True, PARAMS.SIM_RD_LATENCY)
    assert rnd[key]["rd_bytes"] == ideal["1"]["rd_bytes"] and rnd[key]["cycles"] > ideal["1"]["cycles"]
    m = V.model_cycles("d64", 1, True, "default", memory="random", rate=0.5)
    assert abs(m - rnd[key]["cycles"]) <= 0.05 * rnd[key]["cycles"], (m, rnd[key]["cycles"])


@pytest.mark.sim
def test_model_against_rtl_forest_pass():
    """One multi-stream pass on the RTL (d64, B = 2 streams x k = 1 from nonzero start states, default build):
    bit-exact against IntModel (rtl_forest_cycles raises otherwise), the same counters as recorded, and the model's
    forest_program pass within 5 % of CYCLES."""
    V = _bench_validate()
    meas = V.rtl_forest_cycles("d64", 2, (1,), "default", logits=(True,))
    assert set(meas) == {"2x1"} and V.parse_stream_key("2x1") == (2, 1, True) and meas["2x1"]["bit_exact"]
    rec = json.loads((ROOT / "boards" / "data" / "perf_validation.json").read_text())
    assert meas["2x1"] == rec["stream_runs"]["default"]["d64"]["2x1"]
    m = V.model_forest_cycles("d64", 2, 1, True)
    assert abs(m - meas["2x1"]["cycles"]) <= 0.05 * meas["2x1"]["cycles"], (m, meas["2x1"]["cycles"])


@pytest.mark.sim
def test_model_against_rtl():
    """Runs the accelerator RTL (Verilator) on 4 shapes (and 2 on the four-weight-port build), k = 1 and 4: the
    model within 5 % of CYCLES (12 % for the recorded KNOWN_GAPS)."""
    V = _bench_validate()
    for hw_name, names in (("default", ("d64", "d96", "d200", "d512")), ("ports4", ("d96", "d512"))):
        for name in names:
            meas = V.rtl_cycles(name, (1, 4), hw_name)
            for k in (1, 4):
                for wl in (True, False):
                    key = V.run_key(k, wl)
                    rtl = meas[key]["cycles"]
                    m = V.model_cycles(name, k, wl, hw_name)
                    tol = 0.12 if (hw_name, name, key) in KNOWN_GAPS else 0.05
                    assert abs(m - rtl) <= tol * rtl, (hw_name, name, k, wl, m, rtl)


def test_stream_rate_outstanding_read_limit():
    """A port keeps the bus rate while its read window covers the latency; the window follows the latency (the
    base 64 beats at the simulated DDR's 24 cycles, latency + margin beyond, at most the FIFO / 16 bursts); beyond
    that, window / round trip. Issue 27: full rate to >= 300 ns (75 cycles at 250 MHz), >= 0.9 at 500 ns."""
    turn = P.RTL_TIMING["rd_turn"]
    cap = min(PARAMS.WEIGHT_CLIENT_FIFO, PARAMS.MAX_OUTSTANDING * PARAMS.MAX_BURST)
    assert P.READ_WINDOW_BEATS == PARAMS.WEIGHT_WINDOW_BASE == P.read_window(PARAMS.SIM_RD_LATENCY)
    assert [P.read_window(L) for L in (24, 48, 75, 96, 192, 300, 1000)] == [64, 80, 112, 128, 224, cap, cap]
    assert P.stream_rate(1.0, 24) == 1.0 and P.stream_rate(0.5, 24) == 0.5
    assert all(P.stream_rate(1.0, L) == 1.0 for L in range(0, cap - turn + 1))
    assert P.stream_rate(1.0, 75) == 1.0 and P.stream_rate(1.0, 125) >= 0.9
    assert P.stream_rate(1.0, 300) == pytest.approx(cap / (300 + turn))
    assert P.stream_rate(1.0, 1000) == pytest.approx(cap / (1000 + turn))
    # short bursts (a strided row read of 3 beats per row): 16 outstanding bursts of 3 beats
    assert P.read_window(300, P.row_burst(3)) == 16 * 3
    assert P.row_burst(26) == 13 and P.row_burst(16) == 16
    rates = [P.stream_rate(1.0, L) for L in (24, 96, 300, 600, 1200)]
    assert rates == sorted(rates, reverse=True)
    for bad in ((0.0, 24), (1.0, -1), (1.0, float("nan"))):
        with pytest.raises(MmfreeError):
            P.stream_rate(*bad)


def test_predict_latency_ns():
    """Read latency is an input: tokens/s never rises with it and falls once the window no longer covers it."""
    dims = P.dims_for("1.3B")
    hw1 = P.default_hw(dims, None, 1, weight_ports=1)
    tps = [P.predict(dims, "kv260", 250, hw=hw1, latency_ns=ns)["tokens_per_s"] for ns in (96, 300, 500, 4000)]
    assert tps == sorted(tps, reverse=True)
    assert tps[3] < 0.5 * tps[0]
    r = P.predict(dims, "kv260", 250, hw=hw1, latency_ns=300)
    assert r["rd_latency_ns"] == 300 and r["rd_latency_cycles"] == pytest.approx(75)
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(MmfreeError, match="--latency-ns"):
            P.predict(dims, "kv260", 250, hw=hw1, latency_ns=bad)


def test_cli_latency_ns():
    out = subprocess.run([sys.executable, "-m", "mmfree", "perf", "--model", "370M", "--latency-ns", "600", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 3), out.stderr
    assert json.loads(out.stdout)["rd_latency_ns"] == 600
    bad = subprocess.run([sys.executable, "-m", "mmfree", "perf", "--latency-ns", "-5"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "mmfree perf: error: --latency-ns" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("fifo,latency,adaptive", [(64, 125, False), (PARAMS.WEIGHT_CLIENT_FIFO, 125, True),
                                                     (PARAMS.WEIGHT_CLIENT_FIFO, 300, True)])
def test_stream_rate_matches_the_axi_reader(fifo, latency, adaptive):
    """The outstanding-read limit of the model against the AXI reader's RTL (Amaranth simulator), cycle counts:
    a fixed 64-beat window and the weight clients' latency-following window (rtl/params.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rtl_axi_latency as B
    finally:
        sys.path.pop(0)
    got = B.measure(fifo, latency, 1024, PARAMS.MAX_OUTSTANDING, adaptive=adaptive)["steady_beats_per_cycle"]
    window = None if adaptive else min(fifo, PARAMS.MAX_OUTSTANDING * 16)
    assert got == pytest.approx(P.stream_rate(1.0, latency, window=window), abs=0.01)
    if adaptive and latency == 125:
        assert got >= 0.9                      # issue 27: >= 0.9 of the port's rate at 500 ns


def test_draft_engine_is_counted_and_overflow_named():
    """A draft engine adds its bigram memory (URAM on UltraScale+ by the build's rule, block RAM on 7-series) and the
    loop's logic; a build that does not fit names each class and by how much."""
    from mmfree.boardfile import load_board
    from mmfree.rtl.compiler import HwConfig

    kv = load_board("kv260")
    plain = P.estimate_resources(HwConfig(bus_bytes=16, max_tokens=2, weight_ports=4), "xcup", kv.pl)
    draft = P.estimate_resources(HwConfig(bus_bytes=16, max_tokens=2, weight_ports=4, draft_vocab=32000), "xcup", kv.pl)
    assert draft["uram"] - plain["uram"] == 16 and draft["bram36"] == plain["bram36"]
    assert draft["lut"] > plain["lut"] and draft["fits"]
    out = _cli("perf", "--model", "370M", "--board", "kv260", "--k", "4", "--draft-vocab", "32000", "--json")
    assert out.returncode == 3, out.stderr
    assert "LUT 1" in out.stdout and "(over by " in out.stdout
    out = _cli("perf", "--model", "370M", "--board", "kv260", "--draft-vocab", "70000")
    assert out.returncode == 1 and "--draft-vocab must be in 1..65535" in out.stderr


def test_latency_window_is_the_old_window_at_short_latency():
    """At the simulated DDR's 24 cycles the latency-following window stays at its 64-beat base: the reader with a
    256-beat FIFO delivers every beat on the same cycle as the 64-beat design (why recorded cycle counts hold)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rtl_axi_latency as B
    finally:
        sys.path.pop(0)
    old = B.measure(64, PARAMS.SIM_RD_LATENCY, 512, PARAMS.MAX_OUTSTANDING)
    new = B.measure(PARAMS.WEIGHT_CLIENT_FIFO, PARAMS.SIM_RD_LATENCY, 512, PARAMS.MAX_OUTSTANDING, adaptive=True)
    assert new["cycles"] == old["cycles"]
    fixed = B.measure(PARAMS.WEIGHT_CLIENT_FIFO, 96, 512, PARAMS.MAX_OUTSTANDING)
    grown = B.measure(PARAMS.WEIGHT_CLIENT_FIFO, 96, 512, PARAMS.MAX_OUTSTANDING, adaptive=True)
    assert grown["steady_beats_per_cycle"] == fixed["steady_beats_per_cycle"] == 1.0


@pytest.mark.parametrize("windows", [{1: (64, 32)}, {0: (8, 32)}, {0: (512, 32)}, {0: (64, -1)}])
def test_bad_latency_windows_are_refused(windows):
    """AxiReader(latency_windows=...): a client that does not exist, a base below a burst or above the FIFO, a
    negative margin: one ValueError naming the field (before anything is elaborated)."""
    from mmfree.rtl.axi import AxiReader

    with pytest.raises(ValueError, match="latency_windows"):
        AxiReader(fifo_depths=(256,), latency_windows=windows)


def test_bus_spread_store_beats_take_free_time_where_they_fall():
    """A STORE's W beats (``_Bus.spread``) occupy the bus in pieces over the STORE, as the packer makes them:
    they leave ``end`` (the order of the priority transfers) alone, a priority transfer that meets them goes
    around them, and the weight stream's free time excludes them."""
    bus = P._Bus(0.5)
    bus.reserve(0, 10)                          # [0, 20)
    bus.spread(100, 500, 40, 4)                 # 4 pieces of 10 beats = 20 cycles each, ending at 200, 300, 400, 500
    assert bus.end == 20 and bus.beats == 50
    assert bus.busy == [[0, 20], [180, 200], [280, 300], [380, 400], [480, 500]]
    assert bus.free(0, 500) == 500 - 100
    s, e = bus.reserve(170, 50)                 # 100 cycles of free time from 170: around 180..200 and 280..300
    assert (s, e) == (170, 310)
    assert bus.end == 310 and bus.busy == [[0, 20], [170, 310], [380, 400], [480, 500]]
    assert bus.advance(0, 100) == 120
    assert bus.reserve(600, 0) == (600, 600) and bus.busy[-1] == [480, 500]     # nothing to move: nothing taken
    spread_once = P._Bus(1.0)
    spread_once.spread(0, 10, 100, 8)           # slower than the window: one piece after another
    assert spread_once.busy == [[0, 100]]


def test_main_port_rate_where_the_aggregate_binds():
    """Where one controller's aggregate binds, the main port's own transfers move at its cap (it is served first), the
    weight stream at the ports' equal share: a pass with logits written is cheaper than at the share alone, one
    where the ports bind is unchanged, and a rate that is not positive is refused."""
    assert P.main_port_rate(0.9, 1.06) == 0.9 and P.main_port_rate(0.9, 0.5) == 0.5
    dims, hw = Dims(4096, 240, 640, 4), P.HwConfig(bus_bytes=8, max_tokens=2, max_width=1024, weight_ports=2,
                                                    matvec_engines=1)
    share = P.pass_cycles(dims, hw, 1, rate=0.51, rd_latency=30).cycles
    served_first = P.pass_cycles(dims, hw, 1, rate=0.51, rd_latency=30, main_rate=0.865).cycles
    assert served_first < 0.95 * share
    assert P.pass_cycles(dims, hw, 1, rate=0.51, rd_latency=30, main_rate=0.51).cycles == share
    with pytest.raises(MmfreeError, match="main port"):
        P.pass_cycles(dims, hw, 1, rate=0.51, main_rate=0)


def test_pipelined_units_lengthen_the_unit_paths():
    """A build with the pipelined vector units: every RTL_TIMING entry on a unit path grows by the cycles its units'
    variants add (simulated from the units), nothing else moves, and a pass takes longer; the default build's
    timing is RTL_TIMING itself."""
    import dataclasses

    from mmfree.rtl.catalog import pipelined_extra_cycles
    from mmfree.sim.accel import DEFAULT_HW

    assert P.rtl_timing(DEFAULT_HW) == P.RTL_TIMING
    piped = dataclasses.replace(DEFAULT_HW, pipelined_units=True)
    t = P.rtl_timing(piped)
    for key, v in P.RTL_TIMING.items():
        extra = sum(pipelined_extra_cycles(u) for u in P.PIPELINED_PATHS.get(key, ()))
        assert t[key] == v + extra and (extra > 0) == (key in P.PIPELINED_PATHS), key
    dims = Dims(256, 96, 256, 2)
    assert P.pass_cycles(dims, piped, 1).cycles > P.pass_cycles(dims, DEFAULT_HW, 1).cycles
    with pytest.raises(KeyError, match="no pipelined variant"):
        pipelined_extra_cycles("max_abs")


@pytest.mark.parametrize("family", ["xcup", "xc7"])
def test_pipelined_units_count_their_registers(family):
    """The resource estimate of a build with the pipelined vector units counts each unit that has a variant
    (rtl/catalog.py PIPELINED) as its recorded ``NAME_p`` estimate (boards/data/unit_resources.json,
    `python bench/perf_table.py --units --only pipelined`): more FF than the plain build, no note of a missing
    estimate; the memories do not change."""
    import dataclasses

    from mmfree.rtl.catalog import PIPELINED
    from mmfree.rtl.compiler import HwConfig

    units = P._unit_table()["units"]
    counted = ("reciprocal", "codes", "output_multiplier", "dequantize", "mlgru_update", "gated_product",
               "quant_stats")
    for name in counted:
        assert f"{name}_p" in PIPELINED and family in units[f"{name}_p"], name
        assert units[f"{name}_p"][family]["FF"] > units[name][family]["FF"], name
    plain_hw = HwConfig(bus_bytes=16, max_tokens=2, max_width=8192, weight_ports=4)
    plain = P.estimate_resources(plain_hw, family)
    piped = P.estimate_resources(dataclasses.replace(plain_hw, pipelined_units=True), family)
    assert piped["ff"] > plain["ff"] and piped["lut"] >= 0.95 * plain["lut"]
    assert not any("_p not recorded" in n for n in piped["notes"]), piped["notes"]
    assert (piped["bram36_if_all_bram"], piped["onchip_bits"]) == (plain["bram36_if_all_bram"], plain["onchip_bits"])


def test_pipelined_estimate_missing_falls_back_with_a_note(monkeypatch):
    """A unit file without a ``NAME_p`` entry (one written before they were recorded) prices the plain unit and says
    so in ``notes``, naming the command that records it."""
    import copy
    import dataclasses

    from mmfree.rtl.compiler import HwConfig

    tab = copy.deepcopy(P._unit_table())
    del tab["units"]["dequantize_p"]
    monkeypatch.setattr(P, "_unit_table", lambda: tab)
    hw = HwConfig(bus_bytes=16, max_tokens=2, weight_ports=4)
    piped = P.estimate_resources(dataclasses.replace(hw, pipelined_units=True), "xcup")
    assert any(n.startswith("dequantize_p not recorded for xcup: the plain dequantize stands in") and
               "--units --only pipelined" in n for n in piped["notes"]), piped["notes"]
    assert piped["ff"] > P.estimate_resources(hw, "xcup")["ff"]          # the other _p units still count


def test_perf_table_only_bad_input():
    """`bench/perf_table.py --units --only NAME`: an unknown name is one error listing the names (exit 2, nothing
    run or written); --only without --units is a usage error."""
    before = (ROOT / "boards" / "data" / "unit_resources.json").read_bytes()
    for args, msg in ((["--units", "--only", "pipelined,nope"], "--only: unknown command name(s) nope; names: "),
                      (["--units", "--only", ","], "--only: unknown command name(s) (none given)"),
                      (["--only", "pipelined"], "--only needs --units")):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "perf_table.py"), *args], capture_output=True,
                             text=True)
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert (ROOT / "boards" / "data" / "unit_resources.json").read_bytes() == before


def test_cli_pipelined_units(tmp_path):
    out = _cli("perf", "--model", "370M", "--board", "kv260", "--pipelined-units", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["hw"]["pipelined_units"] is True and r["rtl_timing"]["mv_glu"] > P.RTL_TIMING["mv_glu"]
    out = _cli("perf", "--model", "370M", "--board", _board(tmp_path, **{"build.pipelined_units": "yes"}))
    assert out.returncode == 1 and "build.pipelined_units" in out.stderr
def test_vector_lanes_shorten_the_vector_phase_and_count_their_units(tmp_path):
    """V vector lanes: QSTATS / QCODES take ceil(count / V) cycles in the model (HGRN stays per element), so the
    vector phase of a 1.3B pass shrinks (not V-fold: HGRN and the tails stay); V copies of QuantStats and Codes
    raise the LUT / DSP estimate; a banked buffer is one memory of W / V rows of V words (same bits). A bad
    V, from the option or from the board file, is one clear error naming it."""
    import dataclasses

    from mmfree.rtl.compiler import HwConfig

    dims = P.dims_for("1.3B")
    hw1 = P.default_hw(dims, None, 1)
    base = P.pass_cycles(dims, hw1, 1)
    vec = {1: base.phases["vector"]}
    for V in (2, 4):
        hw = P.default_hw(dims, None, 1, vector_lanes=V)
        assert hw == dataclasses.replace(hw1, vector_lanes=V)
        r = P.pass_cycles(dims, hw, 1)
        vec[V] = r.phases["vector"]
        assert r.cycles < base.cycles
    assert vec[4] < vec[2] < 0.6 * vec[1] and vec[4] > vec[1] / 8
    one, four = (P.estimate_resources(HwConfig(max_tokens=2, vector_lanes=v), "xcup") for v in (1, 4))
    assert four["dsp"] > one["dsp"] and four["lut"] > one["lut"] and four["onchip_bits"] == one["onchip_bits"]
    names = {m["name"]: m for m in P.onchip_memories(HwConfig(max_tokens=2, max_width=1024, vector_lanes=4))}
    assert (names["X_t0_vector"]["depth"], names["X_t0_vector"]["width"]) == (256, 128)
    with pytest.raises(MmfreeError, match="vector lanes .* must be one of 1, 2, 4, 8, got 3"):
        P.default_hw(dims, None, 1, vector_lanes=3)
    with pytest.raises(MmfreeError, match="'build.vector_lanes' must be 1, 2, 4 or 8"):
        P.predict("370M", _board(tmp_path, **{"build.vector_lanes": 16}))
    bad = subprocess.run([sys.executable, "-m", "mmfree", "perf", "--model", "370M", "--vector-lanes", "5"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "mmfree perf: error: vector lanes" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "mmfree", "perf", "--model", "370M", "--vector-lanes", "2", "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["hw"]["vector_lanes"] == 2


@pytest.mark.parametrize("board, kw", [("kv260", {"max_width": 1024, "max_tokens": 2, "weight_ports": 4,
                                                  "draft_engine": False}),
                                       ("pynq-z2", {})])
def test_modeled_memories_place_like_the_elaborated_design(board, kw):
    """The perf model's BRAM36 / URAM (onchip_memories placed by rtl/memstyle) equal `mmfree build`'s count of the
    memories the RTL elaborates (read ports per buffer, ROMs): one number for "fits" whichever command asks."""
    from mmfree.boardfile import load_board
    from mmfree.boards.build import accel_memories, config_for
    from mmfree.rtl.memstyle import place

    cfg = config_for(board, **kw)
    elaborated = place(accel_memories(cfg), cfg.family, cfg.uram_capacity)
    est = P.estimate_resources(cfg.hw, cfg.family, load_board(board).pl)
    assert (est["bram36"], est["uram"]) == (elaborated["bram36"], elaborated["uram"])


def test_load_fills_one_record_per_cycle():
    """A LOAD's unpacker hands on one record per cycle (rtl/axi.py WordUnpacker): a LOAD of n one-field records
    takes n cycles, not the n / 4 beats it reads on the 128-bit bus, so a QSTATS at V = 4 that follows its fill, and
    a second LOAD waiting for the one load slot (holding the in-order sequencer), come that much later (issue 23:
    the lanes4 d64 k = 1 pass). A four-field LOAD reads a beat per record: bus speed, as before."""
    from mmfree.rtl import isa as I
    from mmfree.rtl.compiler import HwConfig

    hw, n = HwConfig(max_tokens=2, max_width=1024), 512
    one = [I.Instr("LOAD", {"dst": I.LD_LB, "fields": 1, "base": 1, "count": n}), I.Instr("HALT")]
    two = one[:1] + [I.Instr("LOAD", {"dst": I.LD_H0, "fields": 1, "base": 1, "count": n}), I.Instr("HALT")]
    four = [I.Instr("LOAD", {"dst": I.LD_NORM, "fields": 4, "base": 1, "count": n}), I.Instr("HALT")]
    dims = Dims(97, 64, 172, 1)
    c1, c2, c4 = (P.pass_cycles(dims, hw, 1, prog=p).cycles for p in (one, two, four))
    assert c1 > n and c2 > c1 + n, (c1, c2)        # the second LOAD starts after the first's n records
    assert abs(c4 - c1) < 0.1 * n, (c1, c4)        # n beats of four fields: the same n cycles


def test_modeled_memories_within_the_urams_place_like_the_elaborated_design():
    """The k = 3 six-port one-way build with the on-chip draft engine (width 8192, 32,000-row bigram) wants 70
    URAM288 of the KV260's 64: the build marks only what fits (rtl/memstyle.uram_plan over the elaborated memories)
    and the model, placing its own memory list by the same plan, gets the same BRAM36 / URAM; the build fits."""
    from amaranth.hdl import Fragment

    from mmfree.rtl.compiler import HwConfig
    from mmfree.rtl.memstyle import StylePlatform, place
    from mmfree.rtl.top import MmfreeAccel

    hw = HwConfig(max_tokens=3, max_width=8192, weight_ports=6, matvec_engines=1, draft_vocab=32000)
    survey = StylePlatform("xcup")
    Fragment.get(MmfreeAccel(hw, addr_width=40), survey)
    assert place(survey.memories, "xcup")["uram"] == 70
    elaborated = place(survey.memories, "xcup", 64)
    part = {"lut": 117120, "ff": 234240, "dsp": 1248, "bram36": 144, "uram": 64}
    est = P.estimate_resources(hw, "xcup", part)
    assert (est["bram36"], est["uram"]) == (elaborated["bram36"], elaborated["uram"]) == (94, 64)
    assert est["fits"]
