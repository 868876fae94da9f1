"""`mmfree build` (Verilog, IP packaging, block design, batch TCL) and `mmfree flash`'s checks.

Vivado is not on this machine: the build tests stop at the TCL/IP stage and check that the message says so
(a fake `vivado` on PATH checks the run path). The generated TCL is checked per board for the part, board
part, PS IP, HP/GP ports, clock, interrupt, write_bitstream and the .bit/.hwh export, and run under Tcl with
Vivado's commands stubbed (syntax, and which master reaches which HP port); multi-port builds (weight ports
m_axi_w1..) get one SmartConnect, HP port and DDR mapping per AXI master."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.boardfile import load_board
from mmfree.boards import build as B
from mmfree.cli import main
from mmfree.rtl import regmap as RM

BOARDS = {
    # board: (part, board part, PS IP, m_axi's HP port, HP width, GP port, clock pin, irq pin, address width)
    "pynq-z2": ("xc7z020clg400-1", None, "processing_system7:5.5", "S_AXI_HP0", 64, "M_AXI_GP0", "FCLK_CLK0",
                "IRQ_F2P", 32),
    "kv260": ("xck26-sfvc784-2LV-c", "xilinx.com:kv260_som:part0:1.4", "zynq_ultra_ps_e", "S_AXI_HP0_FPD", 128,
              "M_AXI_HPM0_FPD", "pl_clk0", "pl_ps_irq0", 40),
    "zcu104": ("xczu7ev-ffvc1156-2-e", "xilinx.com:zcu104:part0:1.1", "zynq_ultra_ps_e", "S_AXI_HP0_FPD", 128,
               "M_AXI_HPM0_FPD", "pl_clk0", "pl_ps_irq0", 40),
}
#: board: (weight ports, the HP port of each AXI master, m_axi first) from the board file
PORTS = {
    "pynq-z2": (2, ["S_AXI_HP0", "S_AXI_HP2"]),
    "kv260": (4, ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD", "S_AXI_HP3_FPD"]),
    "zcu104": (4, ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD", "S_AXI_HP3_FPD"]),
}
MASTERS = ["m_axi", "m_axi_w1", "m_axi_w2", "m_axi_w3", "m_axi_w4", "m_axi_w5"]


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_config_per_board(board):
    part, bpart, _, hp, width, gp, _, _, aw = BOARDS[board]
    cfg = B.config_for(board)
    assert (cfg.part, cfg.board_part, cfg.hp_port, cfg.gp_port, cfg.addr_width) == (part, bpart, hp, gp, aw)
    assert (cfg.weight_ports, cfg.hp_ports) == PORTS[board] and cfg.hp_ports[0] == hp
    assert cfg.hw.weight_ports == cfg.weight_ports and cfg.hw.engines == cfg.hw.matvec_engines * cfg.weight_ports
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
    n_ports, hps = PORTS[board]
    for m in MASTERS[1:n_ports]:
        assert f"ipx::associate_bus_interfaces -busif {m} -clock ap_clk" in pkg
    assert f"WEIGHT_PORTS {n_ports}" in pkg
    assert "ipx::associate_bus_interfaces -busif s_axil -clock ap_clk" in pkg
    assert f"REGMAP_VERSION 0x{RM.REGMAP_VERSION:08x}" in pkg and "ipx::save_core" in pkg
    # the block design: PS, ports, clock, interrupt, the accelerator and its address map
    assert f"xilinx.com:ip:{ps_ip}" in bd
    assert f"create_bd_cell -type ip -vlnv {RM.VLNV} {B.INSTANCE}" in bd
    assert f"get_bd_intf_pins $ps/{hp}]" in bd and f"get_bd_intf_pins $ps/{gp}]" in bd
    assert "xilinx.com:ip:smartconnect:1.0 smartconnect_hp" in bd and "smartconnect_gp" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $acc/m_axi] [get_bd_intf_pins $sc_hp/S00_AXI]" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $sc_hp/M00_AXI] $hp_port" in bd
    assert bd.count("xilinx.com:ip:smartconnect:1.0 smartconnect_hp") == n_ports      # one per AXI master
    for m, port in zip(MASTERS[1:n_ports], hps[1:]):
        x = m[len("m_axi"):]
        assert f"set hp_port{x} [get_bd_intf_pins $ps/{port}]" in bd
        assert f"connect_bd_intf_net [get_bd_intf_pins $acc/{m}] [get_bd_intf_pins $sc_hp{x}/S00_AXI]" in bd
        assert f"connect_bd_intf_net [get_bd_intf_pins $sc_hp{x}/M00_AXI] $hp_port{x}" in bd
        assert f"assign_bd_address -target_address_space [get_bd_addr_spaces $acc/{m}] $seg" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins $sc_gp/M00_AXI] [get_bd_intf_pins $acc/s_axil]" in bd
    assert f"$ps/{clk}]" in bd and f"$ps/{irq}]" in bd
    assert "connect_bd_net [get_bd_pins $acc/interrupt] [get_bd_pins $cat/In0]" in bd
    assert "connect_bd_net [get_bd_pins $intc/irq] $ps_irq" in bd and "axi_intc" in bd
    assert "connect_bd_net $aresetn [get_bd_pins $acc/ap_rst_n]" in bd
    assert "assign_bd_address" in bd and "exclude_bd_addr_seg" in bd and "validate_bd_design" in bd
    if ps_ip.startswith("processing_system7"):
        assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ {125}" in bd
        for n in range(4):
            used = f"S_AXI_HP{n}" in hps
            assert (f"CONFIG.PCW_USE_S_AXI_HP{n} {{1}}" in bd) == used
            assert (f"CONFIG.PCW_S_AXI_HP{n}_DATA_WIDTH {{{width}}}" in bd) == used
        assert "CONFIG.PCW_USE_M_AXI_GP0 {1}" in bd and "CONFIG.PCW_IRQ_F2P_INTR {1}" in bd
        assert "CONFIG.PCW_UIPARAM_DDR_PARTNO" in bd          # no board part: DDR from the board file
        assert "set_property board_part" not in top
    else:
        assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {187.5}" in bd
        assert "apply_board_preset \"1\"" in bd
        for n in range(4):                  # HP<n>_FPD is S_AXI_GP<n+2>
            assert (f"CONFIG.PSU__USE__S_AXI_GP{n + 2} {{1}}" in bd) == (n < n_ports)
            assert (f"CONFIG.PSU__SAXIGP{n + 2}__DATA_WIDTH {{{width}}}" in bd) == (n < n_ports)
            assert (f"[get_bd_pins $ps/saxihp{n}_fpd_aclk]" in bd) == (n < n_ports)
        assert "CONFIG.PSU__USE__M_AXI_GP0 {1}" in bd and "CONFIG.PSU__USE__IRQ0 {1}" in bd
        assert "maxihpm0_fpd_aclk" in bd
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
    # weight ports: the kv260 build has 4 AXI masters with the m_axi signature, the pynq-z2 build two, a
    # one-port build one
    assert "parameter WEIGHT_PORTS = 4" in v and "parameter WEIGHT_PORTS = 2" in z2
    assert "m_axi_w1_" in z2 and "m_axi_w2_" not in z2
    one = B.wrapper_verilog(B.config_for("pynq-z2", weight_ports=1))
    assert not re.search(r"m_axi_w\d", one) and "ASSOCIATED_BUSIF m_axi:s_axil," in one
    assert "ASSOCIATED_BUSIF m_axi:m_axi_w1:m_axi_w2:m_axi_w3:s_axil," in v
    maxi, _ = B._axi_ports(cfg)
    for m in MASTERS[:4]:
        for name, width, d in maxi:
            io = "output" if d == "o" else "input "
            assert f"{io} wire [{width - 1}:0] {m}_{name}," in v or f"{io} wire [{width - 1}:0] {m}_{name}\n" in v
            assert f"(* X_INTERFACE_INFO = \"xilinx.com:interface:aximm:1.0 {m} {name.upper()}\" *)" in v
            assert f".{m}__{name}({m}_{name})" in v
    assert "output wire [39:0] m_axi_w3_araddr" in v and "input  wire [127:0] m_axi_w1_rdata" in v
    assert v.count("PROTOCOL AXI4, DATA_WIDTH 128, ADDR_WIDTH 40") == 4
    assert "m_axi_w4" not in v
    two = B.wrapper_verilog(B.config_for("pynq-z2", weight_ports=2))
    assert "output wire [31:0] m_axi_w1_araddr" in two and "m_axi_w2_" not in two
    six = B.wrapper_verilog(B.config_for("kv260", weight_ports=6))       # HP0-HP3 + HPC0-HPC1
    assert "parameter WEIGHT_PORTS = 6" in six and six.count("PROTOCOL AXI4, DATA_WIDTH 128, ADDR_WIDTH 40") == 6
    assert "ASSOCIATED_BUSIF m_axi:m_axi_w1:m_axi_w2:m_axi_w3:m_axi_w4:m_axi_w5:s_axil," in six
    assert "output wire [39:0] m_axi_w5_araddr" in six and "m_axi_w6" not in six


@pytest.mark.sim
@pytest.mark.parametrize("board", ["pynq-z2", "kv260"])
def test_wrapper_lints_with_verilator(tmp_path, board):
    """The wrapper is legal Verilog against a port-compatible stub of the core (Verilator --lint-only); the kv260
    build has the four AXI masters m_axi, m_axi_w1 .. m_axi_w3."""
    from mmfree.toolchain import verilator_env

    cfg = B.config_for(board)
    maxi, axil = B._axi_ports(cfg)
    ports = ["input clk", "input rst", f"output {RM.PORT_IRQ}"]
    ports += [f"{'output' if d == 'o' else 'input'} [{w - 1}:0] {m}__{n}" for m in B.masters(cfg.weight_ports)
              for n, w, d in maxi]
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


def _tcl_calls(script: str) -> list[list[str]]:
    """Run a generated TCL script under Tcl (tkinter) with every Vivado command stubbed: a stub records its call and
    returns its last argument (so ``[get_bd_intf_pins $ps/S_AXI_HP1]`` is ``<ps>/S_AXI_HP1``), except
    ``get_bd_addr_segs``, which offers a DDR and an OCM segment under its object, and the ``ipx::get_*`` look-ups,
    which find nothing (the scripts' create-if-missing branches run). ``file`` is stubbed too: nothing touches disk.
    A syntax error, an unset variable or an unbalanced brace fails the run."""
    tkinter = pytest.importorskip("tkinter")
    tcl = tkinter.Tcl()
    tcl.eval(r"""
        set ::calls {}
        proc unknown {args} { lappend ::calls $args; return [lindex $args end] }
        rename file {}
        proc file {args} { lappend ::calls [linsert $args 0 file]; return [lindex $args end] }
        proc get_bd_addr_segs {args} {
            lappend ::calls [linsert $args 0 get_bd_addr_segs]
            set o [lindex $args end]
            return [list $o/SEG_DDR_LOW $o/SEG_OCM]
        }
        namespace eval ipx {}
        foreach c {get_address_spaces get_memory_maps get_address_blocks get_user_parameters} {
            proc ipx::$c {args} "lappend ::calls \[linsert \$args 0 ipx::$c\]; return {}"
        }
    """)
    assert tcl.eval(f"info complete {{{script}}}") == "1"
    tcl.eval(script)
    return [list(tcl.splitlist(c)) for c in tcl.splitlist(tcl.eval("set ::calls"))]


@pytest.mark.parametrize("board,weight_ports", [("pynq-z2", None), ("kv260", None), ("zcu104", None),
                                                ("pynq-z2", 4), ("kv260", 2), ("zcu104", 1), ("kv260", 6),
                                                ("zcu104", 6)])
def test_tcl_runs_and_wires_each_master_to_its_hp_port(board, weight_ports):
    """block_design.tcl and package_ip.tcl run under Tcl (stubbed Vivado); each AXI master goes through its own
    SmartConnect to its own HP port, gets that port's DDR segment and no other; the PS enables exactly those
    HP ports and clocks them; the IP associates every master with ap_clk."""
    cfg = B.config_for(board, weight_ports=weight_ports)
    n = cfg.weight_ports
    assert n == (weight_ports or PORTS[board][0]) and len(cfg.hp_ports) == n
    calls = _tcl_calls(B.block_design_tcl(cfg))
    ps = "processing_system7_0" if cfg.ps == "zynq7" else "zynq_ultra_ps_e_0"
    intf = [c[1:] for c in calls if c[0] == "connect_bd_intf_net"]
    cells = [c[-1] for c in calls if c[0] == "create_bd_cell" and "xilinx.com:ip:smartconnect:1.0" in c]
    assert sorted(cells) == sorted(["smartconnect_gp"] + [f"smartconnect_hp{m[5:]}" for m in MASTERS[:n]])
    assign = [(c[c.index("-target_address_space") + 1], c[-1]) for c in calls if c[0] == "assign_bd_address"
              and "-offset" not in c]
    excluded = [c[1] for c in calls if c[0] == "exclude_bd_addr_seg"]
    for m, port in zip(MASTERS[:n], cfg.hp_ports):
        sc = f"smartconnect_hp{m[5:]}"
        assert [f"{B.INSTANCE}/{m}", f"{sc}/S00_AXI"] in intf, m
        assert [f"{sc}/M00_AXI", f"{ps}/{port}"] in intf, m
        assert (f"{B.INSTANCE}/{m}", f"{ps}/{port}/SEG_DDR_LOW") in assign, m
        assert f"{B.INSTANCE}/{m}/SEG_OCM" in excluded, m
    assert len(assign) == n and len(excluded) == n
    # the PS: exactly the used HP ports enabled (at the bus width) and clocked by the fabric clock
    props = " ".join(" ".join(c) for c in calls if c[0] == "set_property" and c[1] == "-dict")
    clocked = next(c for c in calls if c[0] == "connect_bd_net" and c[1] == (
        f"{ps}/FCLK_CLK0" if cfg.ps == "zynq7" else f"{ps}/pl_clk0") and len(c) > 3)
    for port in cfg.hp_ports:
        i = B.hp_port_index(cfg.ps, port)
        if cfg.ps == "zynq7":
            assert f"CONFIG.PCW_USE_S_AXI_HP{i} 1" in props and f"CONFIG.PCW_S_AXI_HP{i}_DATA_WIDTH 64" in props
            assert f"{ps}/{port}_ACLK" in clocked
        else:
            assert f"CONFIG.PSU__USE__S_AXI_GP{i} 1" in props and f"CONFIG.PSU__SAXIGP{i}__DATA_WIDTH 128" in props
            # HP0..3 FPD are S_AXI_GP2..5 (pins saxihp0..3_fpd_aclk), HPC0/1 FPD are S_AXI_GP0/1 (saxihpc0/1_fpd_aclk)
            assert f"{ps}/" + (f"saxihp{i - 2}_fpd_aclk" if i >= 2 else f"saxihpc{i}_fpd_aclk") in clocked
    use = re.findall(r"CONFIG\.PCW_USE_S_AXI_HP\d 1|CONFIG\.PSU__USE__S_AXI_GP\d 1", props)
    assert len(use) == n
    # the IP package
    pkg = _tcl_calls(B.package_ip_tcl(cfg))
    assoc = [c[2] for c in pkg if c[0] == "ipx::associate_bus_interfaces" and c[1] == "-busif"]
    assert assoc == MASTERS[:n] + ["s_axil"]
    spaces = [c[1] for c in pkg if c[0] == "ipx::add_address_space"]
    assert spaces == MASTERS[:n]
    assert sum(c[:3] == ["set_property", "range", str(1 << cfg.addr_width)] for c in pkg) == n
    assert sum(c[:3] == ["set_property", "width", str(8 * cfg.bus_bytes)] for c in pkg) == n


def _board_file(tmp_path, board="kv260", build=None, **hp) -> str:
    """A custom board file: ``board``'s with ``build`` (None: removed) and hp_ports fields changed (None: removed)."""
    d = copy.deepcopy(load_board(board).raw)
    if build is None:
        d.pop("build", None)
    else:
        d["build"] = build
    for k, v in hp.items():
        if v is None:
            d["hp_ports"].pop(k, None)
        else:
            d["hp_ports"][k] = v
    p = tmp_path / f"{board}-custom.json"
    p.write_text(json.dumps(d))
    return f"custom:{p}"


def test_weight_ports_default_and_override(tmp_path):
    # no build.weight_ports and no hp_ports.used: one port, the first HP port
    cfg = B.config_for(_board_file(tmp_path, build=None, used=None))
    assert (cfg.weight_ports, cfg.hp_ports) == (1, ["S_AXI_HP0_FPD"])
    # build.weight_ports without hp_ports.used: the first N names
    cfg = B.config_for(_board_file(tmp_path, build={"weight_ports": 2}, used=None))
    assert (cfg.weight_ports, cfg.hp_ports) == (2, ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"])
    # an explicit order is kept, m_axi on the first
    order = ["S_AXI_HP3_FPD", "S_AXI_HP0_FPD"]
    cfg = B.config_for(_board_file(tmp_path, build={"weight_ports": 2}, used=order))
    assert cfg.hp_ports == order
    # --weight-ports: the first N of hp_ports.used, then the other names
    assert B.config_for(_board_file(tmp_path, build={"weight_ports": 2}, used=order),
                        weight_ports=4).hp_ports == order + ["S_AXI_HP1_FPD", "S_AXI_HP2_FPD"]
    assert B.config_for("kv260", weight_ports=1).hp_ports == ["S_AXI_HP0_FPD"]
    assert B.config_for("kv260", weight_ports=2).hp_ports == ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"]
    assert B.config_for("pynq-z2", weight_ports=4).hp_ports == ["S_AXI_HP0", "S_AXI_HP2", "S_AXI_HP1", "S_AXI_HP3"]
    # engines per port from the board file: the PYNQ-Z2 keeps two engines in all (2 ports x 1)
    z2 = B.config_for("pynq-z2")
    assert (z2.hw.weight_ports, z2.hw.matvec_engines, z2.hw.engines) == (2, 1, 2)
    assert B.config_for("kv260").hw.engines == 8
    # six ports: the four HP ports, then HPC0 and HPC1 (every 128-bit PS slave port of a ZynqMP), 12 engines
    for board in ("kv260", "zcu104"):
        six = B.config_for(board, weight_ports=6)
        assert six.hp_ports == [f"S_AXI_HP{n}_FPD" for n in range(4)] + ["S_AXI_HPC0_FPD", "S_AXI_HPC1_FPD"]
        assert (six.hw.weight_ports, six.hw.engines) == (6, 12)
        assert "HPC port used non-coherently: ARCACHE 0b0011" in B.block_design_tcl(six)
    # the build parameters follow
    one, four = B.config_for("kv260", weight_ports=1), B.config_for("kv260")
    assert B._source_key(one) != B._source_key(four)
    assert one.hw.weight_ports == 1 and four.hw.weight_ports == 4


@pytest.mark.parametrize("build,hp,needle", [
    ({"weight_ports": 4}, {"used": ["S_AXI_HP0_FPD"]},
     r"field 'hp_ports.used' lists 1 HP port\(s\) .* but build.weight_ports is 4: list exactly one distinct port"),
    ({"weight_ports": 1}, {"used": ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"]},
     r"field 'hp_ports.used' lists 2 HP port\(s\)"),
    ({"weight_ports": 2}, {"used": ["S_AXI_HP0_FPD", "S_AXI_HP9_FPD"]},
     r"field 'hp_ports.used' names 'S_AXI_HP9_FPD', which is not one of hp_ports.names \(S_AXI_HP0_FPD, "),
    ({"weight_ports": 2}, {"used": ["S_AXI_HP1_FPD", "S_AXI_HP1_FPD"]},
     r"field 'hp_ports.used' names S_AXI_HP1_FPD more than once: each AXI master needs its own HP port"),
    ({"weight_ports": 3}, {}, r"field 'build.weight_ports' must be one of 1, 2, 4, 6 .*got 3; set it to one of those"),
    ({"weight_ports": 5}, {}, r"field 'build.weight_ports' must be one of 1, 2, 4, 6 .*got 5; set it to one of those"),
    ({"weight_ports": True}, {}, r"field 'build.weight_ports' must be a positive integer \(AXI masters"),
    ({"weight_ports": 2.0}, {}, r"field 'build.weight_ports' must be a positive integer \(AXI masters"),
    ({"weight_ports": 4}, {"names": ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"], "used": None},
     r"field 'build.weight_ports' is 4 but hp_ports.names lists only 2 HP port\(s\)"),
    ({"weight_ports": 1}, {"names": ["S_AXI_ACP_FPD"], "used": None},
     r"field 'hp_ports.names': 'S_AXI_ACP_FPD' is not a zynqmp PS slave port this build can use"),
    ({"weight_ports": 1}, {"used": "S_AXI_HP0_FPD"}, r"field 'hp_ports.used' must be a list of HP port names"),
])
def test_bad_weight_port_fields_name_the_field(tmp_path, build, hp, needle):
    with pytest.raises(MmfreeError, match=r"board file kv260: " + needle):
        B.config_for(_board_file(tmp_path, build=build, **hp))


def test_weight_ports_option_is_checked(tmp_path, capsys):
    with pytest.raises(MmfreeError, match=r"--weight-ports 3: the accelerator streams weights through 1, 2, 4, 6"):
        B.config_for("kv260", weight_ports=3)
    # PYNQ-Z2: HP0..HP3 only, no HPC ports
    with pytest.raises(MmfreeError, match=r"--weight-ports 6 is more than the 4 HP port\(s\) of the pynq-z2 \(board "
                                          r"file hp_ports.names: S_AXI_HP0, .*S_AXI_HP3\); choose at most 4"):
        B.config_for("pynq-z2", weight_ports=6)
    two = _board_file(tmp_path, build={"weight_ports": 2}, names=["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"], used=None)
    with pytest.raises(MmfreeError, match=r"--weight-ports 4 is more than the 2 HP port\(s\) of the kv260 .*at most 2"):
        B.config_for(two, weight_ports=4)
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "o"), "--weight-ports", "3", "--no-vivado"]) == 1
    assert "--weight-ports 3" in capsys.readouterr().err


def test_engines_option_overrides_the_board_file_and_is_checked(tmp_path, capsys):
    """--engines (``matvec_engines``): ternary engines per weight port, 1 or 2, over the board file's
    build.matvec_engines; the six-port k = 3 KV260 build has 6 engines in all."""
    six = B.config_for("kv260", weight_ports=6, matvec_engines=1, max_tokens=3, max_width=8192, draft_engine=False)
    assert (six.hw.weight_ports, six.hw.matvec_engines, six.hw.engines, six.hw.max_tokens) == (6, 1, 6, 3)
    assert B.config_for("kv260").matvec_engines == 2                     # the board file's default kept
    assert B.config_for("pynq-z2", matvec_engines=2).hw.engines == 4     # overrides the PYNQ-Z2's build.matvec_engines 1
    for bad in (0, 3, True, "1", 1.0):
        with pytest.raises(MmfreeError, match=r"--engines .*: the ternary engines per weight port must be 1 or 2; "
                                              r"give --engines 1 or --engines 2"):
            B.config_for("kv260", matvec_engines=bad)
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "o"), "--engines", "3", "--no-vivado"]) == 1
    err = capsys.readouterr().err
    assert "mmfree build: error: --engines 3:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:                                # a usage error: argparse exits 2
        main(["build", "--board", "kv260", "--out", str(tmp_path / "o"), "--engines", "one"])
    assert exc.value.code == 2 and "argument --engines: invalid int value: 'one'" in capsys.readouterr().err


