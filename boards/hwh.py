"""The generated hardware handoff of a simulated build: ``sim/mmfree_<board>.hwh`` and ``sim/mmfree_<board>.bit``.

Vivado writes the real ``.hwh`` of a bitstream; no Vivado runs here, so ``mmfree build`` also writes a
*generated* one (this module) for the simulated PYNQ device (:mod:`mmfree.sim.pynq_device`, ``mmfree run
--board pynq-sim``). It carries what PYNQ reads from the Vivado one, with the same names and numbers as the
block design of :mod:`mmfree.boards.build`:

* SYSTEMINFO: the board's exact part (DEVICE, PACKAGE, SPEEDGRADE), so :func:`mmfree.boards.pynq.check_hwh`
  checks it as it checks Vivado's;
* the Zynq UltraScale+ PS (``zynq_ultra_ps_e``) with PL clock 0 at the build's clock (requested and
  achieved MHz, the divisor pair from the 1499.985 MHz IOPLL nearest the request) and its memory map: the
  accelerator's 4 KiB ``s_axil`` window and the AXI interrupt controller on the GP port;
* the accelerator ``mmfree_accel_0`` (VLNV :data:`regmap.VLNV`) with the build parameters (REGMAP_VERSION,
  BUS_BYTES, MAX_TOKENS, MAX_WIDTH, WEIGHT_PORTS, ...) and every register and bit field of
  :mod:`mmfree.rtl.regmap` (PYNQ's ``register_map``);
* the interrupt wiring: ``mmfree_accel_0/interrupt`` -> ``axi_intc_0/intr`` -> ``pl_ps_irq0`` (IRQ 121), so
  ``overlay.mmfree_accel_0.interrupt`` is PYNQ's own ``Interrupt``; ``interrupt=False`` leaves the pin
  unconnected (an overlay without the interrupt: the driver polls STATUS).

The ``.bit`` beside it is not a bitstream: a JSON record of the build (board, part, clock, HwConfig) from which
the simulated device "programs" its logic (the ISA emulator of that HwConfig). A real board refuses it.
Only Zynq UltraScale+ boards (KV260, ZCU104) have a simulated device.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict
from typing import NamedTuple

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM

#: the .bit of a simulated build starts with this key (a real bitstream never does)
SIM_BIT_KEY = "mmfree_simulated_bitstream"
#: ZynqMP PS values the generated PS block and the simulated device share
PS_VLNV, INTC_VLNV = "xilinx.com:ip:zynq_ultra_ps_e:3.4", "xilinx.com:ip:axi_intc:4.1"
PS_INSTANCE, INTC_INSTANCE, PS_IRQ_PIN = "zynq_ultra_ps_e_0", "axi_intc_0", "pl_ps_irq0"
IOPLL_MHZ = 33.333 * 90 / 2          # the PL clocks' source on the ZynqMP (ref 33.333 MHz x FBDIV 90 / 2)
AXIMM = "xilinx.com:interface:aximm:1.0"


class Target(NamedTuple):
    """What the generated files need of a board: its name, exact part, PS kind, Vivado board part, GP port."""

    name: str
    part: str
    ps: str
    board_part: str | None
    gp_port: str

    @classmethod
    def of(cls, board) -> Target:
        """From a :class:`~mmfree.boardfile.Board` or a :class:`~mmfree.boards.build.BuildConfig`."""
        if hasattr(board, "raw"):
            return cls(board.name, board.part, board.ps, board.raw.get("vivado_board_part"),
                       board.raw.get("gp_port") or "M_AXI_HPM0_FPD")
        return cls(board.board, board.part, board.ps, board.board_part, board.gp_port)


def split_part(part: str) -> tuple[str, str, str]:
    """(DEVICE, PACKAGE, SPEEDGRADE) of a Zynq UltraScale+ Vivado part as a .hwh writes them:
    ``xck26-sfvc784-2LV-c`` -> (``xck26``, ``sfvc784``, ``-2LV``)."""
    bits = part.split("-")
    if len(bits) < 3 or not bits[0].lower().startswith("xc"):
        raise MmfreeError(f"part {part!r} is not a Zynq UltraScale+ part name (device-package-speed[-temp])")
    return bits[0], bits[1], "-" + bits[2]


def clock_divisors(clock_mhz: float) -> tuple[int, int, float]:
    """(DIVISOR0, DIVISOR1, achieved MHz) for a PL clock from the IOPLL: the divisor product nearest the request,
    as PYNQ's Clocks picks it (``mmfree build --clock-mhz 250`` runs at 249.9975 MHz)."""
    best = min(((a, b) for a in range(1, 64) for b in range(1, 64)),
               key=lambda d: (abs(IOPLL_MHZ / (d[0] * d[1]) - clock_mhz), d[1], d[0]))
    return best[0], best[1], round(IOPLL_MHZ / (best[0] * best[1]), 6)


