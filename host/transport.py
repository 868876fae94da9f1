"""How the host reaches one accelerator: the :class:`Transport` contract and :class:`BoardTransport`.

Five operations and one attribute, nothing else::

    read32(offset) -> int              AXI4-Lite read of a CSR (offsets: mmfree.rtl.regmap.OFFSET)
    write32(offset, value)             AXI4-Lite write
    write_mem(addr, data: bytes)       host write into DDR (the accelerator's address space), made
                                       visible to the accelerator before it returns (cache flush)
    read_mem(addr, n) -> bytes         host read from DDR, fresh from memory (cache invalidate)
    wait_irq(timeout_s) -> bool        block until the interrupt line is high; False on time-out
    mem_window -> (lo, hi)             the DDR range the host may hand to the accelerator

:class:`mmfree.boards.pynq.PynqTransport` is the board (``pynq.MMIO`` through the IP's ``mmio``, one
contiguous ``pynq.allocate`` buffer as the DDR window, the IP's interrupt or STATUS polling). The simulated
board (:class:`mmfree.sim.accel.SyncBoard`: the RTL under Verilator + cocotb) and the ISA emulator
(:class:`mmfree.sim.emulator.EmulatedBoard`) have the same methods; :class:`BoardTransport` wraps any of them
with the argument checks every transport makes. ``isinstance(x, Transport)`` is true for any object with the
five methods and ``mem_window``."""

from __future__ import annotations

import abc
from contextlib import contextmanager

from mmfree import MmfreeError
from mmfree.host.errors import AccelRunError, check_timeout
from mmfree.rtl import regmap as RM


class Transport(abc.ABC):
    """How the host reaches one accelerator: CSR access, DDR access, the interrupt (module docstring).

    Contract every transport keeps:

    * ``read32``/``write32`` take a byte offset that is a multiple of 4 inside the 4 KiB CSR window
      (``regmap.CSR_ADDR_BITS``) and 32-bit values; reads have no side effects except where the register
      map says so.
    * ``write_mem(addr, data)`` / ``read_mem(addr, n)`` take addresses in the accelerator's address space
      and refuse (:class:`MmfreeError`) any range outside ``mem_window``. After ``write_mem`` returns the
      accelerator sees the data; ``read_mem`` returns what the accelerator wrote (caches handled inside).
    * ``wait_irq(timeout_s)`` returns True as soon as the interrupt line is high (also when it already
      was), False after ``timeout_s`` seconds (simulated seconds in simulation); it never blocks longer.
      ``timeout_s`` must be finite and > 0 (:func:`~mmfree.host.errors.check_timeout`, MmfreeError otherwise).
    * an ``OSError`` from the CSR mapping (MMIO) is raised as :class:`~mmfree.host.errors.AccelRunError` naming
      the register (:func:`mmio_errors`).
    * ``mem_window`` is ``(lo, hi)``: the DDR the host owns and may give to the accelerator (MEM_LO/MEM_HI).
    * ``close()`` releases what the transport allocated (buffers); the default does nothing.
    """

    mem_window: tuple[int, int]
    #: a word for messages and JSON: "pynq", "sim", "emulator", ...
    kind: str = "transport"

    @abc.abstractmethod
    def read32(self, offset: int) -> int: ...

    @abc.abstractmethod
    def write32(self, offset: int, value: int) -> None: ...

    @abc.abstractmethod
    def write_mem(self, addr: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def read_mem(self, addr: int, n: int) -> bytes: ...

    @abc.abstractmethod
    def wait_irq(self, timeout_s: float) -> bool: ...

    def close(self) -> None:  # noqa: B027 (an optional hook: transports without buffers keep this no-op)
        """Release buffers; the transport is unusable afterwards."""

    # ---- checks shared by the transports ----------------------------------------------------------------
    @staticmethod
    def check_offset(offset: int) -> int:
        offset = int(offset)
        if offset % 4 or not 0 <= offset < (1 << RM.CSR_ADDR_BITS):
            raise MmfreeError(f"CSR offset {offset:#x} is not a 32-bit register inside the "
                              f"{1 << RM.CSR_ADDR_BITS}-byte register window")
        return offset

    def check_range(self, addr: int, n: int) -> None:
        lo, hi = self.mem_window
        if n < 0 or addr < lo or addr + n > hi:
            raise MmfreeError(f"host DDR access [{addr:#x}, {addr + n:#x}) is outside the transport's "
                              f"window [{lo:#x}, {hi:#x})")

    @classmethod
    def __subclasshook__(cls, other):
        if cls is Transport:
            names = ("read32", "write32", "write_mem", "read_mem", "wait_irq")
            if all(any(n in vars(b) for b in other.__mro__) for n in names) and \
                    any("mem_window" in vars(b) or "mem_window" in getattr(b, "__annotations__", {})
                        for b in other.__mro__):
                return True
        return NotImplemented


@contextmanager
def mmio_errors(op: str, offset: int):
    """Turn an ``OSError`` of a CSR ``op`` ("read"/"write") at ``offset`` into :meth:`AccelRunError.mmio`."""
    try:
        yield
    except OSError as exc:
        raise AccelRunError.mmio(op, offset, exc) from exc


def _has_transport_shape(obj) -> bool:
    return all(callable(getattr(obj, n, None)) for n in ("read32", "write32", "write_mem", "read_mem", "wait_irq")) \
        and hasattr(obj, "mem_window")


class BoardTransport(Transport):
    """Any object with the transport methods (the simulated board :class:`mmfree.sim.accel.SyncBoard`, the
    emulator :class:`mmfree.sim.emulator.EmulatedBoard`) as a :class:`Transport` that makes the same
    argument checks as :class:`PynqTransport`, so host code tested in simulation breaks the same way."""

    def __init__(self, board, kind: str = "board"):
        if not _has_transport_shape(board):
            raise MmfreeError(f"{type(board).__name__} is not a transport: it needs read32, write32, write_mem, "
                              "read_mem, wait_irq and mem_window")
        self.board, self.kind = board, kind
        self.mem_window = tuple(int(x) for x in board.mem_window)

    def read32(self, offset: int) -> int:
        offset = self.check_offset(offset)
        with mmio_errors("read", offset):
            return int(self.board.read32(offset)) & 0xFFFFFFFF

    def write32(self, offset: int, value: int) -> None:
        offset = self.check_offset(offset)
        with mmio_errors("write", offset):
            self.board.write32(offset, int(value) & 0xFFFFFFFF)

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        self.check_range(addr, len(data))
        self.board.write_mem(addr, data)

    def read_mem(self, addr: int, n: int) -> bytes:
        self.check_range(addr, n)
        out = bytes(self.board.read_mem(addr, n))
        if len(out) != n:
            raise MmfreeError(f"the {self.kind} board returned {len(out)} bytes for a {n}-byte read at {addr:#x}")
        return out

    def wait_irq(self, timeout_s: float) -> bool:
        return bool(self.board.wait_irq(check_timeout(timeout_s, max_s=None)))


def as_transport(board, kind: str | None = None) -> Transport:
    """``board`` if it already is a :class:`Transport` subclass instance, else :class:`BoardTransport` around it."""
    if Transport in type(board).__mro__:
        return board
    return BoardTransport(board, kind or type(board).__name__)