def test_six_port_one_engine_build_writes_its_config(tmp_path, stub_verilog, monkeypatch, capsys):
    """`mmfree build --board kv260 --weight-ports 6 --engines 1 --max-tokens 3 --max-width 8192 --no-draft-engine`
    (the k = 3 build of docs/performance.md's acceptance section) writes a six-master project with that datapath."""
    _no_vivado_path(monkeypatch)
    out = tmp_path / "out"
    args = ["build", "--board", "kv260", "--out", str(out), "--weight-ports", "6", "--engines", "1", "--max-tokens",
            "3", "--max-width", "8192", "--no-draft-engine"]
    assert main(args + ["--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert (cfg["weight_ports"], cfg["matvec_engines"], cfg["max_tokens"], cfg["max_width"], cfg["draft_vocab"]) == \
        (6, 1, 3, 8192, 0)
    assert json.loads((out / "build.json").read_text())["config"]["matvec_engines"] == 1
    assert "m_axi_w5_araddr" in (out / "hdl" / f"{B.TOP}.v").read_text()
    assert main(args + ["--force"]) == 0
    assert "datapath:  1 ternary engine(s) per weight port, 3 token(s) per pass, vectors up to 8192 wide" in \
        capsys.readouterr().out


@pytest.fixture
def stub_verilog(tmp_path, monkeypatch):
    """The build without generating the real accelerator (minutes): a stub Verilog file."""
    v = tmp_path / "stub_accel.v"
    v.write_text("module mmfree_accel(); endmodule\n")
    monkeypatch.setattr(B, "accel_verilog", lambda cfg, progress=None: v)
    monkeypatch.setattr(B, "accel_memories", lambda cfg, progress=None: [])     # the modeled fit counts logic only
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
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["regmap_version"] == f"{RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}"
    assert (manifest["config"]["weight_ports"], manifest["config"]["hp_ports"]) == PORTS[board]
    assert ("m_axi_w1_araddr" in (out / "hdl" / f"{B.TOP}.v").read_text()) == (PORTS[board][0] > 1)
    assert not list(out.glob(".*.tmp"))                         # nothing half-written left behind
    # the human-readable form says the same
    assert main(["build", "--board", board, "--out", str(out)]) == 1     # an earlier build: --force to replace
    assert "pass --force" in capsys.readouterr().err
    assert main(["build", "--board", board, "--out", str(out), "--force"]) == 0
    text = capsys.readouterr().out
    assert "Vivado is not on PATH" in text and cmd in text
    assert f"{PORTS[board][0]} x {8 * manifest['config']['bus_bytes']}-bit AXI master ({', '.join(PORTS[board][1])})" \
        in text


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
    # --no-vivado writes the project only; --weight-ports overrides the board file's 4
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "p"), "--no-vivado", "--weight-ports", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["vivado"] == "not found"
    assert (res["config"]["weight_ports"], res["config"]["hp_ports"]) == (2, ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD"])
    bd = (tmp_path / "p" / "tcl" / "block_design.tcl").read_text()
    assert "$acc/m_axi_w1]" in bd and "m_axi_w2" not in bd and "S_AXI_HP2_FPD" not in bd
    # --max-tokens: a k = 2 build (what the 1.3B KV260 projection assumes), wide enough for 1.3B; 0 refused
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "k2"), "--no-vivado", "--max-tokens", "2",
                 "--max-width", "8192", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["config"]["max_tokens"], res["config"]["max_width"]) == (2, 8192)
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "k0"), "--no-vivado", "--max-tokens", "0"]) == 1
    assert "max_tokens must be an integer in 1..16" in capsys.readouterr().err


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
    from mmfree.boards.pynq import check_hwh

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


