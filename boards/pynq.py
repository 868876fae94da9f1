"""PYNQ glue: :class:`PynqTransport` (the board as a :class:`~mmfree.host.transport.Transport`),
:func:`register_pynq_driver` (``MmfreeAccelIP``, a ``pynq.DefaultIP`` bound to :data:`mmfree.rtl.regmap.VLNV`),
:func:`check_hwh` (a bitstream's ``.hwh`` checked before it is loaded), :func:`pynq_device`, :func:`load_overlay`.

PYNQ is optional: nothing here imports it until a PYNQ object is asked for, and then a missing ``pynq`` is a
clear :class:`~mmfree.MmfreeError`. (This module is ``mmfree.boards.pynq``; ``import pynq`` below is the
absolute import of the PyPI package.)"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.host.errors import check_timeout
from mmfree.host.transport import Transport, mmio_errors
from mmfree.rtl import regmap as RM

PYNQ_MISSING = "pynq is not installed: this runs on a PYNQ board image (pip install -e '.[board]')"

#: Names the accelerator's interrupt pin may have in an overlay (PYNQ makes it an attribute of the IP):
#: ``interrupt`` in the IP built by :mod:`mmfree.boards.build`, ``irq`` for the bare top.
IRQ_PINS = ("interrupt", RM.PORT_IRQ)

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
        self.ip, self.mmio, self.poll_s = ip, ip.mmio, check_timeout(poll_s, "poll_s")
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
        #: pynq's event loop for the interrupt (None without one): the loop current when the transport is made,
        #: i.e. after the overlay loaded in this thread, where pynq registered the interrupt's UIO reader
        self.loop = self._pynq_loop() if self.irq is not None else None

    @staticmethod
    def csr_reader(ip):
        """``read32(offset)`` over ``ip.read`` before a transport exists (sizing the DDR window), with the same
        offset check and MMIO error as :meth:`read32`."""
        def read32(offset: int) -> int:
            offset = Transport.check_offset(offset)
            with mmio_errors("read", offset):
                return int(ip.read(offset)) & 0xFFFFFFFF
        return read32

    def read32(self, offset: int) -> int:
        offset = self.check_offset(offset)
        with mmio_errors("read", offset):
            return int(self.mmio.read(offset)) & 0xFFFFFFFF

    def write32(self, offset: int, value: int) -> None:
        offset = self.check_offset(offset)
        with mmio_errors("write", offset):
            self.mmio.write(offset, int(value) & 0xFFFFFFFF)

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
        """True once the interrupt line is high (IRQ_STATUS, or STATUS DONE/ERROR when polling), False after
        ``timeout_s`` (finite, > 0). With the IP's interrupt, ``ip.interrupt.wait()`` runs on pynq's own event
        loop (:attr:`loop`, the one pynq registered the interrupt's UIO reader on when the overlay loaded) with
        ``loop.run_until_complete`` and a time-out; without an interrupt, inside a running event loop (a Jupyter
        cell) or when that loop is gone, STATUS is polled every ``poll_s``."""
        timeout_s = check_timeout(timeout_s, max_s=None)
        if self.irq is not None and self.read32(RM.OFFSET["IRQ_STATUS"]) & 1:
            return True
        loop = self._wait_loop()
        if loop is not None:
            return self._wait_on(loop, timeout_s) or bool(self.read32(RM.OFFSET["IRQ_STATUS"]) & 1)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.read32(RM.OFFSET["STATUS"]) & (RM.STAT_DONE | RM.STAT_ERROR):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    @staticmethod
    def _pynq_loop():
        """The thread's current event loop, as pynq's ``UioController`` takes it (``asyncio.get_event_loop()``)
        when the overlay loads; None when the thread has none."""
        import asyncio
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return asyncio.get_event_loop()
            except RuntimeError:
                return None

    def _wait_loop(self):
        """:attr:`loop` when the interrupt can be awaited on it now, else None (then STATUS is polled)."""
        import asyncio

        loop = self.loop
        if self.irq is None or loop is None or loop.is_closed() or loop.is_running():
            return None
        try:
            asyncio.get_running_loop()
            return None                 # another loop runs in this thread (a notebook cell): cannot nest
        except RuntimeError:
            return loop

    def _wait_on(self, loop, timeout_s: float) -> bool:
        """``await ip.interrupt.wait()`` on ``loop`` for at most ``timeout_s``; True when it fired. Anything raised
        meanwhile (Ctrl-C) cancels the wait on that loop before it goes on."""
        import asyncio

        task = loop.create_task(asyncio.wait_for(self.irq.wait(), timeout_s))
        try:
            loop.run_until_complete(task)
            return True
        except asyncio.TimeoutError:
            return False
        except BaseException:
            task.cancel()
            try:
                loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            except BaseException:
                pass
            raise

    def close(self) -> None:
        buf, self.buf = getattr(self, "buf", None), None
        if buf is not None and hasattr(buf, "freebuffer"):
            buf.freebuffer()


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
        identity registers; ``ip.accelerator(model)`` -> :class:`~mmfree.boards.accelerator.Accelerator` on this IP."""

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

        def accelerator(self, model="default", **kw):
            """:meth:`mmfree.boards.accelerator.Accelerator.on_ip` on this IP."""
            from mmfree.boards.accelerator import Accelerator

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


#: Temperature grades a Vivado part name may end with (``-c``, ``-e``, ``-i``, ...); a .hwh does not record it.
_TEMP_GRADES = ("", "c", "e", "i", "q", "m")


def _norm_part(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "").strip()


def same_part(hwh_part: str, board_part: str) -> bool:
    """True when the .hwh's part (device + package + speed grade, :func:`_hwh_part`) is exactly the board's
    Vivado part, up to the temperature grade the .hwh does not record: ``xck26`` ``sfvc784`` ``-2LV`` is
    ``xck26-sfvc784-2LV-c``, ``7z020`` ``clg400`` ``-1`` is ``xc7z020clg400-1``; ``xczu7ev`` is not
    ``xczu7eg``, and a device alone (no package, no speed grade) matches nothing."""
    hw, bp = _norm_part(hwh_part), _norm_part(board_part)
    return any(bp == hw + grade for grade in _TEMP_GRADES)


def _hwh_part(root, name: str) -> tuple[str, str]:
    """(device, part) from a .hwh's SYSTEMINFO (DEVICE, PACKAGE, SPEEDGRADE); MmfreeError when it is missing or
    incomplete, since the part the bitstream was built for cannot then be checked."""
    info = next(root.iter("SYSTEMINFO"), None)
    if info is None:
        raise MmfreeError(f"{name} has no SYSTEMINFO element, so the FPGA part the bitstream was built for is "
                          "unknown; use the .hwh Vivado wrote for this bitstream (`mmfree build` copies it next to "
                          "the .bit)")
    fields = {k: (info.get(k) or "").strip() for k in ("DEVICE", "PACKAGE", "SPEEDGRADE")}
    missing = [k for k, v in fields.items() if not v]
    if missing:
        raise MmfreeError(f"{name}: SYSTEMINFO lacks {', '.join(missing)}, so the FPGA part the bitstream was built "
                          "for is unknown; use the .hwh Vivado wrote for this bitstream")
    device = fields["DEVICE"].lower()
    if not device.startswith(("xc", "xa", "xq")):
        device = "xc" + device                      # Zynq-7000 .hwh files say DEVICE="7z020"
    return device, device + fields["PACKAGE"].lower() + fields["SPEEDGRADE"].lower()


def check_hwh(bitstream, board=None) -> HwhInfo:
    """Refuse a bitstream before it touches the hardware: its ``.hwh`` must sit next to it (PYNQ naming:
    ``X.bit`` + ``X.hwh``), hold the accelerator (VLNV :data:`regmap.VLNV`) and declare a register-map
    version whose major number is this driver's, and name its part (SYSTEMINFO). ``board`` (a
    :class:`mmfree.boardfile.Board`), when given, must have exactly that part (:func:`same_part`)."""
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
    device, part = _hwh_part(root, hwh.name)
    if board is not None and not same_part(part, board.part):
        raise MmfreeError(f"{hwh.name} was built for the device {device} (part {part}), the {board.name} has "
                          f"{board.part}: build the overlay for this board (`mmfree build --board {board.name}`)")
    return HwhInfo(hwh, module.get("INSTANCE") or module.get("FULLNAME", "").lstrip("/"), version, params, part)


NO_BOARD = ("no PYNQ board here: pynq found no device (it needs a PYNQ board image with its XRT/pynq environment); "
            "run this on the board, or use `mmfree run --board sim` for the simulated board")


def pynq_device():
    """The active pynq device; MmfreeError (:data:`PYNQ_MISSING` / :data:`NO_BOARD`) when there is none."""
    pynq = _pynq()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:                                   # a device made active by hand (the simulated one), else the probed
            dev = pynq.Device.active_device
        except Exception:                      # "No Devices Found"
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


@contextmanager
def sim_overlay(bitstream=None, interrupt: bool = True):
    """``pynq.Overlay`` on the simulated PYNQ device (:mod:`mmfree.sim.pynq_device`), made pynq's active device for
    the duration, as a board's is. ``bitstream``: a simulated build's ``.bit`` (``mmfree build`` writes
    ``sim/mmfree_<board>.bit`` + ``.hwh``); None: one for the simulator's default build (``DEFAULT_HW``, the KV260
    part, its clock) written to a temporary folder, with the interrupt wired (``interrupt=False``: the overlay
    without the interrupt controller, so the driver polls STATUS). Goes through :func:`load_overlay` (the .hwh
    checked against the build's board). Yields (overlay, the accelerator IP, the device); the device's interrupt
    node is closed and the previous active device restored on the way out."""
    import asyncio
    import tempfile

    from mmfree.boardfile import load_board
    from mmfree.sim.pynq_device import new_device, read_sim_bitstream

    pynq = _pynq()
    with tempfile.TemporaryDirectory(prefix="mmfree-pynq-sim-") as tmp:
        if bitstream is None:
            from mmfree.boards.hwh import write_sim_overlay
            from mmfree.sim.accel import DEFAULT_HW

            b = load_board("kv260")
            bitstream = write_sim_overlay(tmp, b, DEFAULT_HW, b.clock_mhz, interrupt=interrupt)
        elif not Path(bitstream).is_file():
            raise MmfreeError(f"bitstream {bitstream} does not exist")
        board = load_board(read_sim_bitstream(bitstream)["board"])
        loop = PynqTransport._pynq_loop()
        own_loop = loop is None or loop.is_closed()
        if own_loop:                             # pynq registers the interrupt on the thread's current loop
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        previous = vars(pynq.Device).get("_active_device")
        dev = new_device()
        pynq.Device.active_device = dev
        try:
            ov, ip, _ = load_overlay(bitstream, board)
            yield ov, ip, dev
        finally:
            dev.close()
            if previous is None:
                del pynq.Device._active_device
            else:
                pynq.Device.active_device = previous
            if own_loop:
                asyncio.set_event_loop(None)
                loop.close()
