"""A simulated PYNQ device: pynq's own ``Device`` back end with the ISA emulator as the programmable logic.

pynq (>= 3) lets a back end plug in below its public API, and this module plugs in there and nowhere else:

* ``pynq.Overlay(X.bit)`` asks the device for the bitstream's metadata (:meth:`get_bitfile_metadata`: pynq's own
  ``RuntimeMetadataParser`` over the ``.hwh``, as on a board) and to ``download`` it. A simulated build's ``.bit``
  (written by ``mmfree build``, :mod:`mmfree.boards.hwh`) is a JSON record of the build; downloading it
  "programs" an :class:`~mmfree.sim.emulator.EmulatedBoard` of that ``HwConfig`` at the address the ``.hwh``
  gives the accelerator. pynq then binds ``overlay.mmfree_accel_0`` to mmfree's ``DefaultIP`` subclass itself.
* Every ``MMIO`` access arrives as ``read_registers`` / ``write_registers`` (capability ``REGISTER_RW``): the
  accelerator's CSRs, the AXI interrupt controller (``axi_intc``, the PG099 registers pynq's
  ``_InterruptController`` drives) and the PS clock registers pynq's ``Clocks`` reads and writes (CRL_APB /
  CRF_APB, with the IOPLL of a ZynqMP: ``arch`` is ``aarch64``).
* ``pynq.allocate`` asks the device's :meth:`allocate`: real ``pynq.buffer.PynqBuffer`` arrays (host memory)
  whose ``flush`` copies into the emulator's DDR and whose ``invalidate`` copies back, as a Zynq's caches do.
* The interrupt reaches pynq's real ``Interrupt`` -> ``_InterruptController`` -> ``UioController`` chain through
  a UIO device node stood in for by a pseudo-terminal: pynq opens its path and reads it on its event loop exactly
  as it opens ``/dev/uioN``; a "kernel" thread reads the enable words pynq writes and answers with the 4-byte
  interrupt count while the interrupt controller's output is high (one interrupt per enable, as the uio driver).
  pynq finds a UIO node from ``/proc/interrupts``, which a simulation cannot change, so :meth:`download`
  registers the node for the PS interrupt line in pynq's IRQ -> UIO table
  (``_InterruptController._uio_devices``), the one piece of pynq state the device sets.

Timing: the emulator has no clock. A pass started by CONTROL (START or GENERATE) stays BUSY until the host
looks for its end: a STATUS read (the polling driver) or an armed interrupt (the UIO enabled: the host waits);
then it runs to completion at once. Cycle counters read 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import threading
from pathlib import Path

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig

#: Where the simulated block design puts the accelerator's AXI4-Lite window (an HPM0 address of the Zynq MPSoC)
#: when no overlay says otherwise (:func:`sim_pynq_device`).
CSR_BASE = 0xA000_0000
#: The simulated DDR the buffers come from: its base (a CMA-like region) and size.
MEM_BASE, MEM_SIZE = 0x6000_0000, 256 << 20
#: the key a simulated build's .bit starts with (mmfree.boards.hwh.SIM_BIT_KEY; sim cannot import boards)
SIM_BIT_KEY = "mmfree_simulated_bitstream"
#: ZynqMP clock registers pynq's Clocks uses (CRL_APB, CRF_APB; 0x100 bytes each) and the PLL control value of a
#: PLL at 33.333 MHz x FBDIV 90 / 2 = 1499.985 MHz (FBDIV bits 14:8, DIV2 bit 16, PRE_SRC 0)
PS_CLOCK_WINDOWS = ((0xFF5E_0000, 0x100), (0xFD1A_0000, 0x100))
_PLL_1500 = (90 << 8) | (1 << 16)
_PLL_OFFSETS = (0x20, 0x2C, 0x30, 0x38)          # IOPLL/RPLL (CRL), APLL/DPLL/VPLL (CRF)
_ARM_CTRL = 0x60                                   # CRF ACPU_CTRL: DIVISOR0 (bits 13:8) 1 from APLL
#: the PS registers (one PS per process, like one board: an overlay swaps the PL, not the PS)
_PS_REGS: dict[int, int] = {}


def _ps_regs() -> dict[int, int]:
    if not _PS_REGS:
        for base, _ in PS_CLOCK_WINDOWS:
            for off in _PLL_OFFSETS:
                _PS_REGS[base + off] = _PLL_1500
        _PS_REGS[PS_CLOCK_WINDOWS[1][0] + _ARM_CTRL] = 1 << 8
    return _PS_REGS


class AxiIntc:
    """The AXI interrupt controller's registers (PG099: ISR, IPR, IER, IAR, SIE, CIE, IVR, MER) with one
    level-sensitive input, the accelerator's interrupt; :attr:`output` is its ``irq`` line to the PS."""

    ISR, IPR, IER, IAR, SIE, CIE, IVR, MER = range(0, 0x20, 4)

    def __init__(self):
        self.isr = self.ier = self.mer = 0

    def sample(self, line: bool) -> None:
        if line:
            self.isr |= 1

    @property
    def output(self) -> bool:
        return bool(self.mer & 1) and bool(self.isr & self.ier)

    def read(self, off: int) -> int:
        return {self.ISR: self.isr, self.IPR: self.isr & self.ier, self.IER: self.ier,
                self.IVR: 0 if self.isr & self.ier & 1 else 0xFFFFFFFF, self.MER: self.mer}.get(off, 0)

    def write(self, off: int, v: int) -> None:
        if off == self.IAR:
            self.isr &= ~v
        elif off == self.SIE:
            self.ier |= v
        elif off == self.CIE:
            self.ier &= ~v
        elif off == self.IER:
            self.ier = v
        elif off == self.MER:
            self.mer = v & 3