def test_flash_compares_the_exact_part(tmp_path, capsys):
    """The .hwh's device + package + speed grade must be the board's part (up to the temperature grade): another
    speed grade or package, or a device name that only contains the board's, is refused."""
    from mmfree.boards.pynq import check_hwh

    for hwh, board in ((dict(device="xck26", package="sfvc784", speed="-2LV"), "kv260"),
                       (dict(device="xczu7ev", package="ffvc1156", speed="-2"), "zcu104"),
                       (dict(device="7z020", package="clg400", speed="-1"), "pynq-z2")):
        assert check_hwh(_bit(tmp_path, **hwh), load_board(board)).part.startswith("xc")
    # another speed grade, another package, a device name that is only a substring (the old check accepted it)
    for hwh, why in ((dict(speed="-1"), "xck26sfvc784-1"), (dict(package="sfvc1156"), "xck26sfvc1156-2lv"),
                     (dict(device="xck2"), "xck2sfvc784-2lv")):
        rc, out = _flash(_bit(tmp_path, **hwh), capsys, "kv260")
        assert rc == 1 and f"(part {why}), the kv260 has xck26-sfvc784-2LV-c" in out.err, out.err


def test_flash_refuses_a_hwh_without_systeminfo(tmp_path, capsys):
    bit = _bit(tmp_path)
    hwh = bit.with_suffix(".hwh")
    lines = hwh.read_text().splitlines(keepends=True)
    hwh.write_text("".join(line for line in lines if "<SYSTEMINFO" not in line))
    for board in ("kv260", None):
        from mmfree.boards.pynq import check_hwh

        with pytest.raises(MmfreeError, match=r"mmfree_kv260.hwh has no SYSTEMINFO element, so the FPGA part"):
            check_hwh(bit, load_board(board) if board else None)
    rc, out = _flash(bit, capsys)
    assert rc == 1 and "has no SYSTEMINFO element" in out.err
    write_hwh(hwh, package="")
    rc, out = _flash(bit, capsys)
    assert rc == 1 and "SYSTEMINFO lacks PACKAGE, so the FPGA part the bitstream was built for is unknown" in out.err