def _params(parent, **values) -> None:
    ps = ET.SubElement(parent, "PARAMETERS")
    for k, v in values.items():
        ET.SubElement(ps, "PARAMETER", NAME=k, VALUE=str(v))


def _port(ports, name: str, direction: str, sigis: str = "undef", to: tuple[str, str] | None = None, **kw) -> None:
    p = ET.SubElement(ports, "PORT", DIR=direction, NAME=name, SIGIS=sigis, **kw)
    cons = ET.SubElement(p, "CONNECTIONS")
    if to is not None:
        ET.SubElement(cons, "CONNECTION", INSTANCE=to[0], PORT=to[1])


def _memrange(mm, instance: str, base: int, size: int, master: str, slave: str, block: str) -> None:
    ET.SubElement(mm, "MEMRANGE", ADDRESSBLOCK=block, BASENAME="C_BASEADDR", BASEVALUE=f"0x{base:08X}",
                  HIGHNAME="C_HIGHADDR", HIGHVALUE=f"0x{base + size - 1:08X}", INSTANCE=instance, IS_DATA="TRUE",
                  IS_INSTRUCTION="TRUE", MASTERBUSINTERFACE=master, MEMTYPE="REGISTER", SLAVEBUSINTERFACE=slave)


def _props(parent, **values) -> None:
    for k, v in values.items():
        ET.SubElement(parent, "PROPERTY", NAME=k, VALUE=str(v))


def _register_block(module) -> None:
    """Every register and field of :mod:`mmfree.rtl.regmap` as Vivado writes an IP's register map."""
    blocks = ET.SubElement(module, "ADDRESSBLOCKS")
    blk = ET.SubElement(blocks, "ADDRESSBLOCK", ACCESS="read-write", INTERFACE=RM.PORT_AXI_LITE, NAME="reg0",
                        RANGE=str(1 << RM.CSR_ADDR_BITS), USAGE="register")
    regs = ET.SubElement(blk, "REGISTERS")
    access = {RM.Access.RO: "read-only", RM.Access.RW: "read-write", RM.Access.WO: "write-only",
              RM.Access.W1C: "read-write"}
    for r in RM.REGISTERS:
        reg = ET.SubElement(regs, "REGISTER", NAME=r.name)
        _props(reg, DESCRIPTION=r.doc or r.name, ADDRESS_OFFSET=f"0x{r.offset:X}", SIZE=32, ACCESS=access[r.access],
               IS_ENABLED="true", RESET_VALUE=0)
        fields = ET.SubElement(reg, "FIELDS")
        for f in r.fields or (RM.Field(r.name, 0, 32),):
            fe = ET.SubElement(fields, "FIELD", NAME=f.name)
            _props(fe, DESCRIPTION=f.name, ADDRESS_OFFSET=0, ACCESS=access[r.access], BIT_OFFSET=f.lo,
                   BIT_WIDTH=f.width)


