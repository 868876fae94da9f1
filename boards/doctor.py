"""``mmfree doctor``: the first command a board owner runs. Each check is PASS or FAIL with the fix.

:func:`doctor` returns ``{"ok": bool, "board": str, "checks": [{"name", "ok", "detail", "fix"}, ...]}``; ``ok`` is
True only when every check passed. The checks, in order:

=============== ===================================================================================================
``pynq``         pynq importable, version >= 3 (the Device layer the driver uses); not needed by ``--board sim``
``bitstream``    the ``.hwh`` beside the ``.bit``: the mmfree IP, this driver's register-map major version, the
                 board's exact part (:func:`mmfree.boards.pynq.check_hwh`); then the overlay loads (``pynq.Overlay``)
``accelerator``  the IP answers: ID, VERSION (major = the driver's), HW_CONFIG
``interrupt``    the overlay wires the IP's interrupt (PYNQ's ``Interrupt``) and the known-answer passes ended by it
``cma``          contiguous memory (CMA, ``/proc/meminfo`` CmaFree) >= the DDR window the model needs; the fix names
                 the kernel parameter ``cma=``
``ddr``          the model's DDR need vs the board's DDR less the OS share (board file)
``clock``        the PL clock the overlay runs at (``pynq.Clocks.fclk0_mhz``) within 1 % of the clock the build
                 asked for (the ``.hwh``'s requested PL0 MHz; 1 %: PYNQ's own warning threshold for a PLL divisor)
``known_answer`` a few greedy tokens of the model on the accelerator equal to IntModel's (exact)
``speed``        measured tokens/s of that run (wall clock, Python included); fails only when nothing was measured
``power``        watts from ``pynq.get_rails()`` where the board has rails; "no rails" (a pass) otherwise
=============== ===================================================================================================

Boards: ``sim`` (the ISA emulator behind the driver's plain transport: no pynq, no bitstream, no clock),
``pynq-sim`` (pynq's whole stack on the simulated device, :func:`mmfree.boards.pynq.sim_overlay`), and the PYNQ
boards (``--bit``, or the overlay pynq reports as loaded). A check that cannot run because an earlier one failed
fails too and says which.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmfree import MmfreeError

#: relative PL clock error that still passes (PYNQ's Clocks warns beyond 1 %)
CLOCK_TOLERANCE = 0.01
SIM_BOARDS = ("sim", "pynq-sim")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class _Target:
    """What the checks look at: the board file (None for sim), the open session, and what loading found."""

    kind: str                                  # "sim", "pynq-sim" or "board"
    board: object = None
    acc: object = None
    ip: object = None
    dev: object = None
    hwh: object = None                         # HwhInfo
    bit: Path | None = None
    cma_free: int | None = None                # bytes of contiguous memory free before the model's window
    cma_source: str = ""
    problems: dict = field(default_factory=dict)


def _pynq_check(kind: str) -> Check:
    try:
        from mmfree.boards.pynq import _pynq

        version = getattr(_pynq(), "__version__", "unknown")
    except MmfreeError as exc:
        if kind == "sim":
            return Check("pynq", True, f"not installed; --board sim does not use it ({exc})")
        return Check("pynq", False, str(exc), "install PYNQ 3.0 or later: use a PYNQ 3.x board image "
                     "(pynq.io), or pip install 'pynq>=3,<5' in the board's Python")
    major = int(str(version).split(".")[0]) if str(version)[:1].isdigit() else 0
    if major < 3:
        return Check("pynq", False, f"pynq {version}: the driver needs the Device layer of pynq >= 3",
                     "upgrade the board image to PYNQ 3.0 or later (pip install 'pynq>=3,<5')")
    return Check("pynq", True, f"pynq {version}" + ("; --board sim does not use it" if kind == "sim" else ""))


def _clock_asked(hwh: Path) -> float | None:
    """The PL clock 0 the build asked for, from a .hwh's PS parameters (ZynqMP or Zynq-7000); None if absent."""
    import xml.etree.ElementTree as ET

    names = ("PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ", "PCW_FPGA0_PERIPHERAL_FREQMHZ")
    for p in ET.parse(hwh).getroot().iter("PARAMETER"):
        if p.get("NAME") in names:
            try:
                return float(p.get("VALUE"))
            except (TypeError, ValueError):
                return None
    return None


