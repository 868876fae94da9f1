"""The mmfree driver: the one host program for the accelerator, on every transport.

Layers, bottom up:

* **Transports** (:class:`Transport`): how the host reaches one accelerator. Five operations and one
  attribute, nothing else::

      read32(offset) -> int              AXI4-Lite read of a CSR (offsets: mmfree.rtl.regmap.OFFSET)
      write32(offset, value)             AXI4-Lite write
      write_mem(addr, data: bytes)       host write into DDR (the accelerator's address space), made
                                         visible to the accelerator before it returns (cache flush)
      read_mem(addr, n) -> bytes         host read from DDR, fresh from memory (cache invalidate)
      wait_irq(timeout_s) -> bool        block until the interrupt line is high; False on time-out
      mem_window -> (lo, hi)             the DDR range the host may hand to the accelerator

  :class:`PynqTransport` is the board (``pynq.MMIO`` through the IP's ``mmio``, one contiguous
  ``pynq.allocate`` buffer as the DDR window, the IP's interrupt or STATUS polling). The simulated board
  (:class:`mmfree.sim.accel.SyncBoard`: the RTL under Verilator + cocotb) and the ISA emulator
  (:class:`mmfree.sim.emulator.EmulatedBoard`) have the same methods; :class:`BoardTransport` wraps any of
  them with the argument checks every transport makes. ``isinstance(x, Transport)`` is true for any object
  with the five methods and ``mem_window``.
* :class:`AccelHost`: places a compiled model (:mod:`mmfree.rtl.compiler`) and its work buffers in the
  window, programs the base registers once, and runs passes of k tokens (:meth:`AccelHost.run`), returning
  logits, argmax and the state after every position. States live in two areas used in turn, so committing
  a prefix is pointing the next pass's ``STATE_IN`` at one position of the last ``STATE_OUT`` (no copy).
* :func:`generate`: greedy generation over passes, with drafts verified k tokens per pass (prompt lookup
  by default, or a :class:`TrigramDrafter` tree); the output always equals plain greedy decoding.
  :func:`generate_onchip` (``generate(..., onchip=True)``): the same with the whole draft-verify loop on
  the accelerator (``CONTROL.GENERATE``, builds with a draft engine; docs/speculative.md).
* :class:`Accelerator`: the high-level object: model in (``"default"``, an export or checkpoint
  directory, an :class:`~mmfree.pymodel.intmodel.IntModel` or a :class:`~mmfree.rtl.compiler.Compiled`),
  text or tokens out, counters; :meth:`Accelerator.from_bitstream` opens a PYNQ overlay.
* PYNQ glue: :func:`register_pynq_driver` defines ``MmfreeAccelIP`` (a ``pynq.DefaultIP`` bound to
  :data:`mmfree.rtl.regmap.VLNV`); :func:`check_hwh` checks a bitstream's ``.hwh`` before it is loaded.

PYNQ is optional: nothing here imports it until a PYNQ object is asked for, and then a missing ``pynq``
is a clear :class:`~mmfree.MmfreeError`. Every wait has a time-out.
"""

from __future__ import annotations

import abc
import os
import struct
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import Compiled, HwConfig

PYNQ_MISSING = "pynq is not installed: this runs on a PYNQ board image (pip install -e '.[board]')"

#: Names the accelerator's interrupt pin may have in an overlay (PYNQ makes it an attribute of the IP):
#: ``interrupt`` in the IP built by :mod:`mmfree.boards.build`, ``irq`` for the bare top.
IRQ_PINS = ("interrupt", RM.PORT_IRQ)


# ======================================================================================================
# transports
# ======================================================================================================
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

    def close(self) -> None:
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
        return int(self.board.read32(self.check_offset(offset))) & 0xFFFFFFFF

    def write32(self, offset: int, value: int) -> None:
        self.board.write32(self.check_offset(offset), int(value) & 0xFFFFFFFF)

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
        return bool(self.board.wait_irq(timeout_s))


def as_transport(board, kind: str | None = None) -> Transport:
    """``board`` if it already is a :class:`Transport` subclass instance, else :class:`BoardTransport` around it."""
    if Transport in type(board).__mro__:
        return board
    return BoardTransport(board, kind or type(board).__name__)


def _pynq():
    import warnings

    try:
        with warnings.catch_warnings():            # pynq's own imports warn about pkg_resources
            warnings.simplefilter("ignore", DeprecationWarning)
            import pynq
    except ImportError:
        raise MmfreeError(PYNQ_MISSING) from None
    return pynq