def test_flash_refuses_a_register_map_mismatch(tmp_path, capsys):
    other = ((RM.REGMAP_VERSION_MAJOR + 1) << 16) | 0
    rc, out = _flash(_bit(tmp_path, version=f"0x{other:08x}"), capsys)
    assert rc == 1
    assert f"implements register map {RM.REGMAP_VERSION_MAJOR + 1}.0, this driver speaks " \
           f"{RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}" in out.err


def test_run_refuses_a_model_larger_than_the_board_ddr(tmp_path, capsys, monkeypatch):
    """Checked before any pynq or hardware access."""
    from mmfree.boards import pynq as BP
    from mmfree.host import session as HS
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.rtl.compiler import Compiled, compile_model

    c = compile_model(open_int_model("default")[0])

    class Huge:
        def __len__(self):
            return 600 << 20

    big = Compiled(c.program, Huge(), c.dims, c.symbols, c.state_stride, c.head_chunk, c.max_width)
    from mmfree.boards import accelerator as BA
    from mmfree.sim import run as SR

    # every module that binds open_model by name gets the patch and has it undone (a module first imported
    # under the patch would otherwise keep the fake for the rest of the process)
    for mod in (HS, BA, SR):
        monkeypatch.setattr(mod, "open_model", lambda model: (big, None, None))
    monkeypatch.setattr(BP, "_pynq", lambda: pytest.fail("pynq was touched"))
    rc = main(["run", "--board", "pynq-z2", "--model", "huge", "--prompt-ids", "1", "--tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "the model needs 600." in err and "the pynq-z2 leaves 320 MiB" in err


def test_quickstart_notebook_is_valid():
    """Valid nbformat 4 JSON, code cells parse, and the driver API it calls exists."""
    import ast

    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import check_hwh

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
    assert callable(Accelerator.from_bitstream) and callable(check_hwh)
    try:
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


@pytest.mark.parametrize("weight_ports", [1, 2])
def test_wrapper_matches_the_generated_accelerator(weight_ports):
    """Every port of the Amaranth-generated ``mmfree_accel`` (pynq-z2 build: 64-bit bus, 32-bit addresses; one
    and two weight ports) is connected by the IP top with its width (the Verilog is generated once per RTL change,
    ~20 s each)."""
    cfg = B.config_for("pynq-z2", weight_ports=weight_ports)
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
    assert any(p.startswith("m_axi_w1__") for p in ports) == (weight_ports > 1)


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
    assert "| kv260 (xck26-sfvc784-2LV-c) | the board file's: 128-bit bus" in text and "| zcu104 (" in text
    # the 1.3B projection's build is a row of its own, named by the flags that make it
    assert ("| kv260 (xck26-sfvc784-2LV-c) | `--max-width 8192 --max-tokens 3 --weight-ports 6 --engines 1 "
            "--no-draft-engine`: 128-bit bus, k = 3, width 8192, 6 weight ports x 1 engine, no draft engine, "
            "pipelined units |") in text
    rows = [r for r in text.splitlines() if r.startswith("| ") and "(x" in r]
    assert len(rows) == len(B.ESTIMATE_BUILDS) and all(r.count("|") == 17 for r in rows)
    assert "| - | 10 min | k, d |" in rows[0]                         # the xc7z020 has no URAM288; the key, date
    missing = B.estimates_markdown(run_missing=False)               # nothing cached: each row says how to make it
    assert "`mmfree build --board kv260 --out DIR --estimate --no-vivado`" in missing
    assert "`mmfree build --board kv260 --max-width 8192 --max-tokens 3 --weight-ports 6 --engines 1 " \
           "--no-draft-engine --out DIR --estimate --no-vivado`" in missing


def test_record_estimates_keeps_the_rows_it_has_no_estimate_for(tmp_path, monkeypatch):
    """Estimates are cached per machine: rewriting the table where only some builds were estimated keeps the other
    rows of the table before (their own keys with them; a row of the older 15-column table says its key is not
    known per row), and a build never estimated names its command."""
    est = {"yosys": "0.23", "counts": {"LUT": 100, "LUTRAM": 1, "FF": 2, "DSP": 3, "BRAM": 4.5}, "seconds": 60,
           "source_key": "new", "created": "today"}
    kv260 = B.config_for("kv260")
    monkeypatch.setattr(B, "latest_estimate", lambda cfg: est | {"family": cfg.family} if cfg == kv260 else None)
    monkeypatch.setattr(B, "estimate", lambda cfg, progress=None: pytest.fail("ran Yosys"))
    pynq, proj = B.ESTIMATE_BUILDS[0], B.ESTIMATE_BUILDS[3]
    from mmfree.boardfile import load_board

    def cells(b):
        return f"{b[0]} ({load_board(b[0]).part}) | {B._build_text(B.config_for(b[0], **b[1]), b[1])}"

    previous = (f"| {cells(pynq)} | xc7 | 36,462 | 129 | 36,855 | 146 | 67.5 | 0 | 69 | 35 | 66 | 48 | - | 10 min |\n"
                f"| {cells(proj)} | xcup | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 40 min | old, then |")
    doc = tmp_path / "boards.md"
    doc.write_text(f"<!-- estimates:begin -->\n{previous}\n<!-- estimates:end -->\n")
    B.record_estimates(doc, run_missing=False)
    rows = [r for r in doc.read_text().splitlines() if r.startswith("| ") and "(x" in r]
    assert len(rows) == 4 and all(r.count("|") == 17 for r in rows)
    assert rows[0].startswith(f"| {cells(pynq)} | xc7 | 36,462 |") and "an earlier RTL" in rows[0]
    assert "| 100 | 1 | 2 | 3 | 4.5 |" in rows[1] and rows[1].endswith("| new, today |")      # kv260: estimated here
    assert "not estimated yet: `mmfree build --board zcu104 --out DIR" in rows[2]
    assert rows[3] == f"| {cells(proj)} | xcup | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 40 min | old, then |"


@pytest.mark.parametrize("argv,says", [
    (["--record-estimates", "zcu104"], "--record-estimates takes no BOARD / OUT"),
    (["--run-missing"], "--run-missing goes with --record-estimates"),
    (["kv260"], "give BOARD and OUT, or --record-estimates"),
    ([], "give BOARD and OUT, or --record-estimates"),
    (["--record-estimates", "--run-misssing"], "unrecognized arguments: --run-misssing"),
])
def test_module_entry_refuses_bad_arguments(argv, says, capsys, monkeypatch):
    """`python -m mmfree.boards.build`: a usage error exits 2 with one line naming it (an extra or misspelt argument
    used to be ignored, and the table rewritten without --run-missing), before anything runs."""
    monkeypatch.setattr(B, "record_estimates", lambda **kw: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exc:
        B._main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_module_entry_reports_a_failed_record(capsys, monkeypatch):
    def fail(**kw):
        raise MmfreeError("docs/boards.md has no section")

    monkeypatch.setattr(B, "record_estimates", fail)
    assert B._main(["--record-estimates"]) == 1
    assert capsys.readouterr().err == "python -m mmfree.boards.build: error: docs/boards.md has no section\n"


def test_latest_estimate_matches_the_whole_build(tmp_path, monkeypatch):
    """A cached estimate stands for a build only when every parameter matches, the vector lanes included."""
    monkeypatch.setenv("MMFREE_BUILD_CACHE", str(tmp_path))
    cache = tmp_path / "boards" / "estimate"
    cache.mkdir(parents=True)
    cfg = B.config_for("kv260")
    keys = ("family", "bus_bytes", "max_tokens", "max_width", "addr_width", "weight_ports", "matvec_engines",
            "draft_vocab", "pipelined_units")
    e = {k: getattr(cfg, k) for k in keys} | {"counts": {"LUT": 1}, "yosys": "0.23", "seconds": 1}
    (cache / "a.json").write_text(json.dumps(e | {"vector_lanes": 2}))
    assert B.latest_estimate(cfg) is None
    assert B.latest_estimate(B.config_for("kv260", vector_lanes=2))["vector_lanes"] == 2
    (cache / "b.json").write_text(json.dumps(e))          # made before lanes were recorded: one
    assert B.latest_estimate(cfg)["counts"] == {"LUT": 1}


def test_max_tokens_from_the_board_file(tmp_path):
    """build.max_tokens sets the tokens per pass unless --max-tokens is given; a bad value names the field."""
    assert B.config_for("kv260").max_tokens == 2
    assert B.config_for("pynq-z2").max_tokens == 2
    assert B.config_for("zcu104").max_tokens == B.DEFAULT_MAX_TOKENS == 4
    assert B.config_for("kv260", max_tokens=4).max_tokens == 4
    assert B.config_for(_board_file(tmp_path, build=None, used=None)).max_tokens == B.DEFAULT_MAX_TOKENS
    for bad in (0, 17, "2", 2.0):
        with pytest.raises(MmfreeError, match=r"build\.max_tokens.*1\.\.16"):
            B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "max_tokens": bad}))