def _cma_free_board() -> tuple[int | None, str]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError as exc:
        return None, f"/proc/meminfo unreadable ({exc})"
    for line in text.splitlines():
        if line.startswith("CmaFree:"):
            return int(line.split()[1]) * 1024, "/proc/meminfo CmaFree"
    return None, "/proc/meminfo has no CmaFree line (kernel without CMA)"


@contextmanager
def _open_target(name: str, bit, model, timeout_s: float):
    """Open the accelerator of board ``name`` (sim, pynq-sim or a PYNQ board) as a :class:`_Target`; a loading
    failure is recorded in ``problems["bitstream"]`` (the checks then say so) instead of raised."""
    from mmfree.host.session import AccelSession

    if name == "sim":
        from mmfree.sim.accel import DEFAULT_HW, SIM_MEM_BYTES
        from mmfree.sim.emulator import EmulatedBoard

        emu = EmulatedBoard(DEFAULT_HW, mem_size=SIM_MEM_BYTES)
        t = _Target("sim", cma_free=SIM_MEM_BYTES, cma_source="the simulated DDR (emulator)")
        t.acc = AccelSession(emu, model, timeout_s=timeout_s)
        try:
            yield t
        finally:
            t.acc.close()
        return
    from mmfree.boardfile import load_board
    from mmfree.boards.pynq import check_hwh, load_overlay, sim_overlay

    if name == "pynq-sim":
        from mmfree.sim.pynq_device import read_sim_bitstream

        if bit is not None:
            load_board(read_sim_bitstream(bit)["board"])          # bad input: refused before anything runs
        with sim_overlay(bit) as (ov, ip, dev):
            t = _Target("pynq-sim", ip=ip, dev=dev, bit=Path(ov.bitfile_name), board=load_board(dev.build["board"]))
            t.hwh = check_hwh(t.bit, t.board)
            t.cma_free = dev.mem_size - (dev._next - dev.mem_base)
            t.cma_source = "the simulated device's DDR"
            with _opened(t, model, timeout_s):
                yield t
        return
    t = _Target("board", board=load_board(name))
    t.cma_free, t.cma_source = _cma_free_board()
    try:
        t.bit = Path(bit) if bit is not None else _loaded_bitfile()
        t.hwh = check_hwh(t.bit, t.board)
        ov, t.ip, _ = load_overlay(t.bit, t.board, download=bit is not None)
    except MmfreeError as exc:
        t.problems["bitstream"] = str(exc)
    with _opened(t, model, timeout_s):
        yield t


@contextmanager
def _opened(t: _Target, model, timeout_s: float):
    """``t.acc``: the accelerator opened on the loaded IP (allocating the model's DDR window), closed on the way
    out; a failure is kept in ``t.problems["accelerator"]``."""
    from mmfree.boards.accelerator import Accelerator

    if t.ip is not None:
        try:
            t.acc = Accelerator.on_ip(t.ip, model, board=t.board if t.kind == "board" else None, timeout_s=timeout_s)
        except MmfreeError as exc:
            t.problems["accelerator"] = str(exc)
    try:
        yield t
    finally:
        if t.acc is not None:
            t.acc.close()


def _loaded_bitfile() -> Path:
    from mmfree.boards.pynq import _pynq, pynq_device

    pynq = _pynq()
    pynq_device()
    name = getattr(pynq.PL, "bitfile_name", None)
    if not name or not Path(name).is_file():
        raise MmfreeError("no overlay is loaded: give --bit X.bit (the mmfree_<board>.bit that `mmfree build` made)")
    return Path(name)