class PynqTransport(Transport):
    """The accelerator on a PYNQ board.

    ``ip``: the overlay's accelerator (a ``pynq.DefaultIP``, e.g. :func:`register_pynq_driver`'s
    ``MmfreeAccelIP``; its ``mmio`` is the CSR window). ``mem_bytes``: size of the DDR window, one
    physically contiguous ``pynq.allocate`` buffer (uint8) whose device address is ``mem_window[0]``.
    Host writes are flushed and host reads invalidated over the bytes touched (the buffer is cacheable on
    Zynq). ``use_interrupt``: wait on the IP's interrupt (PYNQ's ``Interrupt``, needs the AXI interrupt
    controller of the block design) when present; else, or with False, poll STATUS every
    ``poll_s`` seconds. Every wait ends after its time-out.
    """

    kind = "pynq"

    def __init__(self, ip, mem_bytes: int, use_interrupt: bool = True, poll_s: float = 1e-4, buffer=None):
        pynq = _pynq()
        if mem_bytes <= 0:
            raise MmfreeError(f"the DDR window must be > 0 bytes, got {mem_bytes}")
        self.ip, self.mmio, self.poll_s = ip, ip.mmio, poll_s
        mem_bytes = -(-int(mem_bytes) // RM.ALIGN) * RM.ALIGN
        try:
            self.buf = buffer if buffer is not None else pynq.allocate(shape=(mem_bytes,), dtype=np.uint8)
        except Exception as exc:       # CMA exhausted, no device, ...
            raise MmfreeError(f"pynq.allocate of a {mem_bytes / 2**20:.1f} MiB contiguous DDR buffer failed ({exc}); "
                              "free other buffers, or raise the CMA size of the board image") from exc
        lo = int(self.buf.device_address)
        if lo % RM.ALIGN:
            raise MmfreeError(f"pynq.allocate returned a buffer at {lo:#x}, not {RM.ALIGN}-byte aligned")
        self.mem_window = (lo, lo + int(self.buf.nbytes))
        self.irq = next((getattr(ip, n) for n in IRQ_PINS if getattr(ip, n, None) is not None), None) \
            if use_interrupt else None

    def read32(self, offset: int) -> int:
        return int(self.mmio.read(self.check_offset(offset))) & 0xFFFFFFFF

    def write32(self, offset: int, value: int) -> None:
        self.mmio.write(self.check_offset(offset), int(value) & 0xFFFFFFFF)

    def _view(self, addr: int, n: int):
        self.check_range(addr, n)
        off = addr - self.mem_window[0]
        return self.buf[off:off + n]

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        view = self._view(addr, len(data))
        view[:] = np.frombuffer(data, dtype=np.uint8)
        view.flush()               # a slice flushes just its own bytes

    def read_mem(self, addr: int, n: int) -> bytes:
        view = self._view(addr, n)
        view.invalidate()
        return view.tobytes()

    def wait_irq(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if self.irq is not None and not self._loop_running():
            import asyncio

            async def wait():
                try:
                    await asyncio.wait_for(self.irq.wait(), timeout_s)
                    return True
                except asyncio.TimeoutError:
                    return False

            if self.read32(RM.OFFSET["IRQ_STATUS"]) & 1:
                return True
            return asyncio.run(wait()) or bool(self.read32(RM.OFFSET["IRQ_STATUS"]) & 1)
        # no interrupt, or inside a running event loop (a Jupyter cell): poll STATUS
        while True:
            if self.read32(RM.OFFSET["STATUS"]) & (RM.STAT_DONE | RM.STAT_ERROR):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    @staticmethod
    def _loop_running() -> bool:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def close(self) -> None:
        buf, self.buf = getattr(self, "buf", None), None
        if buf is not None and hasattr(buf, "freebuffer"):
            buf.freebuffer()


# ======================================================================================================
# PYNQ: the IP driver class, the .hwh checks, the overlay
# ======================================================================================================
_IP_CLASS = None


def register_pynq_driver():
    """Define (once) and return ``MmfreeAccelIP``, a ``pynq.DefaultIP`` subclass with ``bindto = [VLNV]``:
    ``pynq.Overlay`` then gives the accelerator this class. Raises MmfreeError without pynq."""
    global _IP_CLASS
    if _IP_CLASS is not None:
        return _IP_CLASS
    pynq = _pynq()

    class MmfreeAccelIP(pynq.DefaultIP):
        """The mmfree accelerator in a PYNQ overlay (``overlay.mmfree_accel_0``).

        ``ip.transport(mem_bytes)`` -> :class:`PynqTransport`; ``ip.version``, ``ip.hw_config`` read the
        identity registers; ``ip.accelerator(model)`` -> :class:`Accelerator` on this IP."""

        bindto = [RM.VLNV]

        def __init__(self, description):
            super().__init__(description=description)

        @property
        def version(self) -> tuple[int, int]:
            v = self.read(RM.OFFSET["VERSION"])
            return v >> 16, v & 0xFFFF

        @property
        def hw_config(self) -> dict:
            return dict(RM.decode_hw_config(self.read(RM.OFFSET["HW_CONFIG"])),
                        max_width=16 * (self.read(RM.OFFSET["HW_LIMITS"]) & 0xFFFF))

        def transport(self, mem_bytes: int, **kw) -> PynqTransport:
            return PynqTransport(self, mem_bytes, **kw)

        def accelerator(self, model="default", **kw) -> "Accelerator":
            return Accelerator.on_ip(self, model, **kw)

    MmfreeAccelIP.__module__ = __name__
    MmfreeAccelIP.__qualname__ = "MmfreeAccelIP"
    _IP_CLASS = MmfreeAccelIP
    return MmfreeAccelIP


def __getattr__(name):       # module attribute ``MmfreeAccelIP`` on demand (needs pynq)
    if name == "MmfreeAccelIP":
        return register_pynq_driver()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "pynq" in sys.modules:    # pynq already imported (a board notebook): bind before any Overlay is made
    try:
        register_pynq_driver()
    except Exception:         # a broken pynq must not break importing the driver
        pass


@dataclass
class HwhInfo:
    """What :func:`check_hwh` found in a bitstream's ``.hwh``."""

    hwh: Path
    instance: str                      # the accelerator's block-design instance name
    regmap_version: int
    parameters: dict[str, str]
    part: str | None = None


def _hwh_int(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    if t.startswith("0b"):
        return int(t[2:], 2)
    if t.startswith("0x"):
        return int(t, 16)
    if "'h" in t:
        return int(t.split("'h", 1)[1], 16)
    return int(t)


def check_hwh(bitstream, board=None) -> HwhInfo:
    """Refuse a bitstream before it touches the hardware: its ``.hwh`` must sit next to it (PYNQ naming:
    ``X.bit`` + ``X.hwh``), hold the accelerator (VLNV :data:`regmap.VLNV`) and declare a register-map
    version whose major number is this driver's. ``board`` (a :class:`mmfree.boards.boardfile.Board`), when
    given, must match the ``.hwh``'s part."""
    bit = Path(bitstream)
    if bit.suffix != ".bit":
        raise MmfreeError(f"{bit} is not a .bit file; give the bitstream written by `mmfree build` (X.bit with X.hwh)")
    if not bit.is_file():
        raise MmfreeError(f"bitstream {bit} does not exist")
    hwh = bit.with_suffix(".hwh")
    if not hwh.is_file():
        raise MmfreeError(f"{hwh.name} is missing next to {bit}: PYNQ needs the hardware handoff file beside the "
                          "bitstream (same name, .hwh); copy it from the build's output folder")
    try:
        root = ET.parse(hwh).getroot()
    except ET.ParseError as exc:
        raise MmfreeError(f"{hwh} is not a valid .hwh (XML) file: {exc}") from None
    module = None
    for m in root.iter("MODULE"):
        if m.get("VLNV") == RM.VLNV or (m.get("VLNV") or "").rpartition(":")[0] == RM.VLNV.rpartition(":")[0]:
            module = m
            break
    if module is None:
        found = sorted({m.get("VLNV") for m in root.iter("MODULE") if m.get("VLNV")})
        raise MmfreeError(f"{hwh.name} describes another design: no {RM.VLNV} IP in it "
                          f"(found {', '.join(found[:6]) or 'no IP'}); "
                          "build the overlay with `mmfree build`")
    params = {p.get("NAME"): p.get("VALUE") for p in module.iter("PARAMETER") if p.get("NAME")}
    raw = params.get("REGMAP_VERSION") or params.get("C_REGMAP_VERSION")
    if raw is None:
        raise MmfreeError(f"{hwh.name}: the {RM.VLNV} IP declares no REGMAP_VERSION parameter; rebuild the "
                          "overlay with this version of `mmfree build`")
    try:
        version = _hwh_int(raw)
    except ValueError:
        raise MmfreeError(f"{hwh.name}: REGMAP_VERSION {raw!r} is not a number") from None
    if version >> 16 != RM.REGMAP_VERSION_MAJOR:
        raise MmfreeError(f"{hwh.name}: the bitstream implements register map {version >> 16}.{version & 0xFFFF}, this "
                          f"driver speaks {RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}: rebuild the bitstream "
                          "(`mmfree build`) or install the matching mmfree")
    part = device = None
    for sysinfo in root.iter("SYSTEMINFO"):
        device = (sysinfo.get("DEVICE") or "").lower() or None
        if device:
            part = device + (sysinfo.get("PACKAGE") or "").lower() + (sysinfo.get("SPEEDGRADE") or "").lower()
    if board is not None and device is not None:
        dev = device[2:] if device.startswith("xc") else device
        if dev not in board.part.lower():
            raise MmfreeError(f"{hwh.name} was built for the device {device}, the {board.name} has {board.part}: "
                              f"build the overlay for this board (`mmfree build --board {board.name}`)")
    return HwhInfo(hwh, module.get("INSTANCE") or module.get("FULLNAME", "").lstrip("/"), version, params, part)


NO_BOARD = ("no PYNQ board here: pynq found no device (it needs a PYNQ board image with its XRT/pynq environment); "
            "run this on the board, or use `mmfree run --board sim` for the simulated board")


def pynq_device():
    """The active pynq device; MmfreeError (:data:`PYNQ_MISSING` / :data:`NO_BOARD`) when there is none."""
    pynq = _pynq()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            devices = pynq.Device.devices
            dev = pynq.Device.active_device if devices else None
        except Exception:
            dev = None
    if dev is None:
        raise MmfreeError(NO_BOARD)
    return dev


def load_overlay(bitstream, board=None, download: bool = True):
    """Check the ``.hwh`` (:func:`check_hwh`), bind the driver, ``pynq.Overlay(bitstream)``. Returns
    (overlay, the accelerator IP object, HwhInfo)."""
    info = check_hwh(bitstream, board)
    pynq = _pynq()
    pynq_device()
    register_pynq_driver()
    try:
        ov = pynq.Overlay(str(Path(bitstream).resolve()), download=download)
    except Exception as exc:
        raise MmfreeError(f"pynq could not load the overlay {bitstream}: {exc} (is this a PYNQ board with the "
                          "board's xrt/pynq environment sourced?)") from exc
    ip = getattr(ov, info.instance, None)
    if ip is None:
        vln = RM.VLNV.rpartition(":")[0]
        cands = [k for k, v in getattr(ov, "ip_dict", {}).items() if v.get("type", "").startswith(vln)]
        if not cands:
            raise MmfreeError(f"the overlay has no {RM.VLNV} IP (ip_dict: {', '.join(getattr(ov, 'ip_dict', {}))})")
        ip = getattr(ov, cands[0])
    return ov, ip, info


class AccelRunError(MmfreeError):
    """The accelerator reported ``STATUS.ERROR``; ``code``/``detail`` are ERROR_CODE's fields."""

    def __init__(self, register: int, pc: int = 0):
        self.code, self.detail, self.pc = register & 0xFF, register >> 8, pc
        super().__init__(f"the accelerator stopped with {RM.error_message(register)} (PC {pc:#x})")


@dataclass
class PassResult:
    tokens: list[int]
    argmax: np.ndarray          # [k] uint32
    logits: np.ndarray | None   # [k, V] int64 (ACT) when written
    states: np.ndarray          # [k, L, d] int64 (ACT): the state after each position
    cycles: int
    stalls: int
    rd_bytes: int
    wr_bytes: int
    state_addrs: list[int]      # DDR address of the state after each position


def _align(n: int, a: int = RM.ALIGN) -> int:
    return -(-n // a) * a


#: Tokens one GENERATE writes at most (the GEN_OUT area); :func:`generate_onchip` runs longer generations as
#: several GENERATEs, each going on from the last one's GEN_STATE and table.
GEN_OUT_TOKENS = 4096


def read_draft_engine(read32) -> dict | None:
    """The accelerator's draft engine from DRAFT_CONFIG / DRAFT_COUNTERS / DRAFT_VOCAB (``read32(offset)``):
    :func:`regmap.decode_draft_config`'s dict plus ``vocab`` (bigram rows), or None for a build without one
    (either register 0, as a register map 2.1 bitstream reads)."""
    vocab = int(read32(RM.OFFSET["DRAFT_VOCAB"]))
    eng = RM.decode_draft_config(int(read32(RM.OFFSET["DRAFT_CONFIG"])), int(read32(RM.OFFSET["DRAFT_COUNTERS"])))
    return dict(eng, vocab=vocab) if eng is not None and vocab else None


def draft_area_bytes(draft: dict) -> dict[str, int]:
    """Bytes of the on-chip loop's DDR areas for a draft engine (:func:`read_draft_engine`): TABLE_BASE (the
    trigram lines, ``2**S W 4 (1 + K)``), BIGRAM_BASE (``vocab`` rows of ``4 KB``) and GEN_OUT
    (:data:`GEN_OUT_TOKENS` uint32)."""
    return {"TABLE_BASE": (1 << draft["sets_log2"]) * draft["ways"] * 4 * (1 + draft["slots"]),
            "BIGRAM_BASE": draft["vocab"] * 4 * draft["bigram_slots"], "GEN_OUT": 4 * GEN_OUT_TOKENS}


def host_layout(compiled: Compiled, max_tokens: int, mem_window: tuple[int, int],
                draft: dict | None = None) -> tuple[dict[str, int], int]:
    """Where :class:`AccelHost` puts everything in the DDR window: the program, the host work buffers
    (TOKENS, PARENTS, ARGMAX_OUT, two state areas STATE_A/STATE_B, LOGITS), then the model image
    (``DATA_BASE``), and with a draft engine (``draft``: :func:`read_draft_engine`) the on-chip loop's
    TABLE_BASE, BIGRAM_BASE and GEN_OUT after it (so every other address is the same with or without an
    engine; the loop's second state area is STATE_A or STATE_B). Returns (name -> address, end address)."""
    dims = compiled.dims
    sizes = RM.buffer_sizes(dims.d, dims.layers, dims.vocab, max_tokens)
    lo, hi = mem_window
    layout = [("PROG_BASE", len(compiled.program)), ("TOKENS", sizes["TOKENS"]), ("PARENTS", sizes["PARENTS"]),
              ("ARGMAX_OUT", sizes["ARGMAX_OUT"]), ("STATE_A", sizes["STATE_OUT"]), ("STATE_B", sizes["STATE_OUT"]),
              ("LOGITS", sizes["LOGITS"]), ("DATA_BASE", len(compiled.image))]
    if draft is not None:
        layout += list(draft_area_bytes(draft).items())
    addr: dict[str, int] = {}
    pos = _align(lo)
    for name, n in layout:
        addr[name] = pos
        pos = _align(pos + n)
    if pos > hi:
        raise MmfreeError(f"the model and its buffers need {pos - lo} bytes of DDR, the window has {hi - lo}")
    return addr, pos


class AccelHost:
    """Owns the accelerator on one board for one compiled model (see the module docstring).

    ``board``: a :class:`Transport` or any object of that shape (kept as ``self.board``; every access goes
    through ``self.transport``, which makes the transport checks). ``timeout_s``: the longest one pass may
    take before it is aborted (SOFT_RESET) and reported. ``draft``: the bitstream's draft engine
    (:func:`read_draft_engine`; None without one), read at start-up with the other identity registers."""

    def __init__(self, board, compiled: Compiled, timeout_s: float = 60.0):
        self.board, self.c, self.timeout_s = board, compiled, timeout_s
        self.transport = t = as_transport(board)
        if t.read32(RM.OFFSET["ID"]) != RM.ID_MAGIC:
            raise MmfreeError("no mmfree accelerator answers at this CSR window (ID register mismatch): wrong "
                              "overlay, or the bitstream is not loaded")
        version = t.read32(RM.OFFSET["VERSION"])
        if version >> 16 != RM.REGMAP_VERSION_MAJOR:
            raise MmfreeError(f"the accelerator implements register map {version >> 16}.{version & 0xFFFF}, this "
                              f"host speaks {RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}")
        hwc = RM.decode_hw_config(t.read32(RM.OFFSET["HW_CONFIG"]))
        self.draft = read_draft_engine(t.read32)
        self.hw = HwConfig(bus_bytes=hwc["bus_bytes"], max_tokens=hwc["max_tokens"],
                           max_width=16 * (t.read32(RM.OFFSET["HW_LIMITS"]) & 0xFFFF),
                           weight_ports=hwc["weight_ports"], draft_vocab=self.draft["vocab"] if self.draft else 0)
        dims = compiled.dims
        self.d, self.L, self.V = dims.d, dims.layers, dims.vocab
        if max(dims.d, dims.inter) > self.hw.max_width:
            raise MmfreeError(f"the model is {max(dims.d, dims.inter)} wide; this bitstream's buffers hold "
                              f"{self.hw.max_width} (HW_LIMITS): build one with a larger max width")
        self.addr, self.mem_end = host_layout(compiled, self.hw.max_tokens, t.mem_window, self.draft)
        t.write_mem(self.addr["PROG_BASE"], compiled.program)
        t.write_mem(self.addr["DATA_BASE"], compiled.image)
        for name in ("PROG_BASE", "DATA_BASE", "TOKENS", "PARENTS", "LOGITS", "ARGMAX_OUT"):
            self.set_addr(name, self.addr[name])
        self.set_addr("MEM_LO", t.mem_window[0])
        self.set_addr("MEM_HI", t.mem_window[1])
        t.write32(RM.OFFSET["IRQ_STATUS"], 1)
        t.write32(RM.OFFSET["CONTROL"], RM.CTRL_IRQ_ENABLE)
        self.state_in = self.addr["STATE_A"]
        self.next_out = self.addr["STATE_B"]
        self.reset_state()

    def set_addr(self, name: str, value: int) -> None:
        self.transport.write32(RM.OFFSET[name + "_LO"], value & 0xFFFFFFFF)
        self.transport.write32(RM.OFFSET[name + "_HI"], value >> 32)

    def reg64(self, name: str) -> int:
        t = self.transport
        return t.read32(RM.OFFSET[name + "_LO"]) | (t.read32(RM.OFFSET[name + "_HI"]) << 32)

    def reset_state(self, h: np.ndarray | None = None) -> None:
        """Start a new sequence (zero state, or ``h`` int [L, d])."""
        h = np.zeros((self.L, self.d), dtype=np.int64) if h is None else np.asarray(h)
        if h.shape != (self.L, self.d):
            raise MmfreeError(f"a start state is [{self.L}, {self.d}], got {list(h.shape)}")
        self.state_in = self.addr["STATE_A"]
        self.next_out = self.addr["STATE_B"]
        self.transport.write_mem(self.state_in, h.astype("<i4").tobytes())

    def commit(self, result: PassResult, position: int) -> None:
        """Continue the next pass from the state after ``position`` of ``result`` (no copy)."""
        self.commit_state(result.state_addrs[position])

    def state_area(self, addr: int) -> int:
        """The state area (STATE_A or STATE_B) that holds the state at ``addr``."""
        area_a, area_b = self.addr["STATE_A"], self.addr["STATE_B"]
        return area_a if area_a <= addr < area_b else area_b

    def commit_state(self, addr: int) -> None:
        """Continue the next pass from the state at ``addr`` (a position of STATE_A or STATE_B); the next pass
        writes the other area."""
        self.state_in = addr
        self.next_out = self.addr["STATE_B"] if self.state_area(addr) == self.addr["STATE_A"] else self.addr["STATE_A"]

    def start_and_wait(self, control: int, timeout_s: float) -> None:
        """Write ``control`` (CTRL_START or CTRL_GENERATE; IRQ_ENABLE is added) to CONTROL and wait for the
        interrupt. Not finished within ``timeout_s``: aborted with SOFT_RESET and reported (MmfreeError);
        STATUS.ERROR: :class:`AccelRunError` (code, detail, PC)."""
        b = self.transport
        b.write32(RM.OFFSET["CONTROL"], control | RM.CTRL_IRQ_ENABLE)
        if not b.wait_irq(timeout_s):
            status, pc = b.read32(RM.OFFSET["STATUS"]), b.read32(RM.OFFSET["PC"])
            where = ""
            if control & RM.CTRL_GENERATE:
                where = (f", GEN_COUNT {b.read32(RM.OFFSET['GEN_COUNT'])}, GEN_PASSES "
                         f"{b.read32(RM.OFFSET['GEN_PASSES'])}")
            b.write32(RM.OFFSET["CONTROL"], RM.CTRL_SOFT_RESET | RM.CTRL_IRQ_ENABLE)     # abort: never left running
            b.write32(RM.OFFSET["IRQ_STATUS"], 1)
            raise MmfreeError(f"the accelerator did not finish within {timeout_s:g} s (STATUS {status:#x}, "
                              f"PC {pc:#x}{where}); it was aborted with SOFT_RESET. Raise the time-out for big models")
        b.write32(RM.OFFSET["IRQ_STATUS"], 1)
        status = b.read32(RM.OFFSET["STATUS"])
        if status & RM.STAT_ERROR:
            raise AccelRunError(b.read32(RM.OFFSET["ERROR_CODE"]), b.read32(RM.OFFSET["PC"]))
        if not status & RM.STAT_DONE:
            raise MmfreeError(f"interrupt without DONE or ERROR (STATUS {status:#x})")

    def run(self, tokens, parents=None, write_logits: bool = True, commit_last: bool = True,
            num_tokens: int | None = None, timeout_s: float | None = None) -> PassResult:
        """One pass of k = len(tokens) tokens (a chain, or a tree with ``parents``). The state after the last
        position becomes the next start state when ``commit_last``. ``num_tokens`` overrides the NUM_TOKENS
        register (tests of the hardware's checks). A pass that does not finish within ``timeout_s`` (default:
        the host's) is aborted with SOFT_RESET and reported; a pass the hardware stops with an error raises
        :class:`AccelRunError` (code, detail, PC)."""
        b, k = self.transport, len(tokens)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not 1 <= k <= self.hw.max_tokens:
            raise MmfreeError(f"a pass takes 1..{self.hw.max_tokens} tokens, got {k}")
        b.write_mem(self.addr["TOKENS"], struct.pack(f"<{k}I", *[int(t) & 0xFFFFFFFF for t in tokens]))
        flags = RM.FLAG_WRITE_LOGITS if write_logits else 0
        if parents is not None:
            if len(parents) != k:
                raise MmfreeError(f"{k} tokens need {k} parents, got {len(parents)}")
            b.write_mem(self.addr["PARENTS"], struct.pack(f"<{k}i", *[int(q) for q in parents]))
            flags |= RM.FLAG_TREE
        self.set_addr("STATE_IN", self.state_in)
        self.set_addr("STATE_OUT", self.next_out)
        b.write32(RM.OFFSET["NUM_TOKENS"], k if num_tokens is None else num_tokens)
        b.write32(RM.OFFSET["FLAGS"], flags)
        self.start_and_wait(RM.CTRL_START, timeout_s)
        stride = self.c.state_stride
        out = self.next_out
        raw = b.read_mem(out, k * stride)
        states = np.stack([np.frombuffer(raw[t * stride:t * stride + 4 * self.L * self.d], dtype="<i4")
                           .reshape(self.L, self.d) for t in range(k)]).astype(np.int64)
        argmax = np.frombuffer(b.read_mem(self.addr["ARGMAX_OUT"], 4 * k), dtype="<u4").astype(np.int64)
        logits = None
        if write_logits:
            logits = np.frombuffer(b.read_mem(self.addr["LOGITS"], 4 * k * self.V), dtype="<i4") \
                .reshape(k, self.V).astype(np.int64)
        res = PassResult([int(t) for t in tokens], argmax, logits, states,
                         self.reg64("CYCLES"), self.reg64("STALLS"), self.reg64("RD_BYTES"), self.reg64("WR_BYTES"),
                         [out + t * stride for t in range(k)])
        if commit_last:
            self.commit(res, k - 1)
        return res


# ======================================================================================================
# drafters, generation and scripted passes (any board)
# ======================================================================================================
def draft_tokens(context: list[int], n: int) -> list[int]:
    """Prompt-lookup drafts: the ``n`` tokens that followed the most recent earlier occurrence of the last
    token of ``context`` (padded by repeating the last token). Deterministic and model-free."""
    last = context[-1]
    for i in range(len(context) - 2, -1, -1):
        if context[i] == last:
            follow = context[i + 1:i + 1 + n]
            return (follow + [last] * n)[:n]
    return [last] * n


class Drafter:
    """Proposes the tokens of one verification pass. ``draft(context, k)`` returns ``(tokens, parents)``:
    ``tokens[0] == context[-1]`` (the last committed token, not yet fed), at most k tokens, ``parents``
    None for a chain or one parent index per token (``-1`` for the root, else ``< own index``).
    ``start(prompt)`` and ``commit(context, token)`` let an adaptive drafter learn what is committed."""

    name = "drafter"

    def start(self, prompt: list[int]) -> None:
        pass

    def draft(self, context: list[int], k: int) -> tuple[list[int], list[int] | None]:
        raise NotImplementedError

    def commit(self, context: list[int], token: int) -> None:
        pass


class PromptLookupDrafter(Drafter):
    """The default: the last token plus the k-1 tokens that followed its previous occurrence
    (:func:`draft_tokens`), a chain."""

    name = "lookup"

    def draft(self, context, k):
        return [context[-1]] + draft_tokens(context, k - 1), None


class TrigramDrafter(Drafter):
    """Draft trees from the trigram drafter :mod:`mmfree.pymodel.trigram` (docs/speculative.md): the tree
    template of ``max_nodes = k - 1`` draft nodes and depth ``k - 1`` (or ``template``), expanded from the
    table; with ``adapt`` (default) a private copy of the table learns the prompt and every committed token,
    exactly as :func:`mmfree.pymodel.speculative.speculative_generate` does."""

    name = "trigram"

    def __init__(self, table, adapt: bool = True, template=None):
        from mmfree.pymodel import trigram as TG

        if not isinstance(table, TG.TrigramTable):
            table = TG.TrigramTable.load(table)
        self.TG, self.table, self.adapt, self.template = TG, table.copy(), adapt, template
        self._templates: dict[int, tuple] = {}

    @classmethod
    def for_model(cls, model, table=None, model_dir=None, log=None, **kw) -> "TrigramDrafter":
        """The model's own table (:func:`mmfree.pymodel.speculative.resolve_table`; built and cached on first
        use) or ``table`` (a TrigramTable or file), checked against the model's vocabulary and tokenizer."""
        from mmfree.pymodel.speculative import resolve_table

        t, _, notices = resolve_table(model, table, model_dir, log=log)
        for n in notices:
            (log or (lambda m: print(f"mmfree: {m}", file=sys.stderr)))(n)
        return cls(t, **kw)

    def start(self, prompt):
        if self.adapt:
            self.table.observe(list(prompt))

    def draft(self, context, k):
        if self.table.is_empty or k <= 1:
            return [context[-1]], None
        template = self.template
        if template is None:
            template = self._templates.get(k) or self._templates.setdefault(k, self.TG.make_template(k - 1, k - 1))
        toks, parents = self.TG.draft_tree(self.table, context[-2] if len(context) >= 2 else None, context[-1],
                                           template)
        toks, parents = toks[:k], parents[:k]
        return toks, (None if parents == list(range(-1, len(toks) - 1)) else parents)

    def commit(self, context, token):
        if self.adapt:
            self.table.update(context[-2] if len(context) >= 2 else None, context[-1], token)

    def check_onchip(self, host: "AccelHost") -> None:
        """Refuse what the on-chip loop cannot do as this drafter would: it always adapts the table and drafts
        the tree ``make_template(K - 1, K - 1)`` of the build's K."""
        K = host.hw.max_tokens
        if not self.adapt:
            raise MmfreeError("the on-chip draft-verify loop always adapts the table; draft on the host (without "
                              "--onchip) to keep it fixed")
        if self.template is not None and tuple(map(tuple, self.template)) != self.TG.make_template(K - 1, K - 1):
            raise MmfreeError(f"the on-chip loop drafts the tree make_template({K - 1}, {K - 1}) of this bitstream "
                              "(K = max tokens per pass); draft on the host (without --onchip) for another template")


def _record(res: PassResult, commit: int, prefill: bool, emitted: int, **extra) -> dict:
    rec = {"tokens": res.tokens, "commit": commit, "prefill": prefill, "emitted": emitted, "cycles": res.cycles,
           "stalls": res.stalls, "rd_bytes": res.rd_bytes, "wr_bytes": res.wr_bytes,
           "argmax": res.argmax, "states": res.states, "logits": res.logits}
    rec.update(extra)
    return rec


def _check_request(host: AccelHost, prompt, n_tokens: int, k: int) -> list[int]:
    """The prompt as ints; MmfreeError for an empty prompt, ``n_tokens < 1`` or k outside the bitstream's
    1..max tokens per pass."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise MmfreeError("the prompt is empty; give at least one token")
    if n_tokens < 1:
        raise MmfreeError(f"n_tokens must be >= 1, got {n_tokens}")
    if not 1 <= k <= host.hw.max_tokens:
        raise MmfreeError(f"k must be in 1..{host.hw.max_tokens} (this bitstream's tokens per pass), got {k}")
    return prompt


def _prefill(host: AccelHost, prompt: list[int], k: int, write_logits: bool) -> tuple[list[int], list[dict]]:
    """A new sequence: the prompt in passes of up to k tokens. Returns ([the first token], the pass records,
    the last one marked as emitting it)."""
    host.reset_state()
    passes: list[dict] = []
    res = None
    for i in range(0, len(prompt), k):
        chunk = prompt[i:i + k]
        res = host.run(chunk, write_logits=write_logits)
        passes.append(_record(res, len(chunk) - 1, True, 0))
    passes[-1]["emitted"] = 1
    return [int(res.argmax[-1])], passes


def generate(host: AccelHost, prompt: list[int], n_tokens: int, k: int = 1, write_logits: bool = True,
             progress=None, drafter: Drafter | None = None, onchip: bool = False) -> tuple[list[int], list[dict]]:
    """Greedy generation on the accelerator: the prompt in passes of up to k tokens, then decode passes.

    With ``k == 1`` every decode pass feeds the last token. With ``k > 1`` a pass feeds the last token and
    up to k-1 drafts from ``drafter`` (default :class:`PromptLookupDrafter`: a chain of prompt-lookup
    drafts, :func:`draft_tokens`; a :class:`TrigramDrafter` drafts a tree, run with FLAGS.TREE). From the
    root, the model's own next token (the argmax) is emitted and, when it equals a drafted child, that child
    is accepted and the walk goes on from it; the state after the last accepted node is committed without a
    copy (:meth:`AccelHost.commit`). The output equals plain greedy decoding. Returns (tokens, passes); each
    pass record holds tokens, parents (trees), commit, prefill, emitted, counters and the arrays read back.

    ``onchip``: the draft-verify loop runs on the accelerator instead (:func:`generate_onchip` with the
    :class:`TrigramDrafter`'s table; the prompt still goes in passes of up to k tokens).
    """
    if onchip:
        if not isinstance(drafter, TrigramDrafter):
            raise MmfreeError("the on-chip loop drafts with the accelerator's trigram engine: give a TrigramDrafter "
                              f"(draft='trigram'), not {type(drafter).__name__ if drafter else 'no drafter'}")
        drafter.check_onchip(host)
        return generate_onchip(host, prompt, n_tokens, drafter.table, write_logits=write_logits, progress=progress,
                               k=k)
    prompt = _check_request(host, prompt, n_tokens, k)
    drafter = drafter if drafter is not None else PromptLookupDrafter()
    drafter.start(prompt)
    seq = list(prompt)
    out, passes = _prefill(host, prompt, k, write_logits)
    drafter.commit(seq, out[-1])
    seq.append(out[-1])
    if progress:
        progress(out[-1])
    while len(out) < n_tokens:
        if k == 1:
            toks, parents = [out[-1]], None
        else:
            toks, parents = drafter.draft(seq, k)
            if not toks or toks[0] != out[-1] or len(toks) > k:
                raise MmfreeError(f"the {drafter.name} drafter returned {toks}: it must start with the last token "
                                  f"{out[-1]} and hold at most {k} tokens")
        res = host.run(toks, parents=parents, write_logits=write_logits, commit_last=False)
        pa = parents if parents is not None else list(range(-1, len(toks) - 1))
        node, new = 0, []
        while True:
            tok = int(res.argmax[node])
            new.append(tok)
            kids = [j for j in range(node + 1, len(toks)) if pa[j] == node and toks[j] == tok]
            if not kids:
                break
            node = kids[0]
        host.commit(res, node)
        new = new[:n_tokens - len(out)]
        for t in new:
            drafter.commit(seq, t)
            seq.append(t)
        out += new
        extra = {"parents": list(parents)} if parents is not None else {}
        passes.append(_record(res, node, False, len(new), **extra))
        if progress:
            for t in new:
                progress(t)
    return out, passes


NO_DRAFT_ENGINE = ("this bitstream has no draft engine (DRAFT_VOCAB = 0): rebuild with draft_vocab, or draft on the "
                   "host without --onchip")


def check_draft_table(host: AccelHost, table) -> None:
    """Refuse (MmfreeError naming the problem and the fix) a :class:`~mmfree.pymodel.trigram.TrigramTable` the
    bitstream's draft engine cannot run: no engine (:data:`NO_DRAFT_ENGINE`), another geometry or other counter
    rules than DRAFT_CONFIG / DRAFT_COUNTERS (sets_log2, ways, slots, bigram_slots, inc, cmax), a vocabulary
    larger than DRAFT_VOCAB or smaller than the model's (the table must hold every token the model emits)."""
    eng = host.draft
    if eng is None:
        raise MmfreeError(NO_DRAFT_ENGINE)
    fields = ("sets_log2", "ways", "slots", "bigram_slots", "inc", "cmax")
    diff = [f for f in fields if getattr(table.params, f) != eng[f]]
    if diff:
        flags = " ".join(f"--{f.replace('_', '-')} {eng[f]}" for f in fields if f != "cmax")
        raise MmfreeError(f"the table was built with {', '.join(f'{f}={getattr(table.params, f)}' for f in diff)}; "
                          f"this bitstream's draft engine uses {', '.join(f'{f}={eng[f]}' for f in diff)}: rebuild "
                          f"the table with `mmfree trigram build {flags}`"
                          + (f" and cmax={eng['cmax']}" if "cmax" in diff else ""))
    if host.V > eng["vocab"]:
        raise MmfreeError(f"the model has {host.V} tokens, this bitstream's draft engine holds DRAFT_VOCAB = "
                          f"{eng['vocab']}: rebuild it with draft_vocab >= {host.V}, or draft on the host without "
                          "--onchip")
    if table.vocab_size > eng["vocab"]:
        raise MmfreeError(f"the table was built for {table.vocab_size} tokens, this bitstream's draft engine holds "
                          f"DRAFT_VOCAB = {eng['vocab']}: build the table for this model (`mmfree trigram build "
                          "--model MODEL --out FILE`)")
    if table.vocab_size < host.V:
        raise MmfreeError(f"the table was built for {table.vocab_size} tokens, the model has {host.V}: build the "
                          "table for this model (`mmfree trigram build --model MODEL --out FILE`)")


def generate_onchip(host: AccelHost, prompt: list[int], n_tokens: int, table, eos_id: int | None = None,
                    write_logits: bool = False, progress=None, k: int | None = None) -> tuple[list[int], list[dict]]:
    """Greedy generation with the draft-verify loop on the accelerator (``CONTROL.GENERATE``, docs/speculative.md
    "The on-chip draft-verify loop").

    The prompt goes in host passes of up to ``k`` tokens (default: the build's max tokens) exactly as
    :func:`generate` does; the first token is the last prefill pass's argmax. ``table`` (a
    :class:`~mmfree.pymodel.trigram.TrigramTable`: the host's copy, updated in place) learns the prompt and the
    first token (``observe(prompt)``, ``update(prev, last, first)``, as ``speculative_generate`` does before its
    first draft), is checked against the engine (:func:`check_draft_table`, before any pass) and copied to DDR
    (the trigram lines as they are, the bigram rows padded to DRAFT_VOCAB); one GENERATE emits the rest (several
    GENERATEs of up to :data:`GEN_OUT_TOKENS` tokens for longer runs, each from the last one's GEN_STATE). Then the
    table the engine adapted is read back into ``table`` and GEN_STATE becomes the host's STATE_IN, so host passes
    or another call go on from there.

    Stops after ``n_tokens`` tokens, or after ``eos_id`` (emitted, GEN_EOS). Returns (tokens, records): the
    prefill passes recorded as :func:`generate` records them, then one record per GENERATE: ``onchip`` True,
    ``tokens`` [] (the host fed nothing), ``emitted_tokens``, ``emitted`` = ``count`` (GEN_COUNT), ``gen_passes``,
    ``gen_nodes`` (tree nodes fed, roots included), ``gen_cycles`` (= ``cycles``), ``state`` (GEN_STATE), and
    ``stalls``/``rd_bytes``/``wr_bytes`` of its last pass only (the hardware keeps no sums over a GENERATE). The
    tokens equal plain greedy decoding; with one GENERATE, ``gen_passes`` equals ``speculative_generate``'s
    ``verify_steps`` (``max_draft = max_nodes = K - 1``) and the table read back its adapted table.

    Errors: MmfreeError for a bitstream without a draft engine or a table it cannot run (before anything runs);
    :class:`AccelRunError` when the accelerator stops with an error (the host's table is then not read back); a
    time-out (``host.timeout_s`` per token asked for) aborts the loop with SOFT_RESET (MmfreeError)."""
    k = host.hw.max_tokens if k is None else k
    prompt = _check_request(host, prompt, n_tokens, k)
    if eos_id is not None and not 0 <= eos_id < host.V:
        raise MmfreeError(f"eos_id {eos_id} is outside the vocabulary [0, {host.V})")
    check_draft_table(host, table)
    eng, b, addr = host.draft, host.transport, host.addr
    out, passes = _prefill(host, prompt, k, write_logits)
    table.observe(prompt)
    table.update(prompt[-2] if len(prompt) >= 2 else None, prompt[-1], out[0])
    if progress:
        progress(out[0])
    if n_tokens == 1 or out[0] == eos_id:
        return out, passes
    bigram = np.zeros((eng["vocab"], eng["bigram_slots"]), dtype="<u4")
    bigram[:table.vocab_size] = table.bigram
    b.write_mem(addr["TABLE_BASE"], table.trig.astype("<u4").tobytes())
    b.write_mem(addr["BIGRAM_BASE"], bigram.tobytes())
    for name in ("TABLE_BASE", "BIGRAM_BASE", "GEN_OUT"):
        host.set_addr(name, addr[name])
    b.write32(RM.OFFSET["GEN_EOS"], (1 << 31 | eos_id) if eos_id is not None else 0)
    b.write32(RM.OFFSET["STATE_STRIDE"], host.c.state_stride)
    b.write32(RM.OFFSET["FLAGS"], RM.FLAG_WRITE_LOGITS if write_logits else 0)
    seq = prompt + out
    stride, K = host.c.state_stride, host.hw.max_tokens
    positions = {area + j * stride for area in (addr["STATE_A"], addr["STATE_B"]) for j in range(K)}
    while len(out) < n_tokens and out[-1] != eos_id:
        n = min(n_tokens - len(out), GEN_OUT_TOKENS)
        host.set_addr("STATE_IN", host.state_in)
        host.set_addr("STATE_OUT", host.next_out)                     # the first pass's; STATE_IN is not in it
        host.set_addr("STATE_ALT", host.state_area(host.state_in))
        b.write32(RM.OFFSET["GEN_N"], n)
        b.write32(RM.OFFSET["GEN_CONTEXT"], seq[-2] << 16 | seq[-1])
        host.start_and_wait(RM.CTRL_GENERATE, host.timeout_s * n)
        count, state = b.read32(RM.OFFSET["GEN_COUNT"]), host.reg64("GEN_STATE")
        new = [int(t) for t in np.frombuffer(b.read_mem(addr["GEN_OUT"], 4 * count), dtype="<u4")] \
            if 1 <= count <= n else []
        if not new or not (count == n or new[-1] == eos_id) or eos_id in new[:-1] or state not in positions:
            raise MmfreeError(f"GENERATE finished inconsistently: GEN_COUNT {count} for GEN_N {n} (tokens {new[:8]}, "
                              f"EOS {eos_id}), GEN_STATE {state:#x} (a position of STATE_A or STATE_B expected); "
                              "the bitstream does not keep the on-chip loop's contract (docs/speculative.md)")
        host.commit_state(state)
        passes.append({"onchip": True, "tokens": [], "emitted_tokens": new, "prefill": False, "emitted": count,
                       "count": count, "gen_passes": b.read32(RM.OFFSET["GEN_PASSES"]),
                       "gen_nodes": b.read32(RM.OFFSET["GEN_NODES"]), "gen_cycles": host.reg64("GEN_CYCLES"),
                       "cycles": host.reg64("GEN_CYCLES"), "stalls": host.reg64("STALLS"),
                       "rd_bytes": host.reg64("RD_BYTES"), "wr_bytes": host.reg64("WR_BYTES"), "state": state})
        out += new
        seq += new
        if progress:
            for t in new:
                progress(t)
    trig = np.frombuffer(b.read_mem(addr["TABLE_BASE"], table.trig.nbytes), dtype="<u4")
    table.trig[...] = trig.reshape(table.trig.shape)
    bigram = np.frombuffer(b.read_mem(addr["BIGRAM_BASE"], bigram.nbytes), dtype="<u4").reshape(bigram.shape)
    table.bigram[...] = bigram[:table.vocab_size]
    return out, passes


def run_script(host: AccelHost, steps: list[dict]) -> list[dict]:
    """Run scripted passes (tests): each step is ``{"tokens", "parents"?, "h0"? (start state [L, d]),
    "commit"? (position, default the last), "write_logits"?, "regs"? (CSR overrides for this step, e.g. a
    bad base address), "num_tokens"? (NUM_TOKENS override), "program"? (hex of a patched program written
    over the real one for this step)}``. A step that makes the accelerator report an error records
    ``{"error": code, "detail": detail, "message": text}``; the overrides are undone after every step."""
    out = []
    t = host.transport
    for st in steps:
        if "program" in st:
            t.write_mem(host.addr["PROG_BASE"], bytes.fromhex(st["program"]))
        if "h0" in st:
            host.reset_state(np.asarray(st["h0"], dtype=np.int64))
        saved = {}
        for name, v in st.get("regs", {}).items():
            if name in RM.ADDRESS_REGS:
                saved[name] = host.reg64(name)
                host.set_addr(name, int(v))
            else:
                saved[name] = t.read32(RM.OFFSET[name])
                t.write32(RM.OFFSET[name], int(v))
        try:
            res = host.run(st["tokens"], parents=st.get("parents"), write_logits=st.get("write_logits", True),
                           commit_last=False, num_tokens=st.get("num_tokens"))
        except AccelRunError as exc:
            out.append({"error": exc.code, "detail": exc.detail, "message": str(exc), "tokens": list(st["tokens"])})
        else:
            commit = st.get("commit", len(st["tokens"]) - 1)
            host.commit(res, commit)
            out.append(_record(res, commit, False, 0, parents=st.get("parents")))
        for name, v in saved.items():
            if name in RM.ADDRESS_REGS:
                host.set_addr(name, v)
            else:
                t.write32(RM.OFFSET[name], v)
        if "program" in st:
            t.write_mem(host.addr["PROG_BASE"], host.c.program)
    return out


# ======================================================================================================
# the high-level object
# ======================================================================================================
def open_model(model) -> tuple[Compiled, object | None, str | None]:
    """(compiled program + image, the IntModel or None, tokenizer directory or None) of ``model``:
    ``"default"``, an export or checkpoint directory, an ``IntModel``, a ``Compiled``, or a directory written
    by :meth:`Compiled.save` (``compiled.json``)."""
    from mmfree.rtl.compiler import compile_model

    if isinstance(model, tuple) and len(model) == 3 and isinstance(model[0], Compiled):
        return model                      # already opened
    if isinstance(model, Compiled):
        return model, None, None
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if str(model) != "default" and (p / "compiled.json").is_file():
            return Compiled.load(p), None, None
        from mmfree.pymodel.intmodel import open_int_model

        if str(model) != "default" and not p.exists():
            raise MmfreeError(f"model {model!r} not found: give 'default', an `mmfree export` directory or a "
                              "checkpoint directory")
        im, tok_dir = open_int_model(str(model))
        return compile_model(im), im, tok_dir
    if hasattr(model, "dims") and hasattr(model, "forward"):
        path = getattr(model, "path", None)
        return compile_model(model), model, str(path) if path is not None else None
    raise MmfreeError(f"cannot run a {type(model).__name__} on the accelerator: give 'default', a model directory, "
                      "an IntModel or a Compiled")


def ddr_needed(compiled: Compiled, max_tokens: int, draft: dict | None = None) -> int:
    """Bytes of DDR :class:`AccelHost` needs for ``compiled`` (program, host buffers, image, and the on-chip
    loop's areas for a draft engine ``draft``: :func:`read_draft_engine`), 64-byte aligned."""
    _, end = host_layout(compiled, max_tokens, (0, 1 << 62), draft)
    return end


def check_fits(compiled: Compiled, board, max_tokens: int = 4) -> int:
    """Refuse a model whose program, buffers and image exceed the board's usable DDR (``Board.ddr_usable_bytes``:
    DDR size less what the OS keeps) before anything is allocated. Returns the bytes needed."""
    need = ddr_needed(compiled, max_tokens)
    have = board.ddr_usable_bytes
    if need > have:
        raise MmfreeError(f"the model needs {need / 2**20:.1f} MiB of DDR (image {len(compiled.image) / 2**20:.1f} MiB "
                          f"+ buffers), the {board.name} leaves {have / 2**20:.0f} MiB to the accelerator "
                          f"({board.ddr['size_mb']} MB DDR less {board.ddr.get('os_reserved_mb', 0)} MB for the OS): "
                          "use a smaller model or a board with more DDR")
    return need


@dataclass
class Generation:
    """What :meth:`Accelerator.generate` returns."""

    prompt: list[int]
    tokens: list[int]
    text: str | None
    passes: list[dict] = field(repr=False)
    draft: str | None
    k: int
    seconds: float

    @property
    def counters(self) -> dict:
        """Sums over the passes: ``cycles``, ``stalls``, ``rd_bytes``, ``wr_bytes``, ``passes``,
        ``prefill_passes``, ``decode_passes``, ``verify_steps`` (decode passes that carried drafts),
        ``mean_accepted`` (tokens emitted per decode pass; 1.0 without drafts), ``prefill_cycles`` and
        ``decode_cycles`` (``cycles`` split by pass kind).

        With the on-chip loop (:func:`generate_onchip` records) its passes count as decode passes and as
        verification steps (every one carries a tree, as ``speculative_generate`` counts them), its GEN_CYCLES as
        decode cycles, and these are added: ``onchip`` True, ``gen_count``, ``gen_passes``, ``gen_nodes`` (roots
        included), ``gen_cycles``, ``mean_draft_nodes`` (draft nodes per pass, roots not counted) and
        ``partial_counters``: ``stalls``, ``rd_bytes`` and ``wr_bytes`` hold only each GENERATE's last pass."""
        dec = [p for p in self.passes if not p["prefill"]]
        gen = [p for p in dec if p.get("onchip")]
        host_dec = [p for p in dec if not p.get("onchip")]
        gen_passes = sum(p["gen_passes"] for p in gen)
        n_dec = len(host_dec) + gen_passes
        verify = len([p for p in host_dec if len(p["tokens"]) > 1]) + gen_passes
        emitted = sum(p["emitted"] for p in dec)
        out = {"cycles": sum(p["cycles"] for p in self.passes), "stalls": sum(p["stalls"] for p in self.passes),
               "rd_bytes": sum(p["rd_bytes"] for p in self.passes),
               "wr_bytes": sum(p["wr_bytes"] for p in self.passes),
               "passes": len(self.passes) - len(dec) + n_dec, "prefill_passes": len(self.passes) - len(dec),
               "decode_passes": n_dec, "verify_steps": verify, "mean_accepted": emitted / n_dec if n_dec else 0.0,
               "prefill_cycles": sum(p["cycles"] for p in self.passes if p["prefill"]),
               "decode_cycles": sum(p["cycles"] for p in dec)}
        if gen:
            nodes = sum(p["gen_nodes"] for p in gen)
            out.update(onchip=True, gen_count=sum(p["count"] for p in gen), gen_passes=gen_passes, gen_nodes=nodes,
                       gen_cycles=sum(p["gen_cycles"] for p in gen),
                       mean_draft_nodes=(nodes - gen_passes) / gen_passes if gen_passes else 0.0,
                       partial_counters="stalls, rd_bytes and wr_bytes count only the last pass of each on-chip "
                                        "GENERATE (the hardware keeps no sums over the loop)")
        return out

    def as_dict(self) -> dict:
        return dict({"prompt_ids": self.prompt, "tokens": self.tokens, "text": self.text, "draft": self.draft,
                     "k": self.k, "wall_s": self.seconds}, **self.counters)


class Accelerator:
    """The accelerator with a model loaded: text or tokens in, greedy tokens out, counters.

    ``transport``: a :class:`Transport` (or any board of that shape); ``model``: see :func:`open_model`;
    ``board``: a board name or :class:`~mmfree.boards.boardfile.Board`, whose DDR the model must fit;
    ``timeout_s``: the longest one pass may take; ``write_logits``: also write every pass's logits to DDR
    (for comparisons; the argmax is always written). ``tokenizer``: a directory with ``tokenizer.json`` (by
    default the model's). On a PYNQ board use :meth:`from_bitstream` (or ``overlay.mmfree_accel_0.accelerator()``).
    """

    def __init__(self, transport, model="default", board=None, timeout_s: float = 60.0, write_logits: bool = False,
                 tokenizer=None):
        self.compiled, self.model, tok_dir = open_model(model)
        if board is not None:
            from mmfree.boards.boardfile import load_board

            self.board = load_board(board) if isinstance(board, str) else board
            check_fits(self.compiled, self.board)
        else:
            self.board = None
        self.transport = as_transport(transport)
        self.host = AccelHost(self.transport, self.compiled, timeout_s=timeout_s)
        self.write_logits = write_logits
        self.tokenizer_dir = tokenizer if tokenizer is not None else tok_dir
        self._tok = None
        self.last: Generation | None = None

    # ---- opening on a PYNQ board --------------------------------------------------------------------------
    @classmethod
    def on_ip(cls, ip, model="default", board=None, timeout_s: float = 60.0, use_interrupt: bool = True,
              **kw) -> "Accelerator":
        """On an overlay's accelerator IP: checks the model fits ``board`` and allocates exactly the DDR it needs
        (one ``pynq.allocate`` buffer) before writing anything."""
        opened = open_model(model)
        compiled, im, tok_dir = opened
        if board is not None:
            from mmfree.boards.boardfile import load_board

            board = load_board(board) if isinstance(board, str) else board
            check_fits(compiled, board)
        max_tokens = RM.decode_hw_config(ip.read(RM.OFFSET["HW_CONFIG"]))["max_tokens"] or 1
        need = ddr_needed(compiled, max_tokens, read_draft_engine(ip.read))
        transport = PynqTransport(ip, need, use_interrupt=use_interrupt)
        try:
            acc = cls(transport, opened, board=board, timeout_s=timeout_s, tokenizer=kw.pop("tokenizer", tok_dir),
                      **kw)
        except BaseException:
            transport.close()
            raise
        return acc

    @classmethod
    def from_bitstream(cls, bitstream, model="default", board=None, download: bool = True, **kw) -> "Accelerator":
        """Check ``X.hwh`` next to ``X.bit`` (:func:`check_hwh`), refuse a model larger than the board's DDR, load
        the overlay with pynq, and open the accelerator on it."""
        from mmfree.boards.boardfile import load_board

        b = load_board(board) if isinstance(board, str) else board
        model = open_model(model)                      # once: compiling a large model takes a while
        if b is not None:
            check_fits(model[0], b)                    # before the overlay is touched
        ov, ip, _ = load_overlay(bitstream, b, download=download)
        acc = cls.on_ip(ip, model, board=b, **kw)
        acc.overlay = ov
        return acc

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- tokens and text ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.compiled.dims.vocab

    @property
    def tokenizer(self):
        if self._tok is None:
            if self.tokenizer_dir is None:
                raise MmfreeError("this model has no tokenizer: give token ids")
            from mmfree.pymodel.tokenizer import load_tokenizer

            try:
                self._tok = load_tokenizer(self.tokenizer_dir)
            except Exception as exc:
                raise MmfreeError(f"the model has no usable tokenizer ({exc}); give token ids") from None
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode_text(self, ids) -> str | None:
        try:
            return self.tokenizer.decode(list(ids))
        except MmfreeError:
            return None

    def check_prompt(self, prompt) -> list[int]:
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise MmfreeError("the prompt is empty (or encodes to no tokens); give text or at least one token id")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise MmfreeError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    # ---- running ----------------------------------------------------------------------------------------------
    def prefill(self, prompt) -> int:
        """Start a new sequence with ``prompt`` (text or ids), k tokens per pass; returns the first greedy token.
        The state after the prompt is committed: :meth:`step` continues from it."""
        ids = self.check_prompt(prompt)
        self.host.reset_state()
        k = self.host.hw.max_tokens
        res = None
        for i in range(0, len(ids), k):
            res = self.host.run(ids[i:i + k], write_logits=self.write_logits)
        return int(res.argmax[-1])

    def step(self, token: int) -> int:
        """Feed one token (a plain decode pass); returns the next greedy token."""
        if not 0 <= int(token) < self.vocab_size:
            raise MmfreeError(f"token {token} is outside the vocabulary [0, {self.vocab_size})")
        return int(self.host.run([int(token)], write_logits=self.write_logits).argmax[0])

    def verify(self, tokens, parents=None) -> PassResult:
        """One speculative verification pass of a chain or tree (``parents``) of up to ``max_tokens`` tokens from
        the committed state, nothing committed; :meth:`commit` a node afterwards."""
        toks = [int(t) for t in tokens]
        bad = [t for t in toks if not 0 <= t < self.vocab_size]
        if bad:
            raise MmfreeError(f"token ids {bad[:8]} are outside the vocabulary [0, {self.vocab_size})")
        return self.host.run(toks, parents=parents, write_logits=self.write_logits, commit_last=False)

    def commit(self, result: PassResult, node: int) -> None:
        self.host.commit(result, node)

    def drafter(self, draft: str | None, table=None) -> Drafter | None:
        """A drafter by name: None (no drafts), "lookup" (prompt lookup), "trigram" (the model's table, or
        ``table``)."""
        if draft in (None, "none"):
            return None
        if draft == "lookup":
            return PromptLookupDrafter()
        if draft == "trigram":
            if table is not None and self.model is None:
                return TrigramDrafter(table)
            if self.model is None:
                raise MmfreeError("trigram drafts need the model (its vocabulary and tokenizer) or a table file")
            return TrigramDrafter.for_model(self.model, table, self.tokenizer_dir)
        raise MmfreeError(f"unknown drafter {draft!r}: choose lookup or trigram")

    def generate(self, prompt, n_tokens: int, draft: str | Drafter | None = None, k: int | None = None,
                 table=None, progress=None, onchip: bool = False) -> Generation:
        """Generate ``n_tokens`` greedily after ``prompt`` (text or ids). ``draft``: None (one token per decode
        pass), "lookup" or "trigram" (or a :class:`Drafter`), verified ``k`` tokens per pass (default: the
        bitstream's max with drafts, else 1). The tokens are those of plain greedy decoding either way.

        ``onchip``: the accelerator runs the draft-verify loop itself (:func:`generate_onchip`; a bitstream with
        a draft engine; ``draft`` "trigram" or None, or a :class:`TrigramDrafter`, whose table it adapts); ``k``
        then only sizes the prefill passes, the loop's passes hold up to the build's max tokens."""
        ids = self.check_prompt(prompt)
        if onchip and draft is None:
            draft = "trigram"
        if onchip and self.host.draft is None:             # before the table is built or loaded
            raise MmfreeError(NO_DRAFT_ENGINE)
        dr = draft if isinstance(draft, Drafter) else self.drafter(draft, table)
        if k is None:
            k = self.host.hw.max_tokens if dr is not None else 1
        if dr is None and k > 1:
            dr = PromptLookupDrafter()
        t0 = time.perf_counter()
        toks, passes = generate(self.host, ids, n_tokens, k=k, write_logits=self.write_logits, progress=progress,
                                drafter=dr, onchip=onchip)
        text = self.decode_text(toks) if self.tokenizer_dir is not None else None
        self.last = Generation(ids, toks, text, passes, dr.name if dr is not None else None, k,
                               time.perf_counter() - t0)
        return self.last

    @property
    def hw(self) -> HwConfig:
        return self.host.hw


# ======================================================================================================
# the same driver on the simulated board (RTL under Verilator + cocotb)
# ======================================================================================================
def greedy_reference(im, prompt: list[int], n_tokens: int) -> list[int]:
    """Plain greedy decoding on the integer reference (the oracle): prompt in one pass, one token per step."""
    state, logits = im.prefill(im.initial_state(), prompt)
    out = []
    while True:
        out.append(int(np.argmax(logits)))       # lowest id on ties, as the hardware's argmax
        if len(out) >= n_tokens:
            return out
        state, logits = im.step(state, out[-1])


def run_sim(model="default", prompt="def ", n_tokens: int = 8, draft: str | None = None, k: int | None = None,
            table=None, inject: list[dict] | None = None, write_logits: bool = True, timeout_s: float = 60.0,
            hw: HwConfig | None = None, progress=None, workdir=None, onchip: bool = False) -> dict:
    """Run :class:`Accelerator` on the simulated board (one simulator process: :func:`mmfree.sim.accel.run_job`
    with the bench's "run" job) and check it against the integer reference.

    Returns the dict ``mmfree run --board sim --json`` prints: ``tokens``, ``text``, the counters
    (:attr:`Generation.counters`), ``bit_exact`` (every pass's argmax, states and, when written, logits equal
    ``IntModel.forward`` on the same tokens, parents and start state, AND the tokens equal plain greedy decoding
    on IntModel), ``problems``, ``reference_tokens``, ``inject`` (results of the injected steps), ``wall_s``.

    ``onchip`` (with ``draft="trigram"``; the build needs ``hw.draft_vocab``): the draft-verify loop runs on the
    accelerator (CONTROL.GENERATE). Its passes are never read back, so only the prefill passes are replayed on
    IntModel (``replayed`` says so); ``bit_exact`` then also needs the tokens, GEN_PASSES and the table read back
    to equal ``speculative_generate(max_draft = max_nodes = K - 1)`` from the same starting table (its tokens,
    ``verify_steps`` -> ``reference_verify_steps``, and its adapted table: the starting table after
    ``observe(prompt + tokens)``, the updates it makes in that order)."""
    import tempfile

    from mmfree.sim.accel import (DEFAULT_HW, check_prompt_ids, check_width, passes_from_result,
                                  replay_and_compare, run_job)
    from mmfree.sim.runner import stdout_to_stderr

    hw = hw or DEFAULT_HW
    compiled, im, tok_dir = open_model(model)
    if im is None:
        raise MmfreeError("the simulated board compares with the integer reference: give 'default', an export or a "
                          "checkpoint directory (not a compiled directory)")
    acc_tok = None
    if isinstance(prompt, str):
        from mmfree.pymodel.tokenizer import load_tokenizer

        if tok_dir is None:
            raise MmfreeError("the model has no tokenizer: give token ids")
        acc_tok = load_tokenizer(tok_dir)
        ids = list(acc_tok.encode(prompt))
    else:
        ids = [int(t) for t in prompt]
    check_prompt_ids(ids, compiled.dims.vocab)
    if n_tokens < 1:
        raise MmfreeError(f"--tokens must be >= 1, got {n_tokens}")
    if draft not in (None, "none", "lookup", "trigram"):
        raise MmfreeError(f"unknown drafter {draft!r}: choose lookup or trigram")
    draft = None if draft == "none" else draft
    if onchip and draft != "trigram":
        raise MmfreeError("--onchip runs the accelerator's trigram draft engine: give --draft trigram")
    if onchip and not hw.draft_vocab:
        raise MmfreeError(NO_DRAFT_ENGINE)
    if onchip and k is not None and k != hw.max_tokens:
        raise MmfreeError(f"--k does not apply to --onchip: the on-chip loop verifies up to the build's "
                          f"{hw.max_tokens} tokens per pass")
    k = k if k is not None else (hw.max_tokens if draft else 1)
    if not 1 <= k <= hw.max_tokens:
        raise MmfreeError(f"--k must be in 1..{hw.max_tokens} (the simulated build's tokens per pass), got {k}")
    check_width(compiled.dims, hw)
    with tempfile.TemporaryDirectory(prefix="mmfree-run-sim-") as td:
        td = Path(td)
        compiled.save(td / "compiled")
        job = {"kind": "run", "compiled": str(td / "compiled"), "prompt": ids, "n_tokens": n_tokens, "k": k,
               "draft": draft, "write_logits": write_logits, "timeout_s": timeout_s,
               # simulated seconds at the modelled clock, capped as SimSession's default: a hang costs minutes
               # (one GENERATE waits for all its passes: the cap grows with the tokens asked for)
               "max_wait_cycles": int(min(timeout_s * 250e6, 50_000_000)) * (n_tokens if onchip else 1),
               "progress": False, "onchip": onchip}
        start_table = None
        if draft == "trigram":
            dr = TrigramDrafter.for_model(im, table, tok_dir)
            dr.table.save(td / "trigram.bin")
            job["table"] = str(td / "trigram.bin")
            start_table = dr.table
        if inject:
            job["inject"] = inject
        with stdout_to_stderr():        # the simulator prints to fd 1; keep stdout for the JSON
            res = run_job(job, hw=hw, workdir=Path(workdir) if workdir else td / "run", progress=progress)
    passes = passes_from_result(res)
    ok, problems = replay_and_compare(im, [p for p in passes if not p.get("onchip")])
    ref = greedy_reference(im, ids, n_tokens)
    if res["tokens"] != ref:
        ok = False
        problems.insert(0, f"tokens {res['tokens']} differ from IntModel greedy decoding {ref}")
    onchip_check = {}
    if onchip:
        spec_ok, spec_problems, onchip_check = _check_onchip(im, ids, n_tokens, hw.max_tokens, start_table, res)
        ok = ok and spec_ok
        problems += spec_problems
    text = None
    try:
        if acc_tok is None and tok_dir is not None:
            from mmfree.pymodel.tokenizer import load_tokenizer

            acc_tok = load_tokenizer(tok_dir)
        text = acc_tok.decode(res["tokens"]) if acc_tok is not None else None
    except Exception:
        text = None
    out = {"board": "sim", "tokens": res["tokens"], "text": text, "prompt_ids": ids, "draft": draft, "k": k,
           "onchip": onchip}
    out.update(res["counters"])
    out.update(onchip_check)
    out.update({"bit_exact": ok, "problems": problems[:20], "reference_tokens": ref,
                "model": {"d": compiled.dims.d, "inter": compiled.dims.inter, "layers": compiled.dims.layers,
                          "vocab": compiled.dims.vocab},
                "hw": {"bus_bytes": hw.bus_bytes, "max_tokens": hw.max_tokens, "max_width": hw.max_width,
                       "draft_vocab": hw.draft_vocab},
                "wall_s": res["wall_s"]})
    if "inject" in res:
        out["inject"] = res["inject"]
    return out


def _check_onchip(im, ids: list[int], n_tokens: int, K: int, start_table, res: dict) -> tuple[bool, list[str], dict]:
    """The on-chip loop of a :func:`run_sim` result against ``speculative_generate`` on IntModel from the same
    starting table (template ``make_template(K - 1, K - 1)`` given explicitly: the reference would draft nothing
    from a table that starts empty, the hardware drafts from what the prompt taught it). Returns (ok, problems,
    fields for the JSON)."""
    from mmfree.pymodel import trigram as TG
    from mmfree.pymodel.speculative import speculative_generate

    spec = speculative_generate(im, ids, n_tokens, max_draft=K - 1, max_nodes=K - 1, table=start_table,
                                template=TG.make_template(K - 1, K - 1), log=lambda m: None)
    expect = start_table.copy()
    expect.observe(list(ids) + list(spec.tokens))
    problems = []
    if res["tokens"] != spec.tokens:
        problems.append(f"tokens {res['tokens']} differ from speculative_generate's {spec.tokens}")
    gen_passes = res["counters"].get("gen_passes", 0)          # no GENERATE when the prefill gave every token
    if gen_passes != spec.extra["verify_steps"]:
        problems.append(f"GEN_PASSES {gen_passes} differs from speculative_generate's verify_steps "
                        f"{spec.extra['verify_steps']}")
    arrays = res.get("arrays", {})
    for name, exp in (("trig", expect.trig), ("bigram", expect.bigram)):
        got = arrays.get(f"table_{name}")
        if got is None or got.shape != exp.shape or not np.array_equal(got, exp):
            problems.append(f"the {name} array read back after GENERATE differs from the reference's adapted table"
                            + ("" if got is None or got.shape != exp.shape else
                               f" ({int(np.count_nonzero(got != exp))} words)"))
    fields = {"replayed": "prefill passes only: the on-chip loop's passes are not read back (checked instead: the "
                          "tokens, GEN_PASSES and the adapted table against speculative_generate)",
              "reference_verify_steps": spec.extra["verify_steps"]}
    return not problems, problems, fields