# ---- the fabric clock the PS really generates -------------------------------------------------------------------
@pytest.mark.parametrize("board, mhz, act, divisors", [
    # Vivado's figures for a ZynqMP (IOPLL 1499.985 MHz): PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ 249.997498 with
    # DIVISOR0 6 for 250; 99.999001 for 100 (FREQ_HZ 99999001 in KV260 designs); PCAP 187.498123 (/8) and
    # 59.999401 (/25) in the same PS configurations
    ("kv260", 250, 249.997498, [6, 1]), ("kv260", 100, 99.999001, [15, 1]), ("zcu104", 187.5, 187.498123, [8, 1]),
    ("zcu104", 60, 59.999401, [25, 1]), ("kv260", 300, 299.997009, [5, 1]),
    ("pynq-z2", 100, 100.0, [10, 1]),                     # 50 MHz PS_CLK x 20 = 1000 MHz IO PLL: exact
])
def test_fabric_clock_is_what_the_ps_generates(board, mhz, act, divisors):
    f = B.fabric_clock(load_board(board), mhz)
    assert (f["actual_mhz"], f["divisors"]) == (act, divisors)
    assert f["freq_hz"] == round(act * 1e6)
    cfg = B.config_for(board, clock_mhz=mhz)
    assert f"FREQ_HZ {f['freq_hz']}\"" in B.wrapper_verilog(cfg)
    bd = B.block_design_tcl(cfg)
    assert f"if {{$ps_freq != {f['freq_hz']}}}" in bd and "exit 2" in bd