def _bitstream_check(t: _Target) -> Check:
    if t.kind == "sim":
        return Check("bitstream", True, "none: --board sim runs the ISA emulator of the simulator's build (no .hwh)")
    if "bitstream" in t.problems:
        return Check("bitstream", False, t.problems["bitstream"],
                     "give the mmfree_<board>.bit built for this board with its .hwh beside it (`mmfree build "
                     "--board B`, then copy both), on the board with PYNQ's environment")
    h = t.hwh
    return Check("bitstream", True, f"{t.bit.name}: {h.instance} ({h.parameters.get('REGMAP_VERSION')}), register map "
                 f"{h.regmap_version >> 16}.{h.regmap_version & 0xFFFF}, part {h.part} = the {t.board.name}'s "
                 f"{t.board.part}; overlay loaded")


def _needs_accelerator(name: str, t: _Target) -> Check | None:
    if t.acc is None:
        why = "the accelerator did not open (see 'accelerator')" if "accelerator" in t.problems else \
            "the overlay did not load (see 'bitstream')"
        return Check(name, False, f"not run: {why}", "fix that check first")
    return None


def _accelerator_check(t: _Target) -> Check:
    from mmfree.host.accel import read_identity
    from mmfree.rtl import regmap as RM

    if "accelerator" in t.problems:
        return Check("accelerator", False, f"opening the accelerator failed: {t.problems['accelerator']}",
                     "see 'cma' and 'ddr' when the DDR window could not be allocated; else rebuild and reflash")
    skip = _needs_accelerator("accelerator", t)
    if skip:
        return skip
    try:
        ident = read_identity(t.acc.transport.read32)
    except MmfreeError as exc:
        return Check("accelerator", False, str(exc), "rebuild and reflash the bitstream with this mmfree version")
    read32 = t.acc.transport.read32
    version, width = read32(RM.OFFSET["VERSION"]), 16 * (read32(RM.OFFSET["HW_LIMITS"]) & 0xFFFF)
    return Check("accelerator", True, f"ID {RM.ID_MAGIC:#x}, register map {version >> 16}.{version & 0xFFFF}, "
                 f"{ident['bus_bytes'] * 8}-bit bus, k = {ident['max_tokens']}, max width {width}, "
                 f"{ident.get('weight_ports') or 1} weight port(s)")


def _memory_checks(t: _Target, need: int) -> list[Check]:
    mib = need / 2**20
    if t.cma_free is None:
        cma = Check("cma", False, f"contiguous memory unknown: {t.cma_source}; the model needs {mib:.1f} MiB",
                    f"boot a kernel with CMA of at least {int(mib) + 64} MiB: kernel parameter cma={int(mib) + 64}M")
    elif t.cma_free < need:
        cma = Check("cma", False, f"{t.cma_free / 2**20:.1f} MiB contiguous memory free ({t.cma_source}), the model "
                    f"needs {mib:.1f} MiB in one buffer",
                    f"raise the CMA size: kernel parameter cma={int(mib) + 64}M on the kernel command line (the "
                    "board image's boot arguments, e.g. bootargs in the U-Boot environment or the device tree), "
                    "then reboot; or free other pynq.allocate buffers")
    else:
        cma = Check("cma", True, f"{t.cma_free / 2**20:.1f} MiB contiguous memory free ({t.cma_source}) >= the "
                    f"{mib:.1f} MiB the model's window needs")
    if t.board is None:
        ddr = Check("ddr", True, f"{mib:.1f} MiB needed; the simulated DDR is the limit (see 'cma')")
    else:
        have = t.board.ddr_usable_bytes
        ok = need <= have
        ddr = Check("ddr", ok, f"{mib:.1f} MiB needed, the {t.board.name} leaves {have / 2**20:.0f} MiB "
                    f"({t.board.ddr['size_mb']} MB DDR less {t.board.ddr.get('os_reserved_mb', 0)} MB for the OS)",
                    "" if ok else "use a smaller model (mmfree export a smaller checkpoint) or a board with more DDR")
    return [cma, ddr]


