"""A simulated PYNQ device: pynq's own ``Device`` back end with the ISA emulator as the programmable logic.

pynq (>= 3) lets a back end plug in below its public API: a ``pynq.Device`` subclass with the ``REGISTER_RW``
capability receives every ``MMIO`` access as ``read_registers`` / ``write_registers``, and ``pynq.allocate``
asks the active device's ``allocate``, whose ``PynqBuffer`` calls the device's ``flush`` / ``invalidate`` for
cache maintenance. :func:`sim_pynq_device` builds such a device over an
:class:`~mmfree.sim.emulator.EmulatedBoard`: the accelerator's CSR window at :data:`CSR_BASE`, DDR buffers as
real ``pynq.buffer.PynqBuffer`` arrays (host memory) whose ``flush`` copies into the emulator's DDR and whose
``invalidate`` copies back, as a Zynq's caches do. Host code then runs unchanged through ``pynq.DefaultIP``,
``pynq.MMIO`` and ``pynq.allocate`` (``mmfree run --board pynq-sim``).

Not simulated (yet): loading an overlay from a ``.bit``/``.hwh`` (``pynq.Overlay``), the interrupt (the
transport polls STATUS), timing.
"""

from __future__ import annotations

import ctypes
import struct

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig

#: Where the simulated block design puts the accelerator's AXI4-Lite window (an HPM0 address of the Zynq MPSoC).
CSR_BASE = 0xA000_0000
#: The simulated DDR the buffers come from: its base (a CMA-like region) and size.
MEM_BASE, MEM_SIZE = 0x6000_0000, 256 << 20


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
            from pynq.buffer import PynqBuffer
    except ImportError:
        raise MmfreeError("--board pynq-sim runs pynq's own MMIO and allocate: pip install pynq "
                          "(pip install -e '.[board]')") from None

    class SimPynqDevice(pynq.Device):
        """The accelerator's CSRs and DDR behind pynq's device interface (module docstring)."""

        capabilities = {"REGISTER_RW": True}

        def __init__(self, board, csr_base: int = CSR_BASE):
            super().__init__("mmfree-pynq-sim")
            self.board, self.csr_base, self._next = board, csr_base, board.mem_window[0]
            self.ip_dict, self.mem_dict, self.gpio_dict, self.interrupt_pins = {}, {}, {}, {}
            self.interrupt_controllers, self.hierarchy_dict, self.timestamp = {}, {}, "mmfree-pynq-sim"

        def _csr(self, address: int, length: int) -> int:
            off = address - self.csr_base
            if length % 4 or off % 4 or not 0 <= off <= off + length <= 1 << RM.CSR_ADDR_BITS:
                raise MmfreeError(f"MMIO access [{address:#x}, +{length}) is outside the accelerator's 32-bit "
                                  f"registers at {self.csr_base:#x}")
            return off

        def read_registers(self, address: int, length: int) -> bytes:
            off = self._csr(address, length)
            return b"".join(struct.pack("<I", self.board.read32(off + i) & 0xFFFFFFFF) for i in range(0, length, 4))

        def write_registers(self, address: int, data: bytes) -> None:
            off = self._csr(address, len(data))
            for i in range(0, len(data), 4):
                self.board.write32(off + i, struct.unpack_from("<I", data, i)[0])

        def allocate(self, shape, dtype, **kwargs):
            """A ``PynqBuffer`` (host memory, cacheable) at the next free simulated DDR address, 4 KiB aligned."""
            import numpy as np

            buf = PynqBuffer(shape, dtype, device=self, device_address=self._next, bo=self._next, coherent=False)
            lo, hi = self.board.mem_window
            if self._next + buf.nbytes > hi:
                raise MmfreeError(f"the simulated DDR ({(hi - lo) >> 20} MiB) cannot hold another "
                                  f"{buf.nbytes / 2**20:.1f} MiB buffer")
            self._next = -(-(self._next + buf.nbytes) // 4096) * 4096
            np.asarray(buf)[...] = 0
            return buf

        def flush(self, bo, offset, ptr, size):
            self.board.write_mem(bo + offset, ctypes.string_at(ptr, size))

        def invalidate(self, bo, offset, ptr, size):
            ctypes.memmove(ptr, self.board.read_mem(bo + offset, size), size)

    _DEVICE_CLASS = SimPynqDevice
    return SimPynqDevice


_DEVICE_CLASS = None


def sim_pynq_device(hw: HwConfig, mem_base: int = MEM_BASE, mem_size: int = MEM_SIZE):
    """A simulated PYNQ device (``pynq.Device``) with an :class:`~mmfree.sim.emulator.EmulatedBoard` of build
    ``hw`` as its programmable logic. Returns (device, the ``DefaultIP`` description of the accelerator: the dict
    ``pynq.Overlay`` would give the IP's constructor)."""
    from mmfree.sim.emulator import EmulatedBoard

    dev = _device_class()(EmulatedBoard(hw, mem_base=mem_base, mem_size=mem_size))
    desc = {"phys_addr": CSR_BASE, "addr_range": 1 << RM.CSR_ADDR_BITS, "device": dev, "type": RM.VLNV,
            "fullpath": "mmfree_accel_0", "interrupts": {}, "gpio": {}, "parameters": {}, "registers": {},
            "driver": None, "state": None, "bdtype": None}
    return dev, desc