def test_fabric_pll_field_is_checked(tmp_path):
    d = copy.deepcopy(load_board("kv260").raw)
    d["fabric_pll"] = {"ref_mhz": 33.333, "mult": -1}
    p = tmp_path / "b.json"
    p.write_text(json.dumps(d))
    with pytest.raises(MmfreeError, match=r"fabric_pll\.mult.*positive number"):
        B.config_for(f"custom:{p}")
    d.pop("fabric_pll")                                    # absent: the PS's default PLL (33.333 MHz x 45)
    p.write_text(json.dumps(d))
    assert B.config_for(f"custom:{p}").fabric["actual_mhz"] == 249.997498


# ---- the draft engine in a board build ----------------------------------------------------------------------------
def test_draft_engine_option_and_board_default(tmp_path, capsys):
    from mmfree.rtl import params as PARAMS

    assert B.config_for("kv260").draft_vocab == B.config_for("zcu104").draft_vocab == 32000    # board files
    assert B.config_for("pynq-z2").draft_vocab == 0
    assert B.config_for("kv260", draft_engine=False).draft_vocab == 0
    assert B.config_for("pynq-z2", draft_engine=True).draft_vocab == PARAMS.BOARD_DRAFT_VOCAB
    assert B.config_for("pynq-z2", draft_vocab=4096).hw.draft_vocab == 4096
    with pytest.raises(MmfreeError, match=r"--max-tokens >= 2.*--no-draft-engine"):
        B.config_for("kv260", max_tokens=1)
    assert B.config_for("kv260", max_tokens=1, draft_engine=False).draft_vocab == 0
    for bad in (0, 70000, "4096"):
        with pytest.raises(MmfreeError, match=r"--draft-vocab .*1\.\.65535"):
            B.config_for("kv260", draft_vocab=bad)
    with pytest.raises(MmfreeError, match="--no-draft-engine"):
        B.config_for("kv260", draft_engine=False, draft_vocab=4096)
    with pytest.raises(MmfreeError, match=r"build\.draft_vocab.*0\.\.65535"):
        B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "draft_vocab": -1}))
    assert main(["build", "--board", "kv260", "--out", str(tmp_path / "x"), "--draft-vocab", "99999"]) == 1
    assert "--draft-vocab 99999" in capsys.readouterr().err


