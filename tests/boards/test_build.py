"""`mmfree build` (Verilog, IP packaging, block design, batch TCL) and `mmfree flash`'s checks.

Vivado is not on this machine: the build tests stop at the TCL/IP stage and check that the message says so
(a fake `vivado` on PATH checks the run path). The generated TCL is checked per board for the part, board
part, PS IP, HP/GP ports, clock, interrupt, write_bitstream and the .bit/.hwh export."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.boards import build as B
from mmfree.boards.boardfile import load_board
from mmfree.cli import main
from mmfree.rtl import regmap as RM

BOARDS = {
    # board: (part, board part, PS IP, HP port, HP width, GP port, clock pin, irq pin, address width)
    "pynq-z2": ("xc7z020clg400-1", None, "processing_system7:5.5", "S_AXI_HP0", 64, "M_AXI_GP0", "FCLK_CLK0",
                "IRQ_F2P", 32),
    "kv260": ("xck26-sfvc784-2LV-c", "xilinx.com:kv260_som:part0:1.4", "zynq_ultra_ps_e", "S_AXI_HP0_FPD", 128,
              "M_AXI_HPM0_FPD", "pl_clk0", "pl_ps_irq0", 40),
    "zcu104": ("xczu7ev-ffvc1156-2-e", "xilinx.com:zcu104:part0:1.1", "zynq_ultra_ps_e", "S_AXI_HP0_FPD", 128,
               "M_AXI_HPM0_FPD", "pl_clk0", "pl_ps_irq0", 40),
}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_config_per_board(board):
    part, bpart, _, hp, width, gp, _, _, aw = BOARDS[board]
    cfg = B.config_for(board)
    assert (cfg.part, cfg.board_part, cfg.hp_port, cfg.gp_port, cfg.addr_width) == (part, bpart, hp, gp, aw)
    assert cfg.bus_bytes * 8 == width == load_board(board).hp_ports["width_bits"]
    assert cfg.clock_mhz == load_board(board).clock_mhz
    assert B.config_for(board, clock_mhz=50).clock_mhz == 50


def test_clock_above_the_board_limit_is_refused():
    with pytest.raises(MmfreeError, match=r"--clock-mhz 400 is outside 10..300 MHz for the kv260"):
        B.config_for("kv260", clock_mhz=400)
    with pytest.raises(MmfreeError, match="unknown board"):
        B.config_for("zedboard")


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_tcl_structure_per_board(board):
    part, bpart, ps_ip, hp, width, gp, clk, irq, aw = BOARDS[board]
    mhz = 125 if board == "pynq-z2" else 187.5
    cfg = B.config_for(board, clock_mhz=mhz)
    bd, top, pkg = B.block_design_tcl(cfg), B.build_tcl(cfg), B.package_ip_tcl(cfg)
    # the IP package: VLNV, interfaces, the register-map version as a fixed parameter
    vendor, lib, name, ver = RM.VLNV.split(":")
    assert f"-vendor {vendor} -library {lib}" in pkg and f"set_property name {name}" in pkg
    assert f"set_property version {ver}" in pkg
    assert f"-part {part}" in pkg
    assert "ipx::associate_bus_interfaces -busif m_axi -clock ap_clk" in pkg
    assert "ipx::associate_bus_interfaces -busif s_axil -clock ap_clk" in pkg
    assert f"REGMAP_VERSION 0x{RM.REGMAP_VERSION:08x}" in pkg and "ipx::save_core" in pkg
    # the block design: PS, ports, clock, interrupt, the accelerator and its address map
    assert f"xilinx.com:ip:{ps_ip}" in bd
    assert f"create_bd_cell -type ip -vlnv {RM.VLNV} {B.INSTANCE}" in bd
    assert f"get_bd_intf_pins $ps/{hp}]" in bd and f"get_bd_intf_pins $ps/{gp}]" in bd
    assert "xilinx.com:ip:smartconnect:1.0 smartconnect_hp" in bd and "smartconnect_gp" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $acc/m_axi] [get_bd_intf_pins $sc_hp/S00_AXI]" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $sc_hp/M00_AXI] $hp_port" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $sc_gp/M00_AXI] [get_bd_intf_pins $acc/s_axil]" in bd
    assert f"$ps/{clk}]" in bd and f"$ps/{irq}]" in bd
    assert "connect_bd_net [get_bd_pins $acc/interrupt] [get_bd_pins $cat/In0]" in bd
    assert "connect_bd_net [get_bd_pins $intc/irq] $ps_irq" in bd and "axi_intc" in bd
    assert "connect_bd_net $aresetn [get_bd_pins $acc/ap_rst_n]" in bd
    assert "assign_bd_address" in bd and "exclude_bd_addr_seg" in bd and "validate_bd_design" in bd
    if ps_ip.startswith("processing_system7"):
        n = hp[-1]
        assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ {125}" in bd
        assert f"CONFIG.PCW_USE_S_AXI_HP{n} {{1}}" in bd and f"CONFIG.PCW_S_AXI_HP{n}_DATA_WIDTH {{{width}}}" in bd
        assert "CONFIG.PCW_USE_M_AXI_GP0 {1}" in bd and "CONFIG.PCW_IRQ_F2P_INTR {1}" in bd
        assert "CONFIG.PCW_UIPARAM_DDR_PARTNO" in bd          # no board part: DDR from the board file
        assert "set_property board_part" not in top
    else:
        assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {187.5}" in bd
        assert "apply_board_preset \"1\"" in bd
        assert "CONFIG.PSU__USE__S_AXI_GP2 {1}" in bd and f"CONFIG.PSU__SAXIGP2__DATA_WIDTH {{{width}}}" in bd
        assert "CONFIG.PSU__USE__M_AXI_GP0 {1}" in bd and "CONFIG.PSU__USE__IRQ0 {1}" in bd
        assert "saxihp0_fpd_aclk" in bd and "maxihpm0_fpd_aclk" in bd
        assert f"set_property board_part {bpart} [current_project]" in top
    # the batch flow
    assert f"create_project -force {cfg.basename} $here/vivado -part {part}" in top
    assert "source $here/tcl/package_ip.tcl" in top and "source $here/tcl/block_design.tcl" in top
    assert "launch_runs impl_1 -to_step write_bitstream" in top
    assert "STATS.WNS" in top
    assert f"$here/{cfg.basename}.bit" in top and f"$here/{cfg.basename}.hwh" in top
    assert "hw_handoff/mmfree_bd.hwh" in top


def test_wrapper_ports_follow_the_regmap():
    cfg = B.config_for("kv260")
    v = B.wrapper_verilog(cfg)
    assert f"module {B.TOP}" in v and f"{RM.TOP_NAME} core" in v
    assert f"parameter REGMAP_VERSION = 32'h{RM.REGMAP_VERSION:08x}" in v
    for sig in ("m_axi_araddr", "m_axi_rdata", "m_axi_wstrb", "s_axil_awaddr", "s_axil_rdata", "ap_clk", "ap_rst_n",
                "interrupt"):
        assert re.search(rf"wire (\[\d+:0\] )?{sig}\b", v), sig
    assert "output wire [39:0] m_axi_araddr" in v and "input  wire [127:0] m_axi_rdata" in v
    assert "input  wire [11:0] s_axil_awaddr" in v and "output wire [31:0] s_axil_rdata" in v
    assert '"xilinx.com:interface:aximm:1.0 m_axi ARADDR"' in v and "PROTOCOL AXI4LITE" in v
    assert ".rst(~ap_rst_n)" in v and f".{RM.PORT_AXI_MASTER}__araddr(m_axi_araddr)" in v
    z2 = B.wrapper_verilog(B.config_for("pynq-z2"))
    assert "output wire [31:0] m_axi_araddr" in z2 and "input  wire [63:0] m_axi_rdata" in z2


@pytest.mark.sim
def test_wrapper_lints_with_verilator(tmp_path):
    """The wrapper is legal Verilog against a port-compatible stub of the core (Verilator --lint-only)."""
    from mmfree.toolchain import verilator_env

    cfg = B.config_for("pynq-z2")
    maxi, axil = B._axi_ports(cfg)
    ports = ["input clk", "input rst", f"output {RM.PORT_IRQ}"]
    ports += [f"{'output' if d == 'o' else 'input'} [{w - 1}:0] {RM.PORT_AXI_MASTER}__{n}" for n, w, d in maxi]
    ports += [f"{'output' if d == 'o' else 'input'} [{w - 1}:0] {RM.PORT_AXI_LITE}__{n}" for n, w, d in axil]
    outs = [p.split()[-1] for p in ports if p.startswith("output")]
    stub = (f"module {RM.TOP_NAME}({', '.join(p.split()[-1] for p in ports)});\n"
            + "".join(f"  {p};\n" for p in ports) + "".join(f"  assign {o} = '0;\n" for o in outs) + "endmodule\n")
    (tmp_path / "stub.v").write_text(stub)
    (tmp_path / "top.v").write_text(B.wrapper_verilog(cfg))
    verilator_env()
    out = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-UNUSEDSIGNAL", "-Wno-DECLFILENAME",
                          "-Wno-UNUSEDPARAM", "-Wno-SYMRSVDWORD", "--top-module", B.TOP, "top.v", "stub.v"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def stub_verilog(tmp_path, monkeypatch):
    """The build without generating the real accelerator (minutes): a stub Verilog file."""
    v = tmp_path / "stub_accel.v"
    v.write_text("module mmfree_accel(); endmodule\n")
    monkeypatch.setattr(B, "accel_verilog", lambda cfg, progress=None: v)
    return v


def _no_vivado_path(monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not (Path(p) / "vivado").exists()))


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_build_without_vivado_stops_after_the_project(board, tmp_path, stub_verilog, monkeypatch, capsys):
    _no_vivado_path(monkeypatch)
    out = tmp_path / "out"
    assert main(["build", "--board", board, "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["vivado"] == "not found"
    assert "Vivado is not on PATH: stopped after writing the project" in res["message"]
    cmd = f"cd {out} && vivado -mode batch -notrace -source build.tcl -log vivado.log -journal vivado.jou"
    assert res["vivado_command"] == cmd and cmd in res["message"]
    base = B.config_for(board).basename
    assert res["bitstream"] == f"{base}.bit" and res["hwh"] == f"{base}.hwh"
    for rel in res["files"] + ["build.json"]:
        assert (out / rel).is_file(), rel
    assert (out / "hdl" / "mmfree_accel.v").read_text() == stub_verilog.read_text()
    assert json.loads((out / "build.json").read_text())["regmap_version"] == \
        f"{RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}"
    assert not list(out.glob(".*.tmp"))                         # nothing half-written left behind
    # the human-readable form says the same
    assert main(["build", "--board", board, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Vivado is not on PATH" in text and cmd in text


def test_build_runs_vivado_when_on_path(tmp_path, stub_verilog, monkeypatch, capsys):
    fake = tmp_path / "bin" / "vivado"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n# a stand-in for Vivado: check the arguments, write the outputs build.tcl would\n"
                    "[ \"$1 $2 $3 $4 $5\" = \"-mode batch -notrace -source build.tcl\" ] || exit 9\n"
                    "[ -f build.tcl ] && [ -f tcl/block_design.tcl ] || exit 8\n"
                    "echo bit > mmfree_kv260.bit && echo hwh > mmfree_kv260.hwh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "o"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["vivado"] == "ran" and Path(res["bitstream_path"]).is_file() and Path(res["hwh_path"]).is_file()
    # --no-vivado writes the project only
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "p"), "--no-vivado", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vivado"] == "not found"


def test_estimate_fit_check():
    z2 = load_board("pynq-z2")
    fits = {"LUT": 20000, "LUTRAM": 1000, "FF": 30000, "DSP": 10, "BRAM": 100}
    assert B.check_fit(fits, z2) == [] or all("%" in w for w in B.check_fit(fits, z2))
    rep = B.fit_report(fits, z2)
    assert rep["LUT"]["used"] == 21000 and rep["BRAM"]["available"] == 140
    with pytest.raises(MmfreeError, match=r"does not fit the pynq-z2 \(xc7z020clg400-1\): BRAM 300 of 140"):
        B.check_fit(dict(fits, BRAM=300), z2)
    warn = B.check_fit(dict(fits, LUT=50000), z2)
    assert any(w.startswith("LUT at 96%") for w in warn)


# ---- flash: the .hwh checks ---------------------------------------------------------------------------------------
def write_hwh(path: Path, vlnv: str = RM.VLNV, version: str = f"0x{RM.REGMAP_VERSION:08x}",
              device: str = "xck26", package: str = "sfvc784", speed: str = "-2LV") -> Path:
    """A minimal hardware handoff in Vivado's layout (EDKSYSTEM / SYSTEMINFO / MODULES / MODULE / PARAMETERS)."""
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8" standalone="no" ?>
<EDKSYSTEM EDWVERSION="1.2" TIMESTAMP="Thu Nov 26 12:00:00 2026" VIVADOVERSION="2023.2">
  <SYSTEMINFO ARCH="zynquplus" DEVICE="{device}" NAME="mmfree_bd" PACKAGE="{package}" SPEEDGRADE="{speed}"/>
  <MODULES>
    <MODULE COREREVISION="1" FULLNAME="/{B.INSTANCE}" HWVERSION="1.0" INSTANCE="{B.INSTANCE}" IPTYPE="PERIPHERAL"
            MODCLASS="PERIPHERAL" MODTYPE="{vlnv.split(':')[2]}" VLNV="{vlnv}">
      <PARAMETERS>
        <PARAMETER NAME="REGMAP_VERSION" VALUE="{version}"/>
        <PARAMETER NAME="BUS_BYTES" VALUE="16"/>
        <PARAMETER NAME="Component_Name" VALUE="mmfree_bd_mmfree_accel_0_0"/>
      </PARAMETERS>
    </MODULE>
  </MODULES>