def hwh_text(board, hw, clock_mhz: float, interrupt: bool = True) -> str:
    """The generated ``.hwh`` (XML text) of the accelerator built as ``hw`` (a ``HwConfig``) for ``board`` (a
    :class:`~mmfree.boardfile.Board` or ``BuildConfig`` with a ZynqMP PS) at ``clock_mhz``; module docstring.
    Instance name and addresses are the block design's (:mod:`mmfree.boards.build`)."""
    from mmfree.boards.build import BD_NAME, CSR_BASE, INSTANCE, INTC_BASE

    board = Target.of(board)
    if board.ps != "zynqmp":
        raise MmfreeError(f"the simulated PYNQ device models a Zynq UltraScale+ board; the {board.name} has a "
                          f"{board.ps} PS (use kv260 or zcu104)")
    device, package, speed = split_part(board.part)
    root = ET.Element("EDKSYSTEM", EDWVERSION="1.2", TIMESTAMP="generated by mmfree build",
                      VIVADOVERSION="none (generated)")
    ET.SubElement(root, "SYSTEMINFO", ARCH="zynquplus", BOARD=board.board_part or "",
                  DEVICE=device, NAME=BD_NAME, PACKAGE=package, SPEEDGRADE=speed)
    ET.SubElement(root, "EXTERNALPORTS")
    ET.SubElement(root, "EXTERNALINTERFACES")
    mods = ET.SubElement(root, "MODULES")
    csr, intc = CSR_BASE[board.ps], INTC_BASE[board.ps] if interrupt else None
    act = _ps_module(mods, board.gp_port, clock_mhz, INSTANCE, csr, intc)
    _accel_module(mods, hw, act, INSTANCE, csr, interrupt)
    if interrupt:
        _intc_module(mods, INSTANCE, intc)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _ps_module(mods, gp: str, clock_mhz: float, instance: str, csr: int, intc: int | None) -> float:
    """The ZynqMP PS: PL clock 0 (requested and achieved MHz, divisors), the memory map of the GP port, the
    interrupt input. Returns the achieved MHz."""
    div0, div1, act = clock_divisors(clock_mhz)
    ps = ET.SubElement(mods, "MODULE", FULLNAME=f"/{PS_INSTANCE}", INSTANCE=PS_INSTANCE, IPTYPE="PERIPHERAL",
                       IS_ENABLE="1", MODCLASS="PROCESSOR", MODTYPE="zynq_ultra_ps_e", VLNV=PS_VLNV)
    _params(ps, PSU__FPGA_PL0_ENABLE=1, PSU__FPGA_PL1_ENABLE=0, PSU__FPGA_PL2_ENABLE=0, PSU__FPGA_PL3_ENABLE=0,
            **{f"PSU__CRL_APB__PL{i}_REF_CTRL__{k}": v for i in range(4) for k, v in
               (("SRCSEL", "IOPLL"), ("DIVISOR0", div0 if i == 0 else 4), ("DIVISOR1", div1 if i == 0 else 1),
                ("FREQMHZ", f"{clock_mhz:g}" if i == 0 else 100),
                ("ACT_FREQMHZ", repr(act) if i == 0 else round(IOPLL_MHZ / 4, 6)))})
    mm = ET.SubElement(ET.SubElement(ps, "MEMORYMAP"), "MEMRANGES")
    _memrange(mm, instance, csr, 1 << RM.CSR_ADDR_BITS, gp, RM.PORT_AXI_LITE, "reg0")
    if intc is not None:
        _memrange(mm, INTC_INSTANCE, intc, 0x1_0000, gp, "s_axi", "Reg")
    ports = ET.SubElement(ps, "PORTS")
    _port(ports, "pl_clk0", "O", "clk", CLKFREQUENCY=str(round(act * 1e6)))
    _port(ports, PS_IRQ_PIN, "I", "INTERRUPT", (INTC_INSTANCE, "irq") if intc is not None else None, LEFT="0",
          RIGHT="0", SENSITIVITY="LEVEL_HIGH:EDGE_RISING")
    bus = ET.SubElement(ps, "BUSINTERFACES")
    ET.SubElement(bus, "BUSINTERFACE", BUSNAME="ps8_0_axi_periph_M00", NAME=gp, TYPE="MASTER", VLNV=AXIMM)
    return act