def test_build_refuses_a_design_that_does_not_fit(tmp_path, stub_verilog, monkeypatch, capsys):
    """The modeled fit names each class that overflows, by how much and what to change; nothing is written."""
    from mmfree.rtl.memstyle import Mem

    _no_vivado_path(monkeypatch)
    # 6 x 16 URAM288: four fill the KV260's 64 (the build marks no more), two stay in block RAM, 120 RAMB36 each
    mems = [Mem("bigram", 32000, 128)] * 6
    monkeypatch.setattr(B, "accel_memories", lambda cfg, progress=None: mems)
    out = tmp_path / "o"
    assert main(["build", "--board", "kv260", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mmfree build: error: the build does not fit the kv260 (xck26-sfvc784-2LV-c), modeled: BRAM36 240 of 144 " \
           "(over by 96; " in err and "--no-draft-engine" in err and "URAM" not in err
    assert not out.exists()
    monkeypatch.setattr(B, "accel_memories", lambda cfg, progress=None: mems[:1])
    assert main(["build", "--board", "kv260", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    mod = res["modeled_resources"]
    assert mod["fits"] and mod["used"]["uram"] == 16 and mod["available"]["uram"] == 64 and mod["label"] == "modeled"
    assert res["draft_vocab"] == 32000 and res["fabric_clock"]["freq_hz"] == 249997498
    # the xc7 part has no URAM: the same memory is block RAM there (120 RAMB36 of the PYNQ-Z2's 140)
    assert B.modeled_resources(B.config_for("pynq-z2"), load_board("pynq-z2"), mems[:1])["used"]["bram36"] == 120


@pytest.mark.slow
def test_kv260_draft_engine_build_fits():
    """The acceptance build: `mmfree build --board kv260 --draft-engine` elaborated for real (the Verilog is cached
    per RTL change; minutes the first time): its large memories carry ram_style "ultra" and its modeled
    resources fit the K26."""
    cfg = B.config_for("kv260", draft_engine=True)
    text = B.accel_verilog(cfg).read_text()
    mems = B.accel_memories(cfg)
    res = B.modeled_resources(cfg, load_board("kv260"), mems)
    assert res["fits"], res
    marked = text.count('(* ram_style = "ultra" *)')
    assert marked == res["memories"]["uram"]["memories"] >= 1 + 2 * cfg.weight_ports    # bigram + weight queues
    assert any(m.depth == 32000 for m in mems)


def test_timing_config_small_and_overrides():
    """The whole-build timing run's named build (`mmfree rtl timing --build small`) and a board with overrides."""
    from mmfree.boards.build import timing_config

    hw = timing_config("small").hw
    assert (hw.bus_bytes, hw.weight_ports, hw.matvec_engines, hw.max_tokens, hw.max_width, hw.draft_vocab) == \
        (8, 1, 1, 1, 1024, 0)
    assert timing_config("small", max_width=512).max_width == 512
    assert timing_config("pynq-z2").weight_ports == 2                  # the board file's default build
    with pytest.raises(MmfreeError, match="unknown board 'nope'"):
        timing_config("nope")


# ---- the pipelined vector units in a board build ------------------------------------------------------------------
def test_pipelined_units_option_and_board_default(tmp_path, capsys):
    """``--pipelined-units`` (and the board file's build.pipelined_units) reach HwConfig and HW_CONFIG bit 28;
    ``pipelined_units=False`` (and a board file without the key) leaves both off; every shipped board file turns them
    on; a bad board-file value names the field; the named timing build has them."""
    from mmfree.boards.build import timing_config
    from mmfree.rtl.compiler import HwConfig

    plain = B.config_for("pynq-z2", pipelined_units=False)
    assert plain.pipelined_units is False and plain.hw.pipelined_units is False
    assert not B.config_for(_board_file(tmp_path, build={"weight_ports": 4})).hw.pipelined_units   # key absent: off
    for board in BOARDS:                                # the shipped board files: the pipelined units by default
        assert B.config_for(board).hw.pipelined_units is True, board
        assert B.config_for(board, pipelined_units=False).hw.pipelined_units is False, board
    assert (plain.hw.hw_config_reg >> 28) & 1 == 0
    piped = B.config_for("pynq-z2", pipelined_units=True)
    assert piped.hw.pipelined_units is True and RM.decode_hw_config(piped.hw.hw_config_reg)["pipelined_units"] == 1
    assert B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "pipelined_units": True})).pipelined_units
    assert not B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "pipelined_units": True}),
                            pipelined_units=False).pipelined_units
    with pytest.raises(MmfreeError, match=r"build\.pipelined_units.*true or false"):
        B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "pipelined_units": "yes"}))
    with pytest.raises(ValueError, match="pipelined_units must be True or False"):
        HwConfig(pipelined_units=1)
    assert timing_config("small-pipelined").hw == \
        HwConfig(**{**timing_config("small").hw.__dict__, "pipelined_units": True})
    assert timing_config("small").hw.pipelined_units is False       # the recorded plain build, whatever the board file
    assert B._source_key(plain) != B._source_key(piped)                 # its own cached Verilog
    assert B.config_for("pynq-z2") == piped                             # the board file's default build


