"""Fuzz the board inputs: custom board files (any field, any JSON value) through `mmfree perf` and `mmfree
build`'s configuration, and `.hwh` hardware-handoff XML through `mmfree flash --check-only`. Each run ends in
a result or one clear error: no traceback, no hang."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mmfree.rtl import regmap as RM
from tests.fuzz.helpers import assert_clear, fuzz, run_cli

ROOT = Path(__file__).resolve().parents[2]
KV260 = json.loads((ROOT / "boards" / "kv260" / "board.json").read_text())
VALUES = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8)
          | st.lists(st.text(max_size=12) | st.integers(), max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                       st.integers(), max_size=2))


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


@fuzz(2)
@given(data=st.data())
def test_board_file(tmp_path, capsys, data):
    b = copy.deepcopy(KV260)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(b), key=str)))
        parent = b
        try:
            for k in path[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(VALUES)
            else:
                del parent[path[-1]]
        except (KeyError, TypeError):
            pass                       # an earlier edit replaced a parent
    f = tmp_path / "board.json"
    f.write_text(json.dumps(b))
    for argv, cmd in ((["perf", "--board", f"custom:{f}", "--model", "370M", "--json"], "perf"),
                      (["energy", "--board", f"custom:{f}", "--backends", "fpga-model", "--model", "370M", "--json"],
                       "energy")):
        rc, out, err = run_cli(argv, capsys, 60)
        assert_clear(0 if rc == 3 and cmd == "perf" else rc, err, cmd)       # perf: 3 = does not fit
        if rc in (0, 3):
            assert "NaN" not in out and "Infinity" not in out, out


HWH = """<?xml version="1.0" encoding="UTF-8" standalone="no" ?>
<EDKSYSTEM EDWVERSION="1.2" VIVADOVERSION="2023.2">
  <SYSTEMINFO ARCH="zynquplus" DEVICE="{device}" NAME="mmfree_bd" PACKAGE="sfvc784" SPEEDGRADE="-2LV"/>
  <MODULES>
    <MODULE FULLNAME="/{instance}" INSTANCE="{instance}" MODTYPE="mmfree_accel" VLNV="{vlnv}">
      <PARAMETERS>
        <PARAMETER NAME="{pname}" VALUE="{version}"/>
      </PARAMETERS>
    </MODULE>
  </MODULES>
</EDKSYSTEM>
"""
ATTR = st.text(st.characters(blacklist_characters='"<&\x00', blacklist_categories=("Cs",)), max_size=16)


@fuzz(2)
@given(device=st.sampled_from(["xck26", "xc7z020", ""]) | ATTR,
       vlnv=st.sampled_from([RM.VLNV, RM.VLNV.rpartition(":")[0] + ":9.9", "xilinx.com:ip:other:1.0"]) | ATTR,
       pname=st.sampled_from(["REGMAP_VERSION", "C_REGMAP_VERSION"]) | ATTR, instance=ATTR,
       version=st.sampled_from([f"0x{RM.REGMAP_VERSION:08x}", f"32'h{RM.REGMAP_VERSION:08x}", "0b1", "0x", "1e9",
                                str(2**80), "-1", "0x-1"]) | ATTR,
       cut=st.none() | st.integers(0, 600))
def test_hwh(tmp_path, capsys, device, vlnv, pname, instance, version, cut):
    bit = tmp_path / "mmfree_kv260.bit"
    bit.write_bytes(b"\0" * 16)
    text = HWH.format(device=device, vlnv=vlnv, pname=pname, instance=instance, version=version)
    bit.with_suffix(".hwh").write_text(text if cut is None else text[:cut])
    rc, out, err = run_cli(["flash", "--board", "kv260", "--bitstream", str(bit), "--check-only", "--json"], capsys, 60)
    assert_clear(rc, err, "flash")
    if rc == 0:
        assert json.loads(out)["regmap_version"].split(".")[0] == str(RM.REGMAP_VERSION_MAJOR)