def _accel_module(mods, hw, act: float, instance: str, csr: int, interrupt: bool) -> None:
    """The accelerator IP: build parameters, register map, clock and interrupt ports, the AXI4-Lite slave."""
    acc = ET.SubElement(mods, "MODULE", FULLNAME=f"/{instance}", HWVERSION="1.0", INSTANCE=instance,
                        IPTYPE="PERIPHERAL", IS_ENABLE="1", MODCLASS="PERIPHERAL", MODTYPE=RM.TOP_NAME, VLNV=RM.VLNV)
    _params(acc, Component_Name=f"mmfree_bd_{instance}", EDK_IPTYPE="PERIPHERAL",
            REGMAP_VERSION=f"0x{RM.REGMAP_VERSION:08X}", **{k.upper(): v for k, v in asdict(hw).items()},
            FREQ_HZ=round(act * 1e6), C_BASEADDR=f"0x{csr:08X}", C_HIGHADDR=f"0x{csr + (1 << RM.CSR_ADDR_BITS) - 1:08X}")
    _register_block(acc)
    ports = ET.SubElement(acc, "PORTS")
    _port(ports, "ap_clk", "I", "clk", (PS_INSTANCE, "pl_clk0"), CLKFREQUENCY=str(round(act * 1e6)))
    _port(ports, "interrupt", "O", "INTERRUPT", (INTC_INSTANCE, "intr") if interrupt else None,
          SENSITIVITY="LEVEL_HIGH")
    bus = ET.SubElement(acc, "BUSINTERFACES")
    ET.SubElement(bus, "BUSINTERFACE", BUSNAME="ps8_0_axi_periph_M01", NAME=RM.PORT_AXI_LITE, TYPE="SLAVE",
                  VLNV=AXIMM)


def _intc_module(mods, instance: str, base: int) -> None:
    """The AXI interrupt controller between the accelerator's ``interrupt`` and the PS's ``pl_ps_irq0``."""
    intc = ET.SubElement(mods, "MODULE", FULLNAME=f"/{INTC_INSTANCE}", HWVERSION="4.1", INSTANCE=INTC_INSTANCE,
                         IPTYPE="PERIPHERAL", IS_ENABLE="1", MODCLASS="INTERRUPT_CNTLR", MODTYPE="axi_intc",
                         VLNV=INTC_VLNV)
    _params(intc, C_NUM_INTR_INPUTS=1, C_KIND_OF_INTR="0xFFFFFFFE", C_IRQ_IS_LEVEL=1,
            C_BASEADDR=f"0x{base:08X}", C_HIGHADDR=f"0x{base + 0xFFFF:08X}")
    ports = ET.SubElement(intc, "PORTS")
    _port(ports, "intr", "I", "INTERRUPT", (instance, "interrupt"), LEFT="0", RIGHT="0", SENSITIVITY="LEVEL_HIGH")
    _port(ports, "irq", "O", "INTERRUPT", (PS_INSTANCE, PS_IRQ_PIN), SENSITIVITY="LEVEL_HIGH")
    bus = ET.SubElement(intc, "BUSINTERFACES")
    ET.SubElement(bus, "BUSINTERFACE", BUSNAME="ps8_0_axi_periph_M00", NAME="s_axi", TYPE="SLAVE", VLNV=AXIMM)


def sim_bit_text(board, hw, clock_mhz: float) -> str:
    """The simulated build's ``.bit``: a JSON record (:data:`SIM_BIT_KEY`) of board, part, clock and HwConfig."""
    board = Target.of(board)
    return json.dumps({SIM_BIT_KEY: 1, "board": board.name, "part": board.part, "clock_mhz": clock_mhz,
                       "hw": asdict(hw), "regmap_version": RM.REGMAP_VERSION}, indent=2) + "\n"


def sim_files(board, hw, clock_mhz: float, basename: str, interrupt: bool = True) -> dict[str, str]:
    """``{"sim/<basename>.bit": ..., "sim/<basename>.hwh": ...}`` for a build folder (``mmfree build``); empty for
    a board without a simulated device (a Zynq-7000 PS)."""
    if Target.of(board).ps != "zynqmp":
        return {}
    return {f"sim/{basename}.bit": sim_bit_text(board, hw, clock_mhz),
            f"sim/{basename}.hwh": hwh_text(board, hw, clock_mhz, interrupt=interrupt)}


def write_sim_overlay(folder, board, hw, clock_mhz: float, interrupt: bool = True, name: str | None = None):
    """Write ``<name>.bit`` + ``<name>.hwh`` (atomically) into ``folder``; returns the ``.bit`` path."""
    from pathlib import Path

    from mmfree.atomic import write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"mmfree_{Target.of(board).name.replace('-', '_')}"
    write_text(folder / f"{name}.hwh", hwh_text(board, hw, clock_mhz, interrupt=interrupt))
    write_text(folder / f"{name}.bit", sim_bit_text(board, hw, clock_mhz))
    return folder / f"{name}.bit"
