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
