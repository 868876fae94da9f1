"""ISA-level emulator of the accelerator: runs a compiled program (:mod:`mmfree.rtl.isa`) on a DDR model
with the primitives of :mod:`mmfree.pymodel.numerics`, one instruction at a time.

It is the accelerator's second implementation, independent of the RTL: it validates the compiler against
:class:`mmfree.pymodel.intmodel.IntModel` (bit-exact), it defines what every instruction computes for the
RTL tests, and it reports per-instruction work (:class:`TraceEntry`) for the performance model.

The checks the hardware makes (base alignment, address window, token range, parents, operand legality,
widths, program end) raise :class:`AccelError` with the hardware's error code from
:mod:`mmfree.rtl.regmap`, in the hardware's order. Program mistakes the hardware cannot see (reading
codes of another width, an out-of-order head) raise :class:`ProgramError`.

:class:`EmulatedBoard` wraps it in the board interface of :mod:`mmfree.sim.accel` (CSR read32/write32,
DDR write/read, wait for the interrupt), so host code runs unchanged on the emulator and on the RTL. Its
``CONTROL.GENERATE`` is the executable statement of the on-chip draft-verify loop (docs/speculative.md, "The
on-chip draft-verify loop"): :meth:`EmulatedBoard._generate`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig


class AccelError(MmfreeError):
    """The accelerator stopped with ``STATUS.ERROR``: ``code`` (an ``ERR_*``) and ``detail`` as in ERROR_CODE."""

    def __init__(self, code: int, detail: int = 0, pc: int | None = None):
        self.code, self.detail, self.pc = code, detail, pc
        where = f" at program byte {pc}" if pc is not None else ""
        super().__init__(RM.error_message(code | (detail << 8)) + where)

    @property
    def register(self) -> int:
        return self.code | (self.detail << 8)


class ProgramError(MmfreeError):
    """The program is malformed in a way the hardware does not detect (its behaviour would be undefined)."""


class Ddr:
    """A byte-addressed DDR window ``[base, base + size)``. Unpacked ternary matrices are cached per address
    range and dropped when anything writes over them."""

    def __init__(self, base: int, size: int):
        if base % RM.ALIGN or size <= 0:
            raise ValueError(f"DDR base must be {RM.ALIGN}-byte aligned and size positive, got {base:#x}, {size}")
        self.base, self.size = base, size
        self.data = bytearray(size)
        self._ternary: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def end(self) -> int:
        return self.base + self.size

    def _span(self, addr: int, n: int) -> int:
        if addr < self.base or addr + n > self.end or n < 0:
            raise MmfreeError(f"DDR access [{addr:#x}, {addr + n:#x}) outside the memory [{self.base:#x}, {self.end:#x})")
        return addr - self.base

    def write(self, addr: int, data: bytes) -> None:
        o = self._span(addr, len(data))
        self.data[o:o + len(data)] = data
        if self._ternary:
            end = addr + len(data)
            for key in [k for k in self._ternary if k[0] < end and addr < k[0] + k[1] * N.row_bytes(k[2])]:
                del self._ternary[key]

    def read(self, addr: int, n: int) -> bytes:
        o = self._span(addr, n)
        return bytes(self.data[o:o + n])

    def words(self, addr: int, n: int, dtype: str) -> np.ndarray:
        return np.frombuffer(self.read(addr, 4 * n), dtype=dtype).astype(np.int64)

    def ternary(self, addr: int, rows: int, k: int) -> np.ndarray:
        key = (addr, rows, k)
        w = self._ternary.get(key)
        if w is None:
            rb = N.row_bytes(k)
            raw = np.frombuffer(self.read(addr, rows * rb), dtype=np.uint8).reshape(rows, rb)
            w = N.unpack_ternary(raw, k).astype(np.float32)
            self._ternary[key] = w
        return w


@dataclass
class TraceEntry:
    """Work of one executed instruction: what the performance model prices."""

    pc: int
    instr: I.Instr
    elements: int = 0          # vector elements processed (all tokens)
    rows: int = 0              # ternary rows
    beats: int = 0             # weight bus beats (padded rows)
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class RunStats:
    instructions: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    trace: list[TraceEntry] = field(default_factory=list)


class Emulator:
    """The accelerator's architectural state and program execution. Registers are set in ``regs``
    (64-bit values by the names of :data:`regmap.ADDRESS_REGS`, and ``NUM_TOKENS``, ``FLAGS``); :meth:`run`
    executes the program at ``PROG_BASE`` and returns :class:`RunStats`, or raises :class:`AccelError`."""

    def __init__(self, hw: HwConfig, ddr: Ddr, trace: bool = False):
        self.hw, self.ddr, self.trace = hw, ddr, trace
        self.regs: dict[str, int] = {name: 0 for name in RM.ADDRESS_REGS}
        self.regs.update(NUM_TOKENS=1, FLAGS=0)
        self.regs["MEM_LO"], self.regs["MEM_HI"] = ddr.base, ddr.end
        self.argmax_last = 0
        self.pc = 0

    # ---- helpers ----------------------------------------------------------------------------------------
    def _range(self, base_idx: int, addr: int, n: int) -> None:
        if addr < self.regs["MEM_LO"] or addr + n > self.regs["MEM_HI"]:
            raise AccelError(RM.ERR_ADDRESS_RANGE, base_idx, self.pc)

    def _filled(self, buf: int, n: int, ins: I.Instr) -> None:
        if self.filled[buf] < n:
            raise AccelError(RM.ERR_NOT_LOADED, I.OPCODE[ins.op], self.pc)

    @staticmethod
    def _shift(v: np.ndarray) -> int:
        return int(np.asarray(N.normalize_input(v)[1]).reshape(-1)[0])

    # ---- a run --------------------------------------------------------------------------------------------
    def run(self, tokens=None, parents=None) -> RunStats:
        """Execute the program at PROG_BASE (see the class docstring).

        ``tokens`` (and ``parents``, a tree; None: a chain) given: the pass's tokens come from the chip
        itself, as the on-chip draft-verify loop feeds them: NUM_TOKENS is ``len(tokens)``, FLAGS.TREE
        is set by ``parents``, and TOKENS/PARENTS are neither checked nor read."""
        try:
            return self._run(tokens, parents)
        except MmfreeError as exc:
            if isinstance(exc, (AccelError, ProgramError)):
                raise
            # the address lies inside [MEM_LO, MEM_HI) but no memory answers there: a DECERR on the bus
            raise AccelError(RM.ERR_AXI, 0, self.pc) from exc

    def _run(self, tokens=None, parents=None) -> RunStats:
        hw, regs = self.hw, self.regs
        stats = RunStats()
        self.pc = 0
        on_chip = tokens is not None
        k = len(tokens) if on_chip else regs["NUM_TOKENS"]
        if not 1 <= k <= hw.max_tokens:
            raise AccelError(RM.ERR_NUM_TOKENS)
        flags = RM.decode("FLAGS", regs["FLAGS"])
        tree = parents is not None if on_chip else bool(flags["tree"])
        logits_on = bool(flags["write_logits"])
        for i, name in enumerate(RM.ADDRESS_REGS):
            if name == "PARENTS" and not tree or name == "LOGITS" and not logits_on \
                    or on_chip and name in ("TOKENS", "PARENTS"):
                continue
            if regs[name] % RM.ALIGN:
                raise AccelError(RM.ERR_UNALIGNED, i)
        prog = regs["PROG_BASE"]
        self._range(I.BASE["PROG_BASE"], prog, I.HEADER_BYTES)
        try:
            header = I.Header.decode(self.ddr.read(prog, I.HEADER_BYTES))
        except I.IsaError:
            raise AccelError(RM.ERR_BAD_INSTRUCTION, 0) from None
        if header.version != I.ISA_VERSION:
            raise AccelError(RM.ERR_BAD_INSTRUCTION, 0)
        if header.width_units * I.WIDTH_UNIT > hw.max_width:
            raise AccelError(RM.ERR_TOO_WIDE, header.width_units)
        self._range(I.BASE["PROG_BASE"], prog, I.HEADER_BYTES + header.n_instr * I.INSTR_BYTES)
        if on_chip:
            self.tokens = np.asarray(tokens, dtype=np.int64)
        else:
            self._range(I.BASE["TOKENS"], regs["TOKENS"], 4 * k)
            self.tokens = self.ddr.words(regs["TOKENS"], k, "<u4")
            stats.bytes_read += 4 * k
        if tree:
            if on_chip:
                self.parents = np.asarray(parents, dtype=np.int64)
            else:
                self._range(I.BASE["PARENTS"], regs["PARENTS"], 4 * k)
                self.parents = self.ddr.words(regs["PARENTS"], k, "<i4")
                stats.bytes_read += 4 * k
            roots = min(header.streams, hw.max_tokens)      # a root -1 - s of stream s < streams
            for j, q in enumerate(self.parents):
                if not -roots <= q < j:
                    raise AccelError(RM.ERR_BAD_PARENT, j)
        else:
            self.parents = np.arange(-1, k - 1)
        W, K = hw.max_width, hw.max_tokens
        self.k = k
        self.buf = {b: np.zeros((K, W) if b in I.PER_TOKEN else (W,), dtype=np.int64) for b in range(len(I.BUFFERS))}
        self.filled = {b: 0 for b in I.STREAMED}
        self.codes = np.zeros((I.BANKS, K, W), dtype=np.int64)
        self.codes_len = [0] * I.BANKS
        self.sh = {I.RES_SHX: np.zeros(K, dtype=np.int64), I.RES_SHA: np.zeros(K, dtype=np.int64)}
        self.const = [(0, 0)] * I.SLOTS
        self.P = np.zeros((I.SLOTS, K), dtype=np.int64)
        self.M = np.zeros((I.SLOTS, K), dtype=np.int64)
        self.SHIFT = np.zeros((I.SLOTS, K), dtype=np.int64)
        self.SZ = np.zeros((I.SLOTS, K), dtype=np.int64)
        self.arg_best = np.zeros(K, dtype=np.int64)
        self.arg_index = np.zeros(K, dtype=np.int64)
        self.arg_count = 0
        self.arg = np.zeros(K, dtype=np.int64)
        self.frac = None
        self.prefetches: list[tuple[int, int, int]] = []
        for n in range(header.n_instr + 1):
            self.pc = I.HEADER_BYTES + n * I.INSTR_BYTES
            if n == header.n_instr:
                raise AccelError(RM.ERR_PROGRAM, 0, self.pc)
            raw = self.ddr.read(prog + self.pc, I.INSTR_BYTES)
            stats.bytes_read += I.INSTR_BYTES
            try:
                ins = I.Instr.decode(raw)
            except I.IsaError:
                raise AccelError(RM.ERR_BAD_INSTRUCTION, raw[0], self.pc) from None
            stats.instructions += 1
            if ins.op == "HALT":
                break
            self.check(ins)
            entry = TraceEntry(self.pc, ins)
            getattr(self, "_op_" + ins.op.lower())(ins, entry)
            stats.bytes_read += entry.bytes_read
            stats.bytes_written += entry.bytes_written
            if self.trace:
                stats.trace.append(entry)
        self.argmax_last = int(self.arg[k - 1])
        return stats

    # ---- the checks of the decoder, in the hardware's order -----------------------------------------------
    def check(self, ins: I.Instr) -> tuple[int | None, int]:
        """The decoder's checks of one instruction (docs/accelerator.md), in order: operand legality
        (ERR_BAD_INSTRUCTION), widths (ERR_TOO_WIDE), address alignment (ERR_BAD_INSTRUCTION), then the
        DDR window (ERR_ADDRESS_RANGE). Returns ``(address, span)`` of its DDR operand (``None`` if it has
        none or a STORE is skipped because FLAGS.WRITE_LOGITS is clear), or raises :class:`AccelError`."""
        op, a = ins.op, ins
        bad = AccelError(RM.ERR_BAD_INSTRUCTION, I.OPCODE[op], self.pc)
        if not I.legal(ins):                    # the one constraint table the RTL decoder is generated from
            raise bad
        W = self.hw.max_width
        if a["count"] > W or (op in ("MATVEC", "PREFETCH") and a["rows"] > W):
            raise AccelError(RM.ERR_TOO_WIDE, 0, self.pc)
        if op not in ("LOAD", "STORE", "EMBED", "MATVEC", "PREFETCH"):
            return None, 0
        addr = self.regs[RM.ADDRESS_REGS[a["base"]]] + a["offset"]
        if addr % (N.ROW_ALIGN_BYTES if op in ("MATVEC", "PREFETCH") else 4) or (op == "STORE" and a["tstride"] % 4):
            raise bad
        logits_on = RM.decode("FLAGS", self.regs["FLAGS"])["write_logits"]
        if op == "STORE" and a["flags"] & I.STORE_IF_LOGITS and not logits_on:
            return None, 0
        span = {"LOAD": lambda: 4 * a["count"] * a["fields"],
                "STORE": lambda: (self.k - 1) * a["tstride"] + 4 * a["count"],
                "EMBED": lambda: a["vocab"] * 16 * a["stride16"],
                "MATVEC": lambda: a["rows"] * N.row_bytes(a["count"]),
                "PREFETCH": lambda: a["rows"] * N.row_bytes(a["count"])}[op]()
        self._range(a["base"], addr, span)
        return addr, span

    # ---- instructions -------------------------------------------------------------------------------------
    def _op_sync(self, ins, e):
        pass

    def _op_setf(self, ins, e):
        self.frac = ins["act_frac"]

    def _frac(self) -> int:
        if self.frac is None:
            raise ProgramError(f"instruction at byte {self.pc} needs the activation format, but no SETF ran before it")
        return self.frac

    def _op_setc(self, ins, e):
        self.const[ins["slot"]] = (ins["c_m"], ins["c_e"])

    def _op_load(self, ins, e):
        dst, f, n = ins["dst"], ins["fields"], ins["count"]
        addr, _ = self.check(ins)
        e.bytes_read = 4 * n * f
        e.elements = n
        if dst == I.LD_NORM:
            rec = self.ddr.words(addr, n * f, "<i4").reshape(n, f)
            targets = [I.BUF_N] + [I.BUF_NW0 + p for p in range(f - 1)]
            for c, b in enumerate(targets):
                self.buf[b][:n] = rec[:, c]
                self.filled[b] = n
        elif dst == I.LD_HROOT:                              # stream s's start state into its roots' H
            words = self.ddr.words(addr, n, "<i4")
            for t in range(self.k):
                if self.parents[t] == -1 - ins["stream"]:
                    self.buf[I.BUF_H][t, :n] = words
        else:
            b = I.BUF_H0 if dst == I.LD_H0 else I.BUF_LB
            self.buf[b][:n] = self.ddr.words(addr, n, "<i4" if dst == I.LD_H0 else "<u4")
            self.filled[b] = n

    def _op_store(self, ins, e):
        src, n, k = ins["src"], ins["count"], self.k
        addr, _ = self.check(ins)
        if addr is None:
            return
        ts = ins["tstride"]
        for t in range(k):
            if src == I.ST_ARG:
                data = struct.pack("<I", int(self.arg[t]))
            else:
                b = {I.ST_H: I.BUF_H, I.ST_T0: I.BUF_T0, I.ST_T1: I.BUF_T1}[src]
                data = self.buf[b][t, :n].astype("<i4").tobytes()
            self.ddr.write(addr + t * ts, data)
        e.bytes_written = 4 * n * k
        e.elements = n * k

    def _op_embed(self, ins, e):
        n, V, stride = ins["count"], ins["vocab"], ins["stride16"] * 16
        addr, _ = self.check(ins)
        X = self.buf[I.BUF_X]
        for t in range(self.k):
            tok = int(self.tokens[t])
            if tok >= V:
                raise AccelError(RM.ERR_TOKEN_RANGE, t, self.pc)
            X[t, :n] = self.ddr.words(addr + tok * stride, n, "<i4")
            self.sh[I.RES_SHX][t] = self._shift(X[t, :n])
        e.elements = n * self.k
        e.bytes_read = self.k * 4 * n

    def _src(self, ins):
        if ins["src"] == I.SRC_X:
            return self.buf[I.BUF_X], self.sh[I.RES_SHX]
        return self.buf[I.BUF_A], self.sh[I.RES_SHA]

    def _op_qstats(self, ins, e):
        """Per token: u' = u * 2**-sh, ``P_p = max|u' nw_p|`` and the sum-of-squares shift ``sz`` of
        ``z = u' n`` (numerics.sum_squares) for every slot p < nproj."""
        self.check(ins)
        n, npj = ins["count"], ins["nproj"]
        src, sh = self._src(ins)
        for b in [I.BUF_N] + [I.BUF_NW0 + p for p in range(npj)]:
            self._filled(b, n, ins)
        nvec = self.buf[I.BUF_N][:n]
        for t in range(self.k):
            up = N.shift_round(src[t, :n], int(sh[t]))
            _, sz = N.sum_squares(up * nvec)
            for p in range(npj):
                self.P[p, t] = int(np.max(np.abs(up * self.buf[I.BUF_NW0 + p][:n])))
                self.SZ[p, t] = int(np.asarray(sz).reshape(-1)[0])
        e.elements = n * self.k

    def _op_qcodes(self, ins, e):
        """Per token: the codes of slot ``slot`` into ``bank``, ``S = sum rshift_round(u' n, sz)**2`` and the
        slot's output multiplier ``(M, shift) = output_multiplier(P, S, sz, c_m, c_e)``."""
        self.check(ins)
        n, slot, bank = ins["count"], ins["slot"], ins["bank"]
        src, sh = self._src(ins)
        self._filled(I.BUF_N, n, ins)
        self._filled(I.BUF_NW0 + slot, n, ins)
        nvec, nw = self.buf[I.BUF_N][:n], self.buf[I.BUF_NW0 + slot][:n]
        c_m, c_e = self.const[slot]
        for t in range(self.k):
            up = N.shift_round(src[t, :n], int(sh[t]))
            P, sz = np.int64(self.P[slot, t]), int(self.SZ[slot, t])
            self.codes[bank, t, :n] = N.codes_from(up * nw, P)
            zs = N.rshift_round(up * nvec, sz)
            S = np.int64(np.sum(zs * zs))
            M, shift = N.output_multiplier(P, S, np.int64(sz), c_m, c_e)
            self.M[slot, t], self.SHIFT[slot, t] = int(M), int(shift)
        self.codes_len[bank] = n
        e.elements = n * self.k

    def _op_hgrn(self, ins, e):
        self.check(ins)
        n = ins["count"]
        self._filled(I.BUF_H0, n, ins)
        self._filled(I.BUF_LB, n, ins)
        H, A = self.buf[I.BUF_H], self.buf[I.BUF_A]
        lb = self.buf[I.BUF_LB][:n]
        af = self._frac()
        for t in range(self.k):
            q = int(self.parents[t])
            # a root of stream 0 starts from H0, a root of stream s >= 1 from its own H (LOAD HROOT put it there)
            prev = self.buf[I.BUF_H0][:n] if q == -1 else H[t if q < -1 else q, :n].copy()
            rate = N.forget_rate(self.buf[I.BUF_T1][t, :n], lb, af)
            H[t, :n] = N.hgrn_update(prev, N.silu(self.buf[I.BUF_T0][t, :n], af), rate)
            A[t, :n] = N.mul_act(self.buf[I.BUF_T2][t, :n], N.silu(H[t, :n], af))
            self.sh[I.RES_SHA][t] = self._shift(A[t, :n])
        e.elements = n * self.k

    def _op_prefetch(self, ins, e):
        addr, _ = self.check(ins)
        if len(self.prefetches) == I.PREFETCH_DEPTH:
            raise ProgramError(f"PREFETCH at byte {self.pc}: {I.PREFETCH_DEPTH} prefetches are already waiting for "
                               "their MATVECs (the hardware would wait forever)")
        self.prefetches.append((addr, ins["rows"], ins["count"]))
        e.bytes_read = ins["rows"] * N.row_bytes(ins["count"])

    def _op_matvec(self, ins, e):
        addr, _ = self.check(ins)
        if ins["flags"] & I.PREFETCHED:
            if not self.prefetches or self.prefetches[0] != (addr, ins["rows"], ins["count"]):
                raise AccelError(RM.ERR_BAD_INSTRUCTION, I.OPCODE["MATVEC"], self.pc)
            self.prefetches.pop(0)
        elif self.prefetches:
            raise AccelError(RM.ERR_BAD_INSTRUCTION, I.OPCODE["MATVEC"], self.pc)
        bank, slot, epi, flags, dst = ins["bank"], ins["slot"], ins["epi"], ins["flags"], ins["dst"]
        rows, n = ins["rows"], ins["count"]
        rb = N.row_bytes(n)
        if self.codes_len[bank] != n:
            raise ProgramError(f"MATVEC at byte {self.pc} multiplies {n}-wide rows with bank {bank} holding "
                               f"{self.codes_len[bank]}-wide codes")
        k = self.k
        w = self.ddr.ternary(addr, rows, n)
        acc = (self.codes[bank, :k, :n].astype(np.float32) @ w.T).astype(np.int64)
        y = N.dequantize(acc, self.M[slot, :k, None], self.SHIFT[slot, :k, None])
        if epi == I.EPI_STORE:
            self.buf[I.BUF_T0 + dst][:k, :rows] = y
        elif epi == I.EPI_GLU:
            A = self.buf[I.BUF_A]
            A[:k, :rows] = N.mul_act(N.silu(self.buf[I.BUF_T0][:k, :rows], self._frac()), y)
            for t in range(k):
                self.sh[I.RES_SHA][t] = self._shift(A[t, :rows])
        elif epi == I.EPI_RESID:
            X = self.buf[I.BUF_X]
            X[:k, :rows] = N.saturate(X[:k, :rows] + y)
            for t in range(k):
                self.sh[I.RES_SHX][t] = self._shift(X[t, :rows])
        else:
            self.buf[I.BUF_T0 + dst][:k, :rows] = y
            if flags & I.HEAD_FIRST:
                self.arg_count = 0
            for t in range(k):
                j = int(N.argmax(y[t]))
                if self.arg_count == 0 or y[t, j] > self.arg_best[t]:
                    self.arg_best[t], self.arg_index[t] = y[t, j], self.arg_count + j
            self.arg_count += rows
            if flags & I.HEAD_LAST:
                self.arg[:k] = self.arg_index[:k]
        e.rows, e.beats = rows, rows * rb // self.hw.bus_bytes
        e.bytes_read = 0 if flags & I.PREFETCHED else rows * rb
        e.elements = rows * k


