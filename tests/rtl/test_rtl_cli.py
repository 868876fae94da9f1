"""`mmfree rtl verilog` and `mmfree rtl estimate`, and the Yosys stat parser."""

import json
import shutil

import pytest

from mmfree.cli import main
from mmfree.rtl.estimate import parse_stat

STAT = """
=== silu ===
   Number of cells:               2164
     CARRY4                         89
     DSP48E1                         8
     FDRE                          394
     FDSE                           10
     LUT2                          309
     LUT6                          570
     MUXF7                         155
     RAM64M                          4
     RAMB18E1                        1
     RAMB36E1                        2
"""


def test_parse_stat():
    r = parse_stat(STAT)
    assert (r["LUT"], r["FF"], r["DSP"], r["RAMB36"], r["RAMB18"], r["BRAM"], r["LUTRAM"]) == (879, 404, 8, 2, 1, 2.5, 4)


def test_verilog_command_writes_every_unit(tmp_path, capsys):
    from mmfree.rtl.catalog import VECTOR_UNITS

    assert main(["rtl", "verilog", "--out", str(tmp_path), "--lanes", "5", "--tokens", "2", "--json"]) == 0
    listing = json.loads((tmp_path / "units.json").read_text())
    assert set(listing) == {"matvec_l5_k2", *VECTOR_UNITS}
    text = (tmp_path / "matvec_l5_k2.v").read_text()
    assert "module matvec_l5_k2" in text and "weights__payload" in text and "out__ready" in text
    assert json.loads(capsys.readouterr().out) == listing


@pytest.mark.parametrize("args,word", [(["--lanes", "30"], "lanes"), (["--tokens", "0"], "tokens"),
                                       (["--max-k", "0"], "max_k")])
def test_bad_parameters_are_user_errors(tmp_path, capsys, args, word):
    assert main(["rtl", "verilog", "--out", str(tmp_path), *args]) == 1
    err = capsys.readouterr().err
    assert word in err and "must be" in err


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs Yosys with synth_xilinx: `apt-get install yosys`")
def test_estimate_small_unit(capsys):
    assert main(["rtl", "estimate", "--units", "residual_add", "--family", "xc7", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    counts = res["units"]["residual_add"]["xc7"]
    assert counts["LUT"] > 0 and counts["FF"] > 0 and counts["DSP"] == 0


def test_estimate_without_yosys_says_how(monkeypatch, capsys):
    import mmfree.rtl.estimate as E

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("MMFREE_YOSYS", raising=False)
    monkeypatch.setattr(E, "_beside_python", lambda exe: None)
    assert main(["rtl", "estimate", "--units", "residual_add"]) == 1
    assert "apt-get install yosys" in capsys.readouterr().err


def _two_field_unit():
    from amaranth import Module, unsigned
    from amaranth.lib import data, stream, wiring
    from amaranth.lib.wiring import In, Out

    class TwoFields(wiring.Component):
        """Registers ``keep = i`` and ``drop = i + 1`` (the second field is what the test leaves unread)."""

        def __init__(self):
            super().__init__({"i": In(stream.Signature(unsigned(8))),
                              "o": Out(stream.Signature(data.StructLayout({"keep": 8, "drop": 10})))})

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [self.o.payload.keep.eq(self.i.payload), self.o.payload.drop.eq(self.i.payload + 1)]
            m.d.sync += self.o.valid.eq(self.i.valid)
            return m

    return TwoFields()


def test_as_used_leaves_unread_fields_unconnected(tmp_path):
    from mmfree.rtl.catalog import all_units, unread_outputs
    from mmfree.rtl.estimate import as_used, write_verilog

    top, ports = as_used(_two_field_unit(), {"o": ("drop",)})
    names = [getattr(p, "name", "") for p in ports]
    assert "o__payload__keep" in names and not any("drop" in n for n in names)
    with pytest.raises(ValueError, match="nope"):
        as_used(_two_field_unit(), {"o": ("nope",)})
    with pytest.raises(ValueError, match="q"):
        as_used(_two_field_unit(), {"q": ("drop",)})
    text = write_verilog(_two_field_unit(), "t", tmp_path / "t.v", {"o": ("drop",)}).read_text()
    assert "o__payload__keep" in text and "o__payload__drop" not in text
    # the datapath's list names fields the real units have (a renamed field would raise here)
    assert unread_outputs("quant_stats") == unread_outputs("quant_stats_p") == {"o": ("z",)}
    assert unread_outputs("residual_add") == {}
    as_used(all_units()["quant_stats"](), unread_outputs("quant_stats"))


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs Yosys with synth_xilinx: `apt-get install yosys`")
def test_estimate_as_used_removes_the_unread_logic(tmp_path):
    from mmfree.rtl.estimate import estimate_verilog, write_verilog

    full = estimate_verilog(write_verilog(_two_field_unit(), "t", tmp_path / "full.v"), "t", "xc7")
    used = estimate_verilog(write_verilog(_two_field_unit(), "t", tmp_path / "used.v", {"o": ("drop",)}), "t", "xc7")
    assert used["FF"] == full["FF"] - 9 and used["CARRY"] < full["CARRY"]      # drop's 9 bits and its adder


def test_estimate_names_a_pipelined_variant_and_refuses_an_unknown_one(capsys):
    assert main(["rtl", "estimate", "--units", "quant_stats_q", "--as-used"]) == 1
    err = capsys.readouterr().err
    assert "unknown unit(s) quant_stats_q" in err and "quant_stats_p" in err