def _clock_check(t: _Target) -> Check:
    if t.kind == "sim":
        return Check("clock", True, "n/a: the emulator has no clock (cycle counters read 0)")
    skip = _needs_accelerator("clock", t)
    if skip:
        return skip
    from mmfree.boards.pynq import _pynq

    asked = _clock_asked(t.hwh.hwh)
    try:
        actual = float(_pynq().Clocks.fclk0_mhz)
    except Exception as exc:
        return Check("clock", False, f"pynq.Clocks.fclk0_mhz failed: {exc}", "run on the board with PYNQ's "
                     "environment (root, XRT sourced)")
    if asked is None:
        return Check("clock", False, f"PL clock 0 runs at {actual:g} MHz; the .hwh records no requested clock",
                     "use the .hwh Vivado wrote for this bitstream")
    ok = abs(actual - asked) <= CLOCK_TOLERANCE * asked
    return Check("clock", ok, f"PL clock 0 at {actual} MHz (pynq.Clocks), the build asked for {asked:g} MHz",
                 "" if ok else f"set it: pynq.Clocks.fclk0_mhz = {asked:g} (pynq.Overlay does this on download; "
                 "reload the overlay), or rebuild with `mmfree build --clock-mhz` at a rate the PLL reaches")


def _run_checks(t: _Target, n_tokens: int, prompt: str) -> list[Check]:
    """known_answer, speed and interrupt from one greedy generation."""
    from mmfree.sim.run import greedy_reference

    skip = _needs_accelerator("known_answer", t)
    if skip:
        return [skip, _needs_accelerator("speed", t), _needs_accelerator("interrupt", t)]
    before = t.dev.uio.count if t.dev is not None and t.dev.uio is not None else 0
    t0 = time.perf_counter()
    try:
        g = t.acc.generate(prompt, n_tokens)
    except MmfreeError as exc:
        fail = Check("known_answer", False, f"the run failed: {exc}", "rebuild and reflash the bitstream; check the "
                     "fabric clock and reset (see 'clock', 'accelerator')")
        return [fail, Check("speed", False, "not measured (the run failed)", "fix 'known_answer' first"),
                Check("interrupt", False, "not measured (the run failed)", "fix 'known_answer' first")]
    wall = time.perf_counter() - t0
    if t.acc.model is None:
        return [Check("known_answer", False, "the model has no integer reference to compare with (a compiled "
                      "image)", "run the doctor with --model default or an export/checkpoint directory"),
                Check("speed", True, f"{n_tokens / wall:.1f} tokens/s measured"), _interrupt_check(t, 0, 0)]
    ref = greedy_reference(t.acc.model, g.prompt, n_tokens)
    ok = g.tokens == ref
    kat = Check("known_answer", ok, f"{n_tokens} greedy tokens of {prompt!r}: {g.tokens}" +
                (" = IntModel" if ok else f" != IntModel {ref}"),
                "" if ok else "the accelerator disagrees with the integer reference: rebuild the bitstream with "
                "this mmfree version (`mmfree build`), reflash, rerun; report the --json output if it persists")
    where = {"sim": "the ISA emulator on this host", "pynq-sim": "the simulated pynq device on this host"}
    speed = Check("speed", wall > 0, f"{n_tokens / wall:.1f} tokens/s measured ({n_tokens} tokens incl. prefill in "
                  f"{wall:.3f} s wall clock, Python included; {where.get(t.kind, 'this board')})")
    return [kat, speed, _interrupt_check(t, len(g.passes), before)]