class EmulatedBoard:
    """The emulator behind the board interface of :mod:`mmfree.sim.accel` (CSR + DDR + interrupt).

    Writing ``CONTROL.START`` runs the program to completion at once, ``CONTROL.GENERATE`` the whole
    on-chip draft-verify loop (:meth:`_generate`; a build with ``hw.draft_vocab``); the status, counters
    and the interrupt then read as the hardware leaves them (cycle counters, GEN_CYCLES included, stay 0:
    the emulator has no clock).
    """

    def __init__(self, hw: HwConfig, mem_base: int = 0x4000_0000, mem_size: int = 64 << 20):
        self.hw = hw
        self.ddr = Ddr(mem_base, mem_size)
        self.emu = Emulator(hw, self.ddr)
        self.csr: dict[str, int] = {r.name: 0 for r in RM.REGISTERS}
        self.csr.update(ID=RM.ID_MAGIC, VERSION=RM.REGMAP_VERSION, HW_CONFIG=hw.hw_config_reg,
                        HW_LIMITS=hw.hw_limits_reg, NUM_TOKENS=1, **hw.draft_regs)
        self.irq_enabled = False
        self.last_stats: RunStats | None = None

    @property
    def mem_window(self) -> tuple[int, int]:
        return self.ddr.base, self.ddr.end

    def write32(self, offset: int, value: int) -> None:
        reg = {r.offset: r for r in RM.REGISTERS}.get(offset)
        if reg is None or reg.access == RM.Access.RO:
            return
        value &= 0xFFFFFFFF
        if reg.name == "CONTROL":
            ctl = RM.decode("CONTROL", value)
            if ctl["irq_enable"]:
                self.irq_enabled = True
            if ctl["soft_reset"]:
                self.csr["STATUS"] = 0
                self.csr["ERROR_CODE"] = 0
                self.csr["IRQ_STATUS"] = 0
            if ctl["generate"]:
                self._finish(self._generate)
            elif ctl["start"]:
                self._finish(self._pass)
            return
        if reg.name == "IRQ_STATUS":
            if RM.decode("IRQ_STATUS", value)["pending"]:
                self.csr["IRQ_STATUS"] = 0
            return
        self.csr[reg.name] = value

    def read32(self, offset: int) -> int:
        reg = {r.offset: r for r in RM.REGISTERS}.get(offset)
        if reg is None:
            return 0
        if reg.name == "STATUS":
            return self.csr["STATUS"] | RM.encode("STATUS", irq_enabled=int(self.irq_enabled))
        return self.csr[reg.name]

    def _reg64(self, name: str) -> int:
        return self.csr[name + "_LO"] | (self.csr[name + "_HI"] << 32)

    def _set64(self, name: str, value: int) -> None:
        self.csr[name + "_LO"], self.csr[name + "_HI"] = value & 0xFFFFFFFF, value >> 32

    def _finish(self, work) -> None:
        """Run ``work`` (a pass or GENERATE); then STATUS.DONE, or STATUS.ERROR with ERROR_CODE and PC, and the
        interrupt when enabled."""
        try:
            work()
        except AccelError as exc:
            self.csr["STATUS"] = RM.encode("STATUS", error=1)
            self.csr["ERROR_CODE"] = exc.register
            self.csr["PC"] = exc.pc or 0
        else:
            self.csr["STATUS"] = RM.encode("STATUS", done=1)
            self.csr["ERROR_CODE"] = 0
        if self.irq_enabled:
            self.csr["IRQ_STATUS"] = RM.encode("IRQ_STATUS", pending=1)

    def _pass(self, tokens=None, parents=None, state_in: int | None = None, state_out: int | None = None) -> None:
        """One pass with the registers as the host set them; the on-chip loop gives its own tokens, parents
        and state addresses (:meth:`Emulator.run`). Sets ARGMAX and the byte counters; raises AccelError."""
        emu = self.emu
        for name in RM.ADDRESS_REGS:
            emu.regs[name] = self._reg64(name)
        emu.regs["NUM_TOKENS"] = self.csr["NUM_TOKENS"]
        emu.regs["FLAGS"] = self.csr["FLAGS"]
        if state_in is not None:
            emu.regs["STATE_IN"], emu.regs["STATE_OUT"] = state_in, state_out
        stats = emu.run(tokens, parents)
        self.last_stats = stats
        self.csr["ARGMAX"] = emu.argmax_last
        self._set64("RD_BYTES", stats.bytes_read)
        self._set64("WR_BYTES", stats.bytes_written)

    # ---- CONTROL.GENERATE: the on-chip draft-verify loop ------------------------------------------------------
    def _generate(self) -> None:
        """The draft-verify loop of docs/speculative.md ("The on-chip draft-verify loop"), step for step:

        1. the checks, first failure wins (ERR_NO_DRAFT; ERR_GEN_CONFIG 0 / 1 / 2; ERR_UNALIGNED, then
           ERR_ADDRESS_RANGE, for TABLE_BASE, BIGRAM_BASE, GEN_OUT, STATE_ALT with detail
           ``len(ADDRESS_REGS) + i``), before any DDR access;
        2. the bigram rows (DRAFT_VOCAB of them) loaded from BIGRAM_BASE (the table is a
           :class:`TrigramTable` over the DDR arrays, geometry ``hw.draft_params``);
        3. until GEN_N tokens are out or the enabled EOS is: draft from ``(prev, root)`` by the rule of
           ``GEN_DRAFT.tree`` (:class:`~mmfree.rtl.regmap.TreeRule`: ``draft_tree`` with ``make_template(K - 1,
           K - 1)``, or ``draft_tree_guided`` with K - 1 nodes), one tree pass from ``cur`` into ``out``, walk
           the accepted path (update the table, write the set's lines back, GEN_OUT[count] = the token), commit
           the last node walked, swap STATE_OUT / STATE_ALT;
        4. the bigram rows written back, GEN_STATE = the committed state.

        A pass error stops the loop with that error (GEN_COUNT/PASSES/NODES then count what was done)."""
        hw, csr, p = self.hw, self.csr, self.hw.draft_params
        if p is None:
            raise AccelError(RM.ERR_NO_DRAFT)
        n_out, stride = csr["GEN_N"], csr["STATE_STRIDE"]
        if n_out == 0:
            raise AccelError(RM.ERR_GEN_CONFIG, 0)
        if stride == 0 or stride % RM.ALIGN:
            raise AccelError(RM.ERR_GEN_CONFIG, 1)
        if RM.decode("GEN_DRAFT", csr["GEN_DRAFT"])["tree"] not in set(RM.TreeRule):
            raise AccelError(RM.ERR_GEN_CONFIG, 2)
        spans = {"TABLE_BASE": p.n_sets * p.ways * 4 * (1 + p.slots),
                 "BIGRAM_BASE": -(-hw.draft_vocab * 4 * p.bigram_slots // RM.ALIGN) * RM.ALIGN,
                 "GEN_OUT": 4 * n_out, "STATE_ALT": hw.max_tokens * stride}
        base = {name: self._reg64(name) for name in RM.GEN_ADDRESS_REGS}
        detail = {name: len(RM.ADDRESS_REGS) + i for i, name in enumerate(RM.GEN_ADDRESS_REGS)}
        for name in RM.GEN_ADDRESS_REGS:
            if base[name] % RM.ALIGN:
                raise AccelError(RM.ERR_UNALIGNED, detail[name])
        lo, hi = self._reg64("MEM_LO"), self._reg64("MEM_HI")
        for name in RM.GEN_ADDRESS_REGS:
            if base[name] < lo or base[name] + spans[name] > hi:
                raise AccelError(RM.ERR_ADDRESS_RANGE, detail[name])
        for name in ("GEN_COUNT", "GEN_PASSES", "GEN_NODES"):
            csr[name] = 0
        try:
            self._set64("GEN_STATE", self._loop(p, base, n_out, stride))
        except (AccelError, ProgramError):
            raise
        except MmfreeError as exc:          # inside [MEM_LO, MEM_HI) but no memory answers: DECERR
            raise AccelError(RM.ERR_AXI) from exc

    def _loop(self, p, base: dict[str, int], n_out: int, stride: int) -> int:
        """Steps 2 to 4 of :meth:`_generate`; returns the committed state's address (GEN_STATE)."""
        from mmfree.pymodel import trigram as TG
        from mmfree.pymodel.speculative import accept_walk, greedy_pick

        hw, csr = self.hw, self.csr
        line = 4 * (1 + p.slots)
        trig = np.frombuffer(self.ddr.read(base["TABLE_BASE"], p.n_sets * p.ways * line), dtype="<u4")
        big = np.frombuffer(self.ddr.read(base["BIGRAM_BASE"], hw.draft_vocab * 4 * p.bigram_slots), dtype="<u4")
        table = TG.TrigramTable(p, hw.draft_vocab, None, trig.reshape(p.n_sets, p.ways, 1 + p.slots).copy(),
                                big.reshape(hw.draft_vocab, p.bigram_slots).copy())
        template = TG.make_template(hw.max_tokens - 1, hw.max_tokens - 1)
        guided = RM.decode("GEN_DRAFT", csr["GEN_DRAFT"])["tree"] == RM.TreeRule.COUNT_GUIDED
        ctx, eos = RM.decode("GEN_CONTEXT", csr["GEN_CONTEXT"]), RM.decode("GEN_EOS", csr["GEN_EOS"])
        prev, root = ctx["prev"], ctx["root"]
        eos = eos["token"] if eos["enable"] else None
        outs = (self._reg64("STATE_OUT"), base["STATE_ALT"])      # the first pass writes STATE_OUT
        cur, count, done = self._reg64("STATE_IN"), 0, False
        while not done:
            try:                            # a token without a bigram row: GEN_CONTEXT or a table slot
                if root >= hw.draft_vocab:
                    raise IndexError(root)
                toks, parents = TG.draft_tree_guided(table, prev, root, hw.max_tokens - 1) if guided else \
                    TG.draft_tree(table, prev, root, template)
            except IndexError:
                raise ProgramError(f"GENERATE met a token >= DRAFT_VOCAB ({hw.draft_vocab}) in GEN_CONTEXT or in a "
                                   "table slot: its bigram row does not exist (undefined in the contract)") from None
            out = outs[csr["GEN_PASSES"] % 2]
            self._pass(toks, parents, cur, out)
            csr["GEN_PASSES"] += 1
            csr["GEN_NODES"] += len(toks)
            def emit(t: int) -> bool:       # each emitted token: update the table, write its set and GEN_OUT
                nonlocal prev, root, count
                table.update(prev, root, t)
                s = TG.set_index(prev, root, p.sets_log2)
                self.ddr.write(base["TABLE_BASE"] + s * p.ways * line, table.trig[s].astype("<u4").tobytes())
                self.ddr.write(base["GEN_OUT"] + 4 * count, struct.pack("<I", t))
                count += 1
                csr["GEN_COUNT"] = count
                prev, root = root, t
                return count == n_out or t == eos

            # the walk: emit the node's argmax, go on to the child drafting it
            _, node, done = accept_walk(toks, parents, lambda i, cands: greedy_pick(self.emu.arg[i], cands), emit)
            cur = out + node * stride
        self.ddr.write(base["BIGRAM_BASE"], table.bigram.astype("<u4").tobytes())
        return cur

    def write_mem(self, addr: int, data: bytes) -> None:
        self.ddr.write(addr, bytes(data))

    def read_mem(self, addr: int, n: int) -> bytes:
        return self.ddr.read(addr, n)

    def wait_irq(self, timeout_s: float = 10.0) -> bool:
        return bool(self.csr["IRQ_STATUS"])