class PtyUio:
    """A UIO device node stood in for by a pseudo-terminal in raw mode: pynq's ``UioController`` opens
    :attr:`path`. :meth:`deliver` writes one interrupt (the 4-byte count) when pynq enabled the line; a thread
    reads the enable words and calls ``on_enable`` (the device then looks at its interrupt line)."""

    def __init__(self, on_enable):
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.enabled, self.count, self.enables, self.on_enable = False, 0, 0, on_enable
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmfree-pynq-sim-uio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 64)
            except OSError:
                return
            if data:
                self.enables += len(data) // 4
                self.on_enable()

    def deliver(self) -> bool:
        """One interrupt if the line is enabled (then disabled until pynq enables it again); True if sent."""
        if not self.enabled:
            return False
        self.enabled, self.count = False, self.count + 1
        os.write(self.master, struct.pack("<I", self.count))
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


def read_sim_bitstream(path) -> dict:
    """The build record of a simulated build's ``.bit`` (``mmfree build`` writes ``sim/mmfree_<board>.bit``);
    MmfreeError for anything else (a real bitstream cannot program the simulated device)."""
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        rec = None
    if not isinstance(rec, dict) or rec.get(SIM_BIT_KEY) != 1 or not isinstance(rec.get("hw"), dict):
        raise MmfreeError(f"{p} is not a simulated build's bitstream: the simulated pynq device loads the "
                          "sim/mmfree_<board>.bit that `mmfree build` writes (a real .bit needs the board)")
    try:
        rec["hwconfig"] = HwConfig(**rec["hw"])
    except (TypeError, ValueError) as exc:
        raise MmfreeError(f"{p}: the build record's hw is not a valid HwConfig ({exc}); rebuild with "
                          "`mmfree build`") from None
    return rec