def test_build_cli_pipelined_units_default_and_off(tmp_path, stub_verilog, monkeypatch, capsys):
    """`mmfree build --board kv260` writes a build with the pipelined units (the board file's build.pipelined_units),
    `--no-pipelined-units` the plain one; the modeled resources count the pipelined units' extra registers."""
    _no_vivado_path(monkeypatch)
    res = {}
    for flag in ([], ["--no-pipelined-units"]):
        out = tmp_path / ("out" + "".join(flag))
        assert main(["build", "--board", "kv260", "--out", str(out), "--no-vivado", "--json", *flag]) == 0
        m = json.loads(capsys.readouterr().out)
        assert json.loads((out / "build.json").read_text())["config"]["pipelined_units"] == m["config"]["pipelined_units"]
        res[bool(flag)] = m
    assert res[False]["config"]["pipelined_units"] is True and res[True]["config"]["pipelined_units"] is False
    assert res[False]["modeled_resources"]["used"]["ff"] > res[True]["modeled_resources"]["used"]["ff"]
def test_board_file_vector_lanes_reach_the_build(tmp_path):
    """``build.vector_lanes`` of a board file is the build's HwConfig.vector_lanes (and its own source key; V = 1
    keeps the key it had before the field existed); a bad value is one error naming the field."""
    four = B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "vector_lanes": 4}))
    one = B.config_for(_board_file(tmp_path, build={"weight_ports": 4}))
    assert four.hw.vector_lanes == 4 and one.hw.vector_lanes == 1
    assert B._source_key(four) != B._source_key(one)
    for bad in (3, True, 2.0):
        with pytest.raises(MmfreeError, match=r"field 'build.vector_lanes' must be 1, 2, 4 or 8"):
            B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "vector_lanes": bad}))
    # --vector-lanes overrides the board file; a bad value names the flag
    over = B.config_for(_board_file(tmp_path, build={"weight_ports": 4, "vector_lanes": 4}), vector_lanes=2)
    assert over.hw.vector_lanes == 2
    assert B.config_for("kv260", vector_lanes=2).vector_lanes == 2
    for bad in (3, 0, True, 2.0):
        with pytest.raises(MmfreeError, match=r"--vector-lanes .*: the vector engine runs 1, 2, 4 or 8"):
            B.config_for("kv260", vector_lanes=bad)