</EDKSYSTEM>
""")
    return path


def _bit(tmp_path, **hwh) -> Path:
    bit = tmp_path / "mmfree_kv260.bit"
    bit.write_bytes(b"\x00" * 64)
    if hwh is not None:
        write_hwh(bit.with_suffix(".hwh"), **hwh)
    return bit


def _flash(bit, capsys, board="kv260", *extra):
    rc = main(["flash", "--board", board, "--bitstream", str(bit), *extra])
    return rc, capsys.readouterr()


def test_flash_checks_a_good_bitstream(tmp_path, capsys):
    from mmfree.boards.driver import check_hwh

    bit = _bit(tmp_path)
    info = check_hwh(bit, load_board("kv260"))
    assert info.instance == B.INSTANCE and info.regmap_version == RM.REGMAP_VERSION
    rc, out = _flash(bit, capsys, "kv260", "--check-only", "--json")
    assert rc == 0 and json.loads(out.out)["regmap_version"] == f"{RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}"
    # another minor version is accepted; Verilog-style and decimal values parse
    for v in (f"0x{(RM.REGMAP_VERSION_MAJOR << 16) | 7:08x}", f"32'h{RM.REGMAP_VERSION:08x}", str(RM.REGMAP_VERSION)):
        write_hwh(bit.with_suffix(".hwh"), version=v)
        assert check_hwh(bit).regmap_version >> 16 == RM.REGMAP_VERSION_MAJOR


def test_flash_without_a_board_says_so(tmp_path, capsys):
    rc, out = _flash(_bit(tmp_path), capsys)
    assert rc == 1
    assert "no PYNQ board here" in out.err or "pynq is not installed" in out.err


def test_flash_refuses_a_bitstream_without_hwh(tmp_path, capsys):
    bit = _bit(tmp_path)
    bit.with_suffix(".hwh").unlink()
    rc, out = _flash(bit, capsys)
    assert rc == 1 and "mmfree_kv260.hwh is missing next to" in out.err and "hardware handoff" in out.err
    rc, out = _flash(tmp_path / "nothing.bit", capsys)
    assert rc == 1 and "does not exist" in out.err


def test_flash_refuses_a_hwh_for_another_design(tmp_path, capsys):
    rc, out = _flash(_bit(tmp_path, vlnv="xilinx.com:ip:axi_dma:7.1"), capsys)
    assert rc == 1 and "describes another design: no mmfree.org:mmfree:mmfree_accel:1.0 IP in it" in out.err
    assert "xilinx.com:ip:axi_dma:7.1" in out.err
    bit = _bit(tmp_path)
    bit.with_suffix(".hwh").write_text("<not xml")
    rc, out = _flash(bit, capsys)
    assert rc == 1 and "not a valid .hwh" in out.err
    rc, out = _flash(_bit(tmp_path, device="xc7z020", package="clg400", speed="-1"), capsys, "kv260")
    assert rc == 1 and "built for the device xc7z020" in out.err


def test_flash_refuses_a_register_map_mismatch(tmp_path, capsys):
    other = ((RM.REGMAP_VERSION_MAJOR + 1) << 16) | 0
    rc, out = _flash(_bit(tmp_path, version=f"0x{other:08x}"), capsys)
    assert rc == 1
    assert f"implements register map {RM.REGMAP_VERSION_MAJOR + 1}.0, this driver speaks " \
           f"{RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}" in out.err


def test_run_refuses_a_model_larger_than_the_board_ddr(tmp_path, capsys, monkeypatch):
    """Checked before any pynq or hardware access."""
    from mmfree.boards import driver as D
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.rtl.compiler import compile_model

    c = compile_model(open_int_model("default")[0])

    class Huge:
        def __len__(self):
            return 600 << 20

    big = D.Compiled(c.program, Huge(), c.dims, c.symbols, c.state_stride, c.head_chunk, c.max_width)
    monkeypatch.setattr(D, "open_model", lambda model: (big, None, None))
    monkeypatch.setattr(D, "_pynq", lambda: pytest.fail("pynq was touched"))
    rc = main(["run", "--board", "pynq-z2", "--model", "huge", "--prompt-ids", "1", "--tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "the model needs 600." in err and "the pynq-z2 leaves 320 MiB" in err


def test_quickstart_notebook_is_valid():
    """Valid nbformat 4 JSON, code cells parse, and the driver API it calls exists."""
    import ast

    from mmfree.boards import driver as D

    path = Path(__file__).resolve().parents[2] / "boards" / "notebooks" / "quickstart.ipynb"
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and nb["cells"]
    code = []
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            code.append("".join(cell["source"]))
            ast.parse(code[-1])
    text = "\n".join(code)
    for name in ("Accelerator.from_bitstream", "check_hwh", "acc.generate", "counters", "mean_accepted", "acc.close"):
        assert name in text, name
    assert callable(D.Accelerator.from_bitstream) and callable(D.check_hwh)
    try:
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_wrapper_matches_the_generated_accelerator():
    """Every port of the Amaranth-generated ``mmfree_accel`` (pynq-z2 build: 64-bit bus, 32-bit addresses) is
    connected by the IP top with its width (the Verilog is generated once per RTL change, ~40 s)."""
    cfg = B.config_for("pynq-z2")
    core = B.accel_verilog(cfg).read_text()
    header = re.search(rf"module {RM.TOP_NAME}\((.*?)\);", core, re.S)
    assert header, "no mmfree_accel module in the generated Verilog"
    ports = {p.strip() for p in header.group(1).split(",")}
    wrapper = B.wrapper_verilog(cfg)
    conns = dict(re.findall(r"\.(\w+)\(([^()]*(?:\([^()]*\))?[^()]*)\)", wrapper.split(" core (")[1]))
    assert set(conns) == ports
    for name, sig in conns.items():
        m = re.search(rf"(input|output) (?:\[(\d+):0\] )?{name};", core)
        w = re.search(rf"(input |output) wire (?:\[(\d+):0\] )?{re.escape(sig)}\b", wrapper)
        if w is None:                       # clk / rst expressions
            continue
        width = [int(x.group(2)) + 1 if x.group(2) else 1 for x in (m, w)]
        assert m.group(1) == w.group(1).strip() and width[0] == width[1], name


def test_record_estimates_rewrites_the_docs_table(tmp_path, monkeypatch):
    counts = {"LUT": 60000, "LUTRAM": 100, "FF": 2000, "DSP": 3, "BRAM": 40.5}
    monkeypatch.setattr(B, "latest_estimate", lambda cfg: None)
    monkeypatch.setattr(B, "estimate", lambda cfg, progress=None: {
        "family": cfg.family, "yosys": "0.23", "counts": counts, "seconds": 600, "source_key": "k", "created": "d"})
    doc = tmp_path / "boards.md"
    doc.write_text("before\n<!-- estimates:begin -->\nold\n<!-- estimates:end -->\nafter\n")
    B.record_estimates(doc)
    text = doc.read_text()
    assert text.startswith("before\n<!-- estimates:begin -->\n| board (part)")
    assert text.endswith("<!-- estimates:end -->\nafter\n")
    assert "old" not in text and "| pynq-z2 (xc7z020clg400-1) **does not fit** |" in text     # 60100 LUT > 53200
    assert "| kv260 (xck26-sfvc784-2LV-c) | 128-bit bus" in text and "| zcu104 (" in text
