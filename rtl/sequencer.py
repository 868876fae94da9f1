"""The sequencer: run control, program fetch, decode and checks, the hazard scoreboard, and dispatch to the
datapath's four engines (:mod:`mmfree.rtl.datapath`).

A run (``start``): check NUM_TOKENS and the base registers' alignment, read and check the program header,
read the token ids (and the tree parents) into registers, then fetch the program through its own AXI read
client and execute it in order. Every instruction is decoded and checked exactly as
:meth:`mmfree.sim.emulator.Emulator.check` does (same error codes, same order): the
:class:`~mmfree.rtl.decoder.Decoder` is generated from the ISA table (:data:`mmfree.rtl.isa.OPS` and its
constraint table :data:`mmfree.rtl.isa.LEGAL`); it decodes the word as it is fetched and its outputs and check
results are registered with the instruction register, so DECODE, RANGE and dispatch read registers (the
window check is pipelined the same way, :class:`~mmfree.rtl.decoder.WindowCheck`; a failed window check is
recorded as a flag and its code written in ABORT's first cycle, off the comparison's path, and so are the
codes of the setup checks in CHECK, HDR and PAR). An instruction
is dispatched when its engine has room and no earlier unfinished instruction writes a resource it reads
(except LOAD destinations, read element by element as they arrive) or touches a resource it writes (the
:class:`~mmfree.rtl.scoreboard.Scoreboard`; the read/write sets come from :func:`mmfree.rtl.isa.resources`).
PREFETCHes wait for their MATVEC in a ``lib.fifo.SyncFIFO``. ``HALT`` waits for every engine and the write
channel, then reports DONE.

On an error the run aborts: dispatch stops, the AXI engines stop issuing and drain what is on the bus,
the datapath is reset, and STATUS shows ERROR with the code, detail and PC.

Parts (each a component): the control read client (:class:`~mmfree.rtl.axi.DmaReadClient`: header, tokens,
parents, program), the decoder, the scoreboard, the prefetch queue; the run FSM is this module's
(:meth:`Sequencer._run_setup` for START to the first fetch, :meth:`Sequencer._run_program` for the rest).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import DmaReadClient, cmd_layout
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.decoder import ADDR_INTERNAL, ENGINE_ID, ENGINES, Decoder, WindowCheck, field, instr_layout  # noqa: F401
from mmfree.rtl.pipeline import width_for
from mmfree.rtl.scoreboard import ENGINE_SLOTS, Scoreboard  # noqa: F401

#: :class:`~mmfree.rtl.decoder.Decoder` outputs the sequencer registers with the instruction register.
DECODED = ("engine", "to_engine", "rmask", "wmask", "rows", "count", "base", "skip_store")

#: Opcodes RANGE and WAIT tell apart, decoded as the instruction is fetched and registered with the IR.
DISPATCH_OPS = ("HALT", "SYNC", "PREFETCH", "MATVEC", "SETC", "SETF")

#: A PREFETCH waiting for its MATVEC (the operands the MATVEC must repeat).
PREFETCH_ENTRY = data.StructLayout({"addr": unsigned(ADDR_INTERNAL + 1), "rows": unsigned(32),
                                    "count": unsigned(32)})


def dispatch_layout(addr_width: int) -> data.StructLayout:
    """What the sequencer hands an engine: the instruction register, its DDR address and derived sizes."""
    return data.StructLayout({
        "engine": unsigned(2), "op": unsigned(8),
        "ir": instr_layout(),
        "addr": unsigned(addr_width),
        "bpr": unsigned(16),           # MATVEC: bus beats per row
        "skip_store": unsigned(1),     # STORE: skipped (FLAGS.WRITE_LOGITS clear)
    })


def fetch_layout(addr_width: int) -> data.StructLayout:
    """A weight fetch: ``rows`` packed rows of ``bpr`` bus beats each from ``addr``."""
    return data.StructLayout({"addr": unsigned(addr_width), "rows": unsigned(32), "bpr": unsigned(16)})


def datapath_signature(hw: HwConfig, addr_width: int) -> wiring.Signature:
    """The sequencer -> datapath port, as the sequencer sees it: ``issue`` with ``dispatch`` (an instruction for
    engine ``dispatch.engine``), ``fetch`` (weight fetches), the pass (``k``, ``write_logits``, ``tokens``,
    ``parents``) and its constants (``act_frac``, ``c_m[p]``, ``c_e[p]``); back: ``done_pulse`` (one bit per
    engine, :data:`~mmfree.rtl.decoder.ENGINE_ID` order), ``error`` / ``error_code`` (the datapath's sticky
    error), ``arg_last`` (token k-1's argmax)."""
    k = hw.max_tokens
    return wiring.Signature({
        "issue": Out(1), "dispatch": Out(dispatch_layout(addr_width)),
        "fetch": Out(stream.Signature(fetch_layout(addr_width))),
        "k": Out(range(k + 1)), "write_logits": Out(1),
        "tokens": Out(data.ArrayLayout(unsigned(32), k)),
        "parents": Out(data.ArrayLayout(signed(width_for(k) + 1), k)),
        "act_frac": Out(8),
        "c_m": Out(data.ArrayLayout(unsigned(32), I.SLOTS)), "c_e": Out(data.ArrayLayout(signed(32), I.SLOTS)),
        "done_pulse": In(len(ENGINES)), "error": In(1), "error_code": In(32), "arg_last": In(32),
    })


class Sequencer(wiring.Component):
    """Run control + fetch/decode/check/dispatch (see the module docstring)."""

    def __init__(self, hw: HwConfig, addr_width: int = 40):
        self.hw, self.addr_width = hw, addr_width
        k = hw.max_tokens
        self.kbits = width_for(k)
        regs = {"reg_" + n.lower(): In(64) for n in RM.ADDRESS_REGS}
        super().__init__({
            **regs,
            "start": In(1), "soft_reset": In(1), "num_tokens": In(32), "flags": In(32),
            # status to the CSR block
            "busy": Out(1), "done": Out(1), "error": Out(1), "error_code": Out(32), "pc": Out(32),
            "finished": Out(1), "cycles": Out(64), "argmax": Out(32),
            # the control read client (header, tokens, parents, program)
            "ctl_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "ctl_data": In(stream.Signature(unsigned(8 * hw.bus_bytes))),
            # AXI engines
            "axi_abort": Out(1), "rd_quiet": In(1), "wr_quiet": In(1), "rd_error": In(1), "wr_error": In(1),
            # the datapath (fetch: PREFETCH, or a MATVEC without one, for the ternary engine's weight queue)
            "core_rst": Out(1), "tree": Out(1),
            "dp": Out(datapath_signature(hw, addr_width)),
            # the draft-verify loop's passes: tokens and parents from the loop, not from TOKENS / PARENTS
            "ext": In(1), "ext_tokens": In(data.ArrayLayout(unsigned(32), k)),
            "ext_parents": In(data.ArrayLayout(signed(self.kbits + 1), k)),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        m.submodules.ctl = ctl = DmaReadClient(self.addr_width, hw.bus_bytes, max_fields=4)
        wiring.connect(m, ctl.cmd, wiring.flipped(self.ctl_cmd))
        wiring.connect(m, wiring.flipped(self.ctl_data), ctl.beat)
        m.submodules.dec = pre = Decoder(hw.max_width, hw.max_tokens, hw.bus_bytes)   # the word being fetched
        m.submodules.win = win = WindowCheck(hw.max_tokens, hw.bus_bytes, hw.max_width)
        m.submodules.sb = sb = Scoreboard()
        run_start = Signal()               # START accepted: clear the scoreboard and the prefetch queue
        m.submodules.pq = pq = ResetInserter(run_start)(fifo.SyncFIFO(width=PREFETCH_ENTRY.size,
                                                                       depth=I.PREFETCH_DEPTH))
        s = self._run_state(m)
        # the decoder's outputs, registered with the instruction register (the decode of ``s.ir``)
        dec = SimpleNamespace(**{n: Signal.like(getattr(pre, n), name="dec_" + n) for n in DECODED})
        s.ctl, s.dec, s.sb, s.pq, s.run_start = ctl, dec, sb, pq, run_start
        s.win, s.addr_r, s.bpr, s.pre = win, win.addr, win.bpr, pre
        s.pq_head = data.View(PREFETCH_ENTRY, pq.r_data)
        m.d.comb += ctl.rec.ready.eq(s.rd_ready)
        m.d.comb += [sb.clear.eq(run_start),
                     sb.done_pulse.eq(self.dp.done_pulse), sb.engine.eq(dec.engine), sb.rmask.eq(dec.rmask),
                     sb.wmask.eq(dec.wmask), self.dp.issue.eq(sb.issue)]
        m.d.comb += [win.w.eq(ctl.rec.payload.w.as_value()), win.k.eq(s.k),
                     pre.ir.eq(ctl.rec.payload.w.as_value()), pre.k.eq(s.k), pre.write_logits.eq(s.wlog)]
        for i, r in enumerate(s.regs):
            m.d.comb += [win.bases[i].eq(r), pre.bases[i].eq(r)]
        d, fetch = self.dp.dispatch, self.dp.fetch
        m.d.comb += [d.engine.eq(dec.engine), d.op.eq(s.ir.opcode), d.ir.eq(s.ir), d.addr.eq(s.addr_r[:self.addr_width]),
                     d.bpr.eq(s.bpr), d.skip_store.eq(dec.skip_store),
                     fetch.payload.addr.eq(s.addr_r[:self.addr_width]), fetch.payload.rows.eq(dec.rows),
                     fetch.payload.bpr.eq(s.bpr),
                     pq.w_data.eq(Cat(s.addr_r, dec.rows, dec.count))]
        with m.If(self.soft_reset & s.busy):
            m.d.sync += s.stop_requested.eq(1)
        with m.FSM(name="seq"):
            self._run_setup(m, s)
            self._run_program(m, s)
        return m

    def _run_state(self, m) -> SimpleNamespace:
        """The run's registers (status, counters, tokens, parents, SETC / SETF values, the instruction register)
        and their outputs; ``fail(code, detail)`` records an error and goes to ABORT; ``fail_range(base)`` goes to
        ABORT, whose first cycle writes ERR_ADDRESS_RANGE with detail ``base`` (before STATUS shows the error)."""
        K = self.hw.max_tokens
        s = SimpleNamespace(
            busy=Signal(), done=Signal(), err=Signal(), code=Signal(32), pc=Signal(32), cycles=Signal(64),
            argmax=Signal(32), finished=Signal(), k=Signal(range(K + 1)), tree=Signal(), wlog=Signal(),
            ext=Signal(),                  # this run's tokens / parents come from ext_tokens / ext_parents
            tokens=Array(Signal(32, name=f"tok{t}") for t in range(K)),
            parents=Array(Signal(signed(self.kbits + 1), name=f"par{t}") for t in range(K)),
            act_frac=Signal(8), c_m=Array(Signal(32, name=f"cm{p}") for p in range(I.SLOTS)),
            c_e=Array(Signal(signed(32), name=f"ce{p}") for p in range(I.SLOTS)),
            core_rst=Signal(), abort=Signal(), stop_requested=Signal(),   # SOFT_RESET while busy: no error code
            ir=Signal(instr_layout()), n_instr=Signal(32), n_fetched=Signal(32), widx=Signal(range(K + 1)),
            roots=Signal(range(K + 1)),    # streams a tree parent may root in: min(header streams, K), at least 1
            # the DECODE checks, computed from the word being fetched and registered with the IR
            chk_bad=Signal(), chk_wide=Signal(), chk_misaligned=Signal(), chk_ranged=Signal(),
            is_op={n: Signal(name=f"is_{n.lower()}") for n in DISPATCH_OPS},   # the IR's opcode is n
            pq_match=Signal(3),            # the PREFETCH match (addr, rows, count), registered in DECODE for RANGE
            # a window check failed (base register ``range_base``): ABORT's first cycle writes the code, so that
            # no comparison's carry chain feeds the error-code register shared by every state
            range_failed=Signal(), range_base=Signal(8),
            # a setup check on the fetched word or the registers failed (CHECK, HDR, PAR): its code is
            # ``late_code``, written in every cycle of those states whatever the check says, and ABORT's first
            # cycle copies it, so that the comparisons steer only this flag and the next state, not the code
            late=Signal(), late_code=Signal(32),
            # the setup window checks, registered a cycle ahead (the base registers are steady during a run, ``k``
            # from START on, the instruction count from HDR on): the header, the program, the tokens, the parents
            ok_hdr=Signal(), ok_prog=Signal(), ok_tok=Signal(), ok_par=Signal(),
            fetched_all=Signal(),          # n_fetched == n_instr, registered with them (off the read's ready)
            # the control read's ready, a register: set on entering (or staying in) HDR, TOK, PAR, and FETCH
            # with words left; cleared on leaving them (FETCH's abort checks are not on its path)
            rd_ready=Signal(),
            regs=[getattr(self, "reg_" + n.lower()) for n in RM.ADDRESS_REGS])
        m.d.comb += [self.busy.eq(s.busy), self.done.eq(s.done), self.error.eq(s.err), self.error_code.eq(s.code),
                     self.pc.eq(s.pc), self.cycles.eq(s.cycles), self.argmax.eq(s.argmax),
                     self.finished.eq(s.finished), self.dp.k.eq(s.k), self.tree.eq(s.tree),
                     self.dp.write_logits.eq(s.wlog), self.dp.act_frac.eq(s.act_frac), self.core_rst.eq(s.core_rst),
                     self.axi_abort.eq(s.abort)]
        for t in range(K):
            m.d.comb += [self.dp.tokens[t].eq(s.tokens[t]), self.dp.parents[t].eq(s.parents[t])]
        for p in range(I.SLOTS):
            m.d.comb += [self.dp.c_m[p].eq(s.c_m[p]), self.dp.c_e[p].eq(s.c_e[p])]
        m.d.sync += [s.finished.eq(0), s.core_rst.eq(0), s.rd_ready.eq(0)]   # a state that reads sets rd_ready
        with m.If(s.busy):
            m.d.sync += s.cycles.eq(s.cycles + 1)

        def code_of(c, detail=0):
            return c | (Const(detail, 24) << 8) if isinstance(detail, int) else c | (detail << 8)

        def fail(c, detail=0):
            m.d.sync += s.code.eq(code_of(c, detail))
            m.next = "ABORT"

        def fail_late():
            m.d.sync += s.late.eq(1)
            m.next = "ABORT"

        def fail_range(base):
            m.d.sync += [s.range_failed.eq(1), s.range_base.eq(base)]
            m.next = "ABORT"

        def ctl_read(a, words, fields):
            """Request ``words`` 32-bit words at byte address ``a`` (4-byte aligned) as records of ``fields``."""
            m.d.comb += [s.ctl.req.eq(1), s.ctl.addr.eq(a[:self.addr_width]), s.ctl.words.eq(words),
                         s.ctl.fields.eq(fields)]

        s.fail, s.fail_late, s.fail_range = fail, fail_late, fail_range
        s.code_of, s.ctl_read = code_of, ctl_read
        return s

    @contextmanager
    def _unless_stopping(self, m, s):
        """The one abort check of every state that waits on the engines: SOFT_RESET, a datapath error, an AXI
        error response (in this order); the body runs only when none is pending."""
        with m.If(s.stop_requested):
            m.next = "ABORT"
        with m.Elif(self.dp.error):
            s.fail(self.dp.error_code[:8], self.dp.error_code[8:32])
        with m.Elif(self.rd_error | self.wr_error):
            s.fail(RM.ERR_AXI)
        with m.Else():
            yield

    def _run_setup(self, m, s):
        """IDLE to PROGREQ: START, the NUM_TOKENS and alignment checks, the header, tokens and parents."""
        K, regs, rec = self.hw.max_tokens, s.regs, s.ctl.rec
        # the program window (``PROG_BASE >= MEM_LO`` and ``PROG_BASE + 32 + 16 n <= MEM_HI``, n: the header's
        # instruction count) as ``16 n <= room`` with ``room = MEM_HI - PROG_BASE - 32`` registered: HDR adds one
        # 32-bit compare of ``n`` with ``room / 16`` instead of an add and a 64-bit compare
        room, prog_lo_ok = Signal(signed(67)), Signal()
        nb = 32 + 4                                  # 16 n < 2**36
        m.d.sync += [room.eq(regs[I.BASE["MEM_HI"]] - regs[0] - I.HEADER_BYTES),
                     prog_lo_ok.eq(regs[0] >= regs[I.BASE["MEM_LO"]])]
        room_neg, room_big = room[-1], ~room[-1] & room[nb:].any()

        def prog_fits(n):
            return prog_lo_ok & ~room_neg & (room_big | (n <= room[4:nb]))
        # the token and parent windows in two steps (the end address, then the compares): ``k`` is set by START,
        # so they are exact from the third cycle after it, before PROGRANGE (after CHECK and at least one HDR cycle)
        tok_end, par_end = Signal(65), Signal(65)
        lo, hi = regs[I.BASE["MEM_LO"]], regs[I.BASE["MEM_HI"]]
        m.d.sync += [tok_end.eq(regs[I.BASE["TOKENS"]] + (s.k << 2)), par_end.eq(regs[I.BASE["PARENTS"]] + (s.k << 2)),
                     s.ok_hdr.eq(self._header_fits(regs[0], lo, hi)),
                     s.ok_tok.eq((regs[I.BASE["TOKENS"]] >= lo) & (tok_end <= hi)),
                     s.ok_par.eq((regs[I.BASE["PARENTS"]] >= lo) & (par_end <= hi))]
        with m.State("IDLE"):
            with m.If(self.soft_reset):
                m.d.sync += [s.done.eq(0), s.err.eq(0), s.code.eq(0), s.core_rst.eq(1)]
            with m.Elif(self.start):
                m.d.comb += s.run_start.eq(1)
                m.d.sync += [s.busy.eq(1), s.done.eq(0), s.err.eq(0), s.code.eq(0), s.cycles.eq(0), s.pc.eq(0),
                             s.core_rst.eq(1), s.stop_requested.eq(0), s.k.eq(self.num_tokens[:self.kbits + 1]),
                             s.tree.eq(self.flags[1]), s.wlog.eq(self.flags[0]), s.act_frac.eq(0),
                             s.ext.eq(self.ext)]
                m.next = "CHECK"
        with m.State("CHECK"):
            nt = self.num_tokens
            nt_bad = (nt == 0) | (nt > K)
            bad = Signal(range(len(RM.ADDRESS_REGS) + 1))
            m.d.comb += bad.eq(len(RM.ADDRESS_REGS))
            for i in reversed(range(len(RM.ADDRESS_REGS))):
                nm = RM.ADDRESS_REGS[i]
                cond = regs[i][:6] != 0
                if nm == "PARENTS":
                    cond = cond & s.tree & ~s.ext
                if nm == "TOKENS":
                    cond = cond & ~s.ext
                if nm == "LOGITS":
                    cond = cond & s.wlog
                with m.If(cond):
                    m.d.comb += bad.eq(i)
            m.d.sync += s.late_code.eq(Mux(nt_bad, s.code_of(RM.ERR_NUM_TOKENS), s.code_of(RM.ERR_UNALIGNED, bad)))
            with m.If(nt_bad):
                s.fail_late()
            with m.Else():
                with m.If(bad != len(RM.ADDRESS_REGS)):
                    s.fail_late()
                with m.Elif(~s.ok_hdr):
                    s.fail_range(I.BASE["PROG_BASE"])
                with m.Else():
                    s.ctl_read(regs[0], I.HEADER_BYTES // 4, 4)
                    m.d.sync += s.rd_ready.eq(1)
                    m.next = "HDR"
        with m.State("HDR"):
            with m.If(~rec.valid):
                m.d.sync += s.rd_ready.eq(1)
            with m.Else():
                w = rec.payload.w
                bad_hdr = (w[0] != I.PROGRAM_MAGIC) | (w[1][:16] != I.ISA_VERSION)
                m.d.sync += [s.n_instr.eq(w[2]), s.roots.eq(Mux(w[3] == 0, 1, Mux(w[3] > K, K, w[3]))),
                             s.ok_prog.eq(prog_fits(w[2])),
                             s.late_code.eq(Mux(bad_hdr, s.code_of(RM.ERR_BAD_INSTRUCTION, 0),
                                                s.code_of(RM.ERR_TOO_WIDE, w[1][16:32])))]
                with m.If(bad_hdr):
                    s.fail_late()
                with m.Elif((w[1][16:32] << 4) > self.hw.max_width):
                    s.fail_late()
                with m.Else():
                    m.next = "PROGRANGE"
        with m.State("PROGRANGE"):
            with m.If(~s.ok_prog):
                s.fail_range(I.BASE["PROG_BASE"])
            with m.Elif(s.ext):
                for t in range(K):
                    m.d.sync += [s.tokens[t].eq(self.ext_tokens[t]), s.parents[t].eq(self.ext_parents[t])]
                m.next = "PROGREQ"
            with m.Elif(~s.ok_tok):
                s.fail_range(I.BASE["TOKENS"])
            with m.Elif(s.tree & ~s.ok_par):
                s.fail_range(I.BASE["PARENTS"])
            with m.Elif(~self.ctl_cmd.valid):
                s.ctl_read(regs[I.BASE["TOKENS"]], s.k, 1)
                m.d.sync += [s.widx.eq(0), s.rd_ready.eq(1)]
                m.next = "TOK"
        with m.State("TOK"):
            m.d.sync += s.rd_ready.eq(~rec.valid | (s.widx != s.k - 1))
            with m.If(rec.valid):
                m.d.sync += [s.tokens[s.widx].eq(rec.payload.w[0]), s.parents[s.widx].eq(s.widx - 1),
                             s.widx.eq(s.widx + 1)]
                with m.If(s.widx == s.k - 1):
                    with m.If(s.tree):
                        m.next = "PARREQ"
                    with m.Else():
                        m.next = "PROGREQ"
        with m.State("PARREQ"):
            with m.If(~self.ctl_cmd.valid):
                s.ctl_read(regs[I.BASE["PARENTS"]], s.k, 1)
                m.d.sync += [s.widx.eq(0), s.rd_ready.eq(1)]
                m.next = "PAR"
        with m.State("PAR"):
            with m.If(~rec.valid):
                m.d.sync += s.rd_ready.eq(1)
            with m.Else():
                q = rec.payload.w[0].as_signed()
                m.d.sync += [s.parents[s.widx].eq(q), s.widx.eq(s.widx + 1),
                             s.late_code.eq(s.code_of(RM.ERR_BAD_PARENT, s.widx))]
                with m.If(self._bad_parent(q, s.roots, s.widx)):     # -1 - s: a root of stream s < roots
                    s.fail_late()
                with m.Elif(s.widx == s.k - 1):
                    m.next = "PROGREQ"
                with m.Else():
                    m.d.sync += s.rd_ready.eq(1)
        with m.State("PROGREQ"):
            with m.If(~self.ctl_cmd.valid):
                with m.If(s.n_instr != 0):
                    s.ctl_read(regs[0] + I.HEADER_BYTES, s.n_instr << 2, 4)
                m.d.sync += [s.n_fetched.eq(0), s.fetched_all.eq(s.n_instr == 0), s.pc.eq(I.HEADER_BYTES),
                             s.rd_ready.eq(s.n_instr != 0)]
                m.next = "FETCH"

    @staticmethod
    def _header_fits(a, lo, hi):
        """``lo <= a`` and ``a + n <= hi`` (the header's window, ``n = HEADER_BYTES``, a power of two) with one carry
        chain each: ``hi - a`` (65 bits, signed) is at least ``n`` when it is not negative and has a bit at
        ``log2(n)`` or above."""
        assert I.HEADER_BYTES & (I.HEADER_BYTES - 1) == 0
        d = hi - a
        return (a >= lo) & ~d[-1] & d[(I.HEADER_BYTES - 1).bit_length():].any()

    @staticmethod
    def _bad_parent(q, roots, widx):
        """``q + roots < 0 or q >= widx`` for a signed 32-bit parent ``q`` and small unsigned ``roots`` / ``widx``,
        without a 32-bit carry chain: ``q + roots < 0`` is ``q < 0`` and ``~q >= roots`` (``~q = -q - 1``), and
        each comparison with a small value is "any bit above its width" or a compare of the low bits."""
        def ge_small(x, y):                      # x >= y: x unsigned (31 bits), y a narrow unsigned value
            n = len(y)
            return x[n:].any() | (x[:n] >= y)
        neg, mag = q[31], q[:31]
        return (neg & ge_small(~mag, roots)) | (~neg & ge_small(mag, widx))

    def _run_program(self, m, s):
        """FETCH to IDLE: fetch, decode and check, the window and PREFETCH match, dispatch, HALT's drain, abort."""
        dec, rec, fail = s.dec, s.ctl.rec, s.fail
        op = s.ir.opcode
        with m.State("FETCH"):
            # the read's ready is ``rd_ready`` (1 here while words are left): a record that arrives with a pending
            # abort is taken and dropped (the run ends in ABORT either way; the next run restarts the reader)
            with self._unless_stopping(m, s):
                with m.If(s.fetched_all):
                    fail(RM.ERR_PROGRAM)
                with m.Else():
                    m.d.sync += s.rd_ready.eq(~rec.valid)  # rec.ready is rd_ready: 1 here, whatever is pending
                    with m.If(rec.valid):
                        m.d.comb += s.win.load.eq(1)       # the window check's first stage, beside the IR
                        m.d.sync += [s.ir.eq(rec.payload.w.as_value()), s.n_fetched.eq(s.n_fetched + 1),
                                     s.fetched_all.eq(s.n_fetched + 1 == s.n_instr)]
                        m.d.sync += self._checks_of(s.pre, s)
                        m.next = "DECODE"
        with m.State("DECODE"):
            with m.If(s.chk_bad):
                fail(RM.ERR_BAD_INSTRUCTION, op)
            with m.Elif(s.chk_wide):
                fail(RM.ERR_TOO_WIDE, 0)
            with m.Elif(s.chk_misaligned):
                fail(RM.ERR_BAD_INSTRUCTION, op)
            with m.Else():
                m.next = "RANGE"
        prefetched = s.ir.matvec.flags[I.PREFETCHED.bit_length() - 1]
        head = s.pq_head
        # the queue and the operands are steady from DECODE to RANGE (the queue changes only in WAIT)
        m.d.sync += s.pq_match.eq(Cat(head.addr == s.addr_r, head.rows == dec.rows, head.count == dec.count))
        with m.State("RANGE"):
            # not the rows the oldest PREFETCH requested (its code is written whatever the window check says: a
            # failed window check overwrites it in ABORT's first cycle, so no code waits for the comparison)
            bad_matvec = s.is_op["MATVEC"] & Mux(prefetched, ~(s.pq.r_rdy & s.pq_match.all()), s.pq.r_rdy)
            with m.If(bad_matvec):
                m.d.sync += s.code.eq(s.code_of(RM.ERR_BAD_INSTRUCTION, op))
            with m.If(s.chk_ranged & ~s.win.in_window):
                s.fail_range(dec.base)
            with m.Elif(bad_matvec):
                m.next = "ABORT"
            with m.Else():
                m.next = "WAIT"
        with m.State("WAIT"):
            with self._unless_stopping(m, s):
                self._dispatch(m, s, prefetched)
        with m.State("DRAIN"):
            with self._unless_stopping(m, s):
                with m.If(s.sb.all_idle & self.wr_quiet):
                    m.d.comb += s.abort.eq(1)               # cancel the rest of the program prefetch
                    m.next = "QUIESCE"
        with m.State("QUIESCE"):
            m.d.comb += s.abort.eq(1)
            with m.If(self.rd_quiet & self.wr_quiet):
                m.d.sync += [s.busy.eq(0), s.done.eq(1), s.finished.eq(1), s.argmax.eq(self.dp.arg_last)]
                m.next = "IDLE"
        with m.State("ABORT"):
            m.d.comb += s.abort.eq(1)
            with m.If(s.range_failed):                  # ABORT's first cycle, before STATUS shows the error
                m.d.sync += [s.code.eq(s.code_of(RM.ERR_ADDRESS_RANGE, s.range_base)), s.range_failed.eq(0)]
            with m.If(s.late):                          # the same for CHECK's, HDR's and PAR's codes
                m.d.sync += [s.code.eq(s.late_code), s.late.eq(0)]
            with m.If(self.rd_quiet & self.wr_quiet):
                m.d.sync += [s.busy.eq(0), s.err.eq(~s.stop_requested), s.finished.eq(~s.stop_requested),
                             s.core_rst.eq(1)]
                with m.If(s.stop_requested):
                    m.d.sync += s.code.eq(0)
                m.next = "IDLE"

    @staticmethod
    def _checks_of(pre, s) -> list:
        """What to register with the IR from the decode of the word being fetched (``pre``: a :class:`Decoder`
        of it; the base registers, ``k`` and FLAGS are steady during a run, so the registers equal the decode of
        the IR): the outputs :data:`DECODED` the later states read, and the DECODE checks in the emulator's
        order (an unknown or illegal instruction, too wide, a misaligned DDR address) and whether RANGE checks
        the window."""
        return [*(getattr(s.dec, n).eq(getattr(pre, n)) for n in DECODED),
                *(s.is_op[n].eq(pre.ir.opcode == I.OPCODE[n]) for n in DISPATCH_OPS),
                s.chk_bad.eq(~pre.known | ~pre.legal), s.chk_wide.eq(pre.too_wide),
                s.chk_misaligned.eq(pre.has_addr & pre.misaligned), s.chk_ranged.eq(pre.has_addr & ~pre.skip_store)]

    def _dispatch(self, m, s, prefetched):
        """WAIT, no abort pending: HALT drains; SYNC waits for every engine; PREFETCH queues its rows; any other
        instruction goes when the scoreboard sees no hazard and its engine has room (SETC / SETF run here). The
        scoreboard's ``hazard`` is registered two cycles behind the masks (the IR's from DECODE on: the slots'
        compares in DECODE, the OR in RANGE), and WAIT issues only on leaving, so it is exact in every WAIT cycle."""
        dec, sb, fetch = s.dec, s.sb, self.dp.fetch
        next_instr = [s.pc.eq(s.pc + I.INSTR_BYTES), s.rd_ready.eq(~s.fetched_all)]   # to FETCH
        with m.If(s.is_op["HALT"]):
            m.next = "DRAIN"
        with m.Elif(s.is_op["SYNC"]):
            with m.If(sb.all_idle):
                m.d.sync += next_instr
                m.next = "FETCH"
        with m.Elif(s.is_op["PREFETCH"]):
            with m.If(s.pq.w_rdy & fetch.ready):
                m.d.comb += [fetch.valid.eq(1), s.pq.w_en.eq(1)]
                m.d.sync += next_instr
                m.next = "FETCH"
        with m.Elif(~sb.hazard & (~dec.to_engine | sb.room) & (~s.is_op["MATVEC"] | prefetched | fetch.ready)):
            m.d.sync += next_instr
            m.next = "FETCH"
            with m.If(s.is_op["SETC"]):
                slot = s.ir.setc.slot
                m.d.sync += [s.c_m[slot].eq(s.ir.setc.c_m), s.c_e[slot].eq(s.ir.setc.c_e)]
            with m.If(s.is_op["SETF"]):
                m.d.sync += s.act_frac.eq(s.ir.setf.act_frac)
            with m.If(s.is_op["MATVEC"]):
                with m.If(prefetched):
                    m.d.comb += s.pq.r_en.eq(1)
                with m.Else():
                    m.d.comb += fetch.valid.eq(1)
            with m.If(dec.to_engine):
                m.d.comb += sb.issue.eq(1)