class _SimDevice:
    """The simulated device's behaviour (module docstring); :func:`_device_class` mixes it into a
    ``pynq.Device`` subclass, so pynq is imported only when a device is made."""

    def __init__(self, hw: HwConfig | None = None, csr_base: int = CSR_BASE, mem_base: int = MEM_BASE,
                 mem_size: int = MEM_SIZE):
        super().__init__("mmfree-pynq-sim")
        self.name = "mmfree-pynq-sim"
        self.mem_base, self.mem_size, self.csr_base = mem_base, mem_size, csr_base
        self.lock = threading.RLock()
        self.board, self.intc, self.intc_base, self.uio, self._uio_ctl = None, None, None, None, None
        self.pending, self.build, self.bitfile_name, self.timestamp = None, None, None, ""
        self.ip_dict, self.mem_dict, self.gpio_dict, self.interrupt_pins = {}, {}, {}, {}
        self.interrupt_controllers, self.hierarchy_dict = {}, {}
        if hw is not None:
            self._program(hw, csr_base)
            self.timestamp = "mmfree-pynq-sim"

    # ---- programming: Overlay(X.bit) -------------------------------------------------------------------
    def get_bitfile_metadata(self, bitfile_name: str, partial: bool = False):
        """pynq's own parser of the ``.hwh`` beside ``bitfile_name`` (``RuntimeMetadataParser``, as
        ``pynq.Overlay`` uses on a board)."""
        from pynq.pl_server.embedded_device import RuntimeMetadataParser
        from pynqmetadata.frontends import Metadata

        hwh = Path(bitfile_name).with_suffix(".hwh")
        if not hwh.is_file():
            raise MmfreeError(f"{hwh.name} is missing next to {bitfile_name}")
        parser = RuntimeMetadataParser(Metadata(input=hwh))
        parser.refresh_hierarchy_dict()
        return parser

    def download(self, bitstream, parser=None):
        """"Program" the simulated logic from a simulated build's ``.bit`` (:func:`read_sim_bitstream`) at the
        addresses ``parser`` (the ``.hwh``) gives, attach the interrupt, then pynq's ``post_download``."""
        rec = read_sim_bitstream(bitstream.bitfile_name)
        parser = parser or self.get_bitfile_metadata(bitstream.bitfile_name)
        vln = RM.VLNV.rpartition(":")[0]
        accel = [v for v in parser.ip_dict.values() if str(v.get("type", "")).startswith(vln)]
        if not accel:
            raise MmfreeError(f"{bitstream.bitfile_name}: its .hwh has no {RM.VLNV} IP")
        self.close()
        self._program(rec["hwconfig"], int(accel[0]["phys_addr"]))
        self.build = rec
        intcs = [v for v in parser.ip_dict.values() if str(v.get("type", "")).startswith("xilinx.com:ip:axi_intc")]
        if intcs and parser.interrupt_controllers:
            self.intc, self.intc_base = AxiIntc(), int(intcs[0]["phys_addr"])
            raw = next(iter(parser.interrupt_controllers.values()))["raw_irq"]
            self._attach_uio(raw)
        self.post_download(bitstream, parser)

    def _program(self, hw: HwConfig, csr_base: int) -> None:
        from mmfree.sim.emulator import EmulatedBoard

        with self.lock:
            self.board = EmulatedBoard(hw, mem_base=self.mem_base, mem_size=self.mem_size)
            self.csr_base, self.pending, self._next = csr_base, None, self.mem_base
            self.intc, self.intc_base = None, None

    def _attach_uio(self, raw_irq: int) -> None:
        """The UIO node of the PS interrupt line: a pty (:class:`PtyUio`) opened by pynq's ``UioController`` on
        the current event loop (the one pynq's Interrupt waits on), registered for ``raw_irq``."""
        import asyncio

        from pynq.interrupt import _InterruptController
        from pynq.uio import UioController

        self.uio = PtyUio(self._on_uio_enable)
        self._uio_ctl = UioController(self.uio.path)
        self._uio_loop, self._raw_irq = asyncio.get_event_loop(), raw_irq
        _InterruptController._uio_devices[raw_irq] = self._uio_ctl

    def close(self) -> None:
        """Detach the interrupt node (pynq's reader, the pty, its thread); the device stays usable by polling."""
        from pynq.interrupt import _InterruptController

        ctl, self._uio_ctl = self._uio_ctl, None
        if ctl is not None:
            if _InterruptController._uio_devices.get(self._raw_irq) is ctl:
                del _InterruptController._uio_devices[self._raw_irq]
            if not self._uio_loop.is_closed():
                self._uio_loop.remove_reader(ctl.uio)     # pynq's UioController.__del__ closes its file
        uio, self.uio = self.uio, None
        if uio is not None:
            uio.close()

    # ---- the interrupt ---------------------------------------------------------------------------------
    def _on_uio_enable(self) -> None:
        with self.lock:
            if self.uio is not None:
                self.uio.enabled = True
            self._finish_pending()                 # the host waits: the pass runs
            self._update_irq()

    def _update_irq(self) -> None:
        if self.intc is None or self.board is None:
            return
        self.intc.sample(bool(self.board.csr["IRQ_STATUS"] & 1))
        if self.intc.output and self.uio is not None:
            self.uio.deliver()

    # ---- the accelerator's passes ----------------------------------------------------------------------
    def _finish_pending(self) -> None:
        if self.pending is not None:
            value, self.pending = self.pending, None
            self.board.csr["STATUS"] = 0
            self.board.write32(RM.OFFSET["CONTROL"], value)

    def _accel_write(self, off: int, value: int) -> None:
        if off == RM.OFFSET["CONTROL"]:
            if value & RM.CTRL_SOFT_RESET:
                self.pending = None
            if value & (RM.CTRL_START | RM.CTRL_GENERATE):
                self.board.write32(off, value & ~(RM.CTRL_START | RM.CTRL_GENERATE))
                self.pending = value & ~RM.CTRL_SOFT_RESET
                self.board.csr["STATUS"] = RM.STAT_BUSY
                return
        self.board.write32(off, value)

    def _accel_read(self, off: int) -> int:
        if off == RM.OFFSET["STATUS"]:
            self._finish_pending()                 # the host polls: the pass runs
        return self.board.read32(off) & 0xFFFFFFFF

    # ---- MMIO (REGISTER_RW) ----------------------------------------------------------------------------
    def _target(self, address: int, length: int):
        """(kind, offset) of an MMIO access: "accel", "intc" or "ps"; MmfreeError outside them."""
        if self.board is not None and self.csr_base <= address < self.csr_base + (1 << RM.CSR_ADDR_BITS):
            kind, off, size = "accel", address - self.csr_base, 1 << RM.CSR_ADDR_BITS
        elif self.intc is not None and self.intc_base <= address < self.intc_base + 0x1_0000:
            kind, off, size = "intc", address - self.intc_base, 0x1_0000
        elif any(b <= address < b + n for b, n in PS_CLOCK_WINDOWS):
            kind, off, size = "ps", address, 1 << 64
        else:
            kind, off, size = None, 0, 0
        if kind is None or length % 4 or off % 4 or (kind != "ps" and off + length > size):
            raise MmfreeError(f"MMIO access [{address:#x}, +{length}) is outside the accelerator's 32-bit "
                              f"registers at {self.csr_base:#x} (and the simulated device's other registers)")
        return kind, off

    def read_registers(self, address: int, length: int) -> bytes:
        with self.lock:
            kind, off = self._target(address, length)
            words = []
            for i in range(0, length, 4):
                if kind == "accel":
                    words.append(self._accel_read(off + i))
                elif kind == "intc":
                    self._update_irq()
                    words.append(self.intc.read(off + i))
                else:
                    words.append(_ps_regs().get(off + i, 0))
            self._update_irq()
            return b"".join(struct.pack("<I", w & 0xFFFFFFFF) for w in words)

    def write_registers(self, address: int, data: bytes) -> None:
        with self.lock:
            kind, off = self._target(address, len(data))
            for i in range(0, len(data), 4):
                v = struct.unpack_from("<I", data, i)[0]
                if kind == "accel":
                    self._accel_write(off + i, v)
                elif kind == "intc":
                    self.intc.write(off + i, v)
                else:
                    _ps_regs()[off + i] = v
                self._update_irq()

    # ---- DDR (pynq.allocate) ---------------------------------------------------------------------------
    def allocate(self, shape, dtype, **kwargs):
        """A ``PynqBuffer`` (host memory, cacheable) at the next free simulated DDR address, 4 KiB aligned."""
        import numpy as np

        if self.board is None:
            raise MmfreeError("no overlay is loaded on the simulated pynq device: pynq.Overlay(X.bit) first")
        from pynq.buffer import PynqBuffer

        buf = PynqBuffer(shape, dtype, device=self, device_address=self._next, bo=self._next, coherent=False)
        lo, hi = self.board.mem_window
        if self._next + buf.nbytes > hi:
            raise MmfreeError(f"the simulated DDR ({(hi - lo) >> 20} MiB) cannot hold another "
                              f"{buf.nbytes / 2**20:.1f} MiB buffer")
        self._next = -(-(self._next + buf.nbytes) // 4096) * 4096
        np.asarray(buf)[...] = 0
        return buf

    def flush(self, bo, offset, ptr, size):
        with self.lock:
            self.board.write_mem(bo + offset, ctypes.string_at(ptr, size))

    def invalidate(self, bo, offset, ptr, size):
        with self.lock:
            ctypes.memmove(ptr, self.board.read_mem(bo + offset, size), size)


def _device_class():
    """Define (once) the ``pynq.Device`` subclass; pynq is imported only here."""
    global _DEVICE_CLASS
    if _DEVICE_CLASS is not None:
        return _DEVICE_CLASS
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import pynq
            import pynq.buffer  # noqa: F401  (the device's allocate returns its PynqBuffer)
    except ImportError:
        raise MmfreeError("--board pynq-sim runs pynq's own MMIO and allocate: pip install pynq "
                          "(pip install -e '.[board]')") from None
    from pynq.ps import ZU_ARCH

    class SimPynqDevice(_SimDevice, pynq.Device):
        """The accelerator's CSRs, its interrupt and DDR behind pynq's device interface (module docstring)."""

        capabilities = {"REGISTER_RW": True}
        arch = ZU_ARCH                     # pynq's Clocks then drives the ZynqMP clock registers

    _DEVICE_CLASS = SimPynqDevice
    return SimPynqDevice


_DEVICE_CLASS = None


def new_device(mem_size: int | None = None):
    """An unprogrammed simulated PYNQ device with ``mem_size`` bytes of DDR (default :data:`MEM_SIZE`);
    ``pynq.Overlay(bit)`` with it active programs it."""
    return _device_class()(mem_size=MEM_SIZE if mem_size is None else mem_size)


def sim_pynq_device(hw: HwConfig, mem_base: int = MEM_BASE, mem_size: int = MEM_SIZE):
    """A simulated PYNQ device already programmed with build ``hw`` (no overlay, no interrupt). Returns (device,
    the ``DefaultIP`` description of the accelerator: the dict ``pynq.Overlay`` would give the IP's constructor)."""
    dev = _device_class()(hw, mem_base=mem_base, mem_size=mem_size)
    desc = {"phys_addr": CSR_BASE, "addr_range": 1 << RM.CSR_ADDR_BITS, "device": dev, "type": RM.VLNV,
            "fullpath": "mmfree_accel_0", "interrupts": {}, "gpio": {}, "parameters": {}, "registers": {},
            "driver": None, "state": None, "bdtype": None}
    return dev, desc


def activate(mem_size: int | None = None):
    """Make a new simulated device pynq's active device (what a PYNQ board image's device probe gives), so
    unchanged board code (``pynq.Overlay("mmfree_kv260.bit")``, a notebook) runs on it. Returns the device; an
    IPython startup file calling this turns a Jupyter kernel into a simulated board (the notebook test does)."""
    dev = new_device(mem_size)
    import pynq

    pynq.Device.active_device = dev
    return dev