def _interrupt_check(t: _Target, passes: int, before: int) -> Check:
    if t.kind == "sim":
        return Check("interrupt", True, "n/a: --board sim waits on the emulator's IRQ_STATUS (no pynq)")
    irq = t.acc.transport.irq
    if irq is None:
        return Check("interrupt", False, "the overlay has no interrupt on the accelerator: the driver polls STATUS",
                     "rebuild with `mmfree build` (its block design wires the IP's interrupt through an AXI "
                     "interrupt controller to the PS) and keep the .hwh beside the .bit")
    if t.dev is not None and t.dev.uio is not None:
        n = t.dev.uio.count - before
        ok = n == passes
        return Check("interrupt", ok, f"{n} interrupts through pynq's Interrupt for {passes} passes",
                     "" if ok else "interrupts were lost: rerun; report it with the --json output")
    return Check("interrupt", True, f"pynq Interrupt on {type(irq).__name__}; the {passes} passes ended by it "
                 "(or by the STATUS fallback inside a running event loop)")


def _power_check(t: _Target) -> Check:
    from mmfree.boards.power import PynqRails

    if t.kind == "sim":
        return Check("power", True, "no rails: --board sim has no power sensors")
    import warnings

    with warnings.catch_warnings():                  # pynq's pmbus warns when libsensors is missing
        warnings.simplefilter("ignore")
        ok, why = PynqRails().available()
    if not ok:
        return Check("power", True, f"no rails ({why}); measure with an external meter or the KV260's INA260 "
                     "(`mmfree energy`)")
    return Check("power", True, f"{PynqRails().watts():.2f} W measured (sum of pynq.get_rails() power rails)")


def doctor(board: str, bit=None, model="default", n_tokens: int = 8, prompt: str = "def ",
           timeout_s: float = 60.0) -> dict:
    """Run every check on ``board`` (module docstring); returns the report. Bad input (unknown board, a
    ``bit`` that does not exist or is given to ``--board sim``) raises MmfreeError before anything runs."""
    from mmfree.boardfile import load_board
    from mmfree.host.session import open_model

    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or not 1 <= n_tokens <= 256:
        raise MmfreeError(f"--tokens must be an integer in 1..256 (the known-answer run), got {n_tokens!r}")
    if board not in SIM_BOARDS:
        load_board(board)                                         # unknown board: one clear error
    if bit is not None:
        if board == "sim":
            raise MmfreeError("--bit is for a PYNQ board or pynq-sim; --board sim runs the emulator's own build")
        if not Path(bit).is_file():
            raise MmfreeError(f"--bit {bit} does not exist: give the mmfree_<board>.bit that `mmfree build` wrote "
                              "(with its .hwh beside it)")
    opened = open_model(model)
    checks = [_pynq_check("sim" if board == "sim" else "pynq")]
    if not checks[0].ok:
        checks.append(Check("bitstream", False, "not run: pynq is missing", "fix 'pynq' first"))
        return _report(board, checks)
    with _open_target(board, bit, opened, timeout_s) as t:
        checks += [_bitstream_check(t), _accelerator_check(t)]
        checks += _memory_checks(t, _ddr_need(t, opened[0]))
        checks.append(_clock_check(t))
        kat, speed, irq = _run_checks(t, n_tokens, prompt)
        checks += [irq, kat, speed, _power_check(t)]
    return _report(board, checks)


def _ddr_need(t: _Target, compiled) -> int:
    """Bytes of DDR the model's window takes on this accelerator (its k and draft engine), or on a k = 4 build
    without a draft engine when the accelerator did not answer."""
    from mmfree.host.accel import read_draft_engine, read_identity
    from mmfree.host.layout import ddr_needed

    if t.acc is None:
        return ddr_needed(compiled, 4)
    read32 = t.acc.transport.read32
    try:
        return ddr_needed(compiled, read_identity(read32)["max_tokens"], read_draft_engine(read32))
    except MmfreeError:
        return ddr_needed(compiled, 4)


def _report(board: str, checks: list[Check]) -> dict:
    return {"ok": all(c.ok for c in checks), "board": board, "checks": [asdict(c) for c in checks]}
