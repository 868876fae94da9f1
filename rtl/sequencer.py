"""The sequencer: run control, program fetch, decode and checks, the hazard scoreboard, and dispatch to the
datapath's four engines (:mod:`mmfree.rtl.datapath`).

A run (``start``): check NUM_TOKENS and the base registers' alignment, read and check the program header,
read the token ids (and the tree parents) into registers, then fetch the program through its own AXI read
client and execute it in order. Every instruction is decoded and checked exactly as
:meth:`mmfree.sim.emulator.Emulator.check` does (same error codes, same order). An instruction is
dispatched when its engine has room and no earlier unfinished instruction writes a resource it reads
(except LOAD destinations, read element by element as they arrive) or touches a resource it writes; the
read/write sets come from :func:`mmfree.rtl.isa.resources`, turned into a case table here (one source).
``HALT`` waits for every engine and the write channel, then reports DONE.

On an error the run aborts: dispatch stops, the AXI engines stop issuing and drain what is on the bus,
the datapath is reset, and STATUS shows ERROR with the code, detail and PC.
"""

from __future__ import annotations

import itertools

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import BEATS_WIDTH, WordUnpacker, cmd_layout
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.pipeline import width_for

ENGINES = ("load", "store", "vector", "matvec")
ENGINE_ID = {name: i for i, name in enumerate(ENGINES)}
#: in-flight instructions each engine may hold (the ternary engine fetches one command ahead)
ENGINE_SLOTS = {"load": 1, "store": 1, "vector": 1, "matvec": 2}
ADDR_INTERNAL = 64


def dispatch_layout(addr_width: int) -> data.StructLayout:
    """What the sequencer hands an engine: the instruction words, its DDR address and derived sizes."""
    return data.StructLayout({
        "engine": unsigned(2), "op": unsigned(8),
        "w0": unsigned(32), "w1": unsigned(32), "w2": unsigned(32), "w3": unsigned(32),
        "addr": unsigned(addr_width),
        "bpr": unsigned(16),           # MATVEC: bus beats per row
        "skip_store": unsigned(1),     # STORE: skipped (FLAGS.WRITE_LOGITS clear)
    })


def fetch_layout(addr_width: int) -> data.StructLayout:
    """A weight fetch: ``rows`` packed rows of ``bpr`` bus beats each from ``addr``."""
    return data.StructLayout({"addr": unsigned(addr_width), "rows": unsigned(32), "bpr": unsigned(16)})


def field(ir: Signal, name: str, op: str):
    """The operand ``name`` of instruction ``op`` from the 128-bit instruction register (isa.OPS layout)."""
    f = {f.name: f for f in I.OPS[op][1]}[name]
    v = ir[32 * f.word + f.lsb: 32 * f.word + f.lsb + f.width]
    return v.as_signed() if f.signed else v


def resource_table():
    """For every opcode, the operand fields its read/write sets depend on and the sets for each of their
    values: ``{op: (fields, {values: (read_mask, write_mask)})}`` computed with :func:`isa.resources`."""
    table = {}
    for op, (_, fields) in I.OPS.items():
        ranges = {}
        for f in fields:
            if f.name in ("offset", "count", "rows", "tstride", "c_m", "c_e", "vocab", "stride16", "act_frac"):
                continue
            ranges[f.name] = range(min(1 << f.width, 8))
        relevant = []
        for name, r in ranges.items():
            base = {n: 0 for n in ranges}
            outs = set()
            for v in r:
                args = dict(base, **{name: v})
                try:
                    outs.add(tuple(map(frozenset, I.resources(I.Instr(op, args)))))
                except KeyError:
                    outs.add(None)
            if len(outs) > 1:
                relevant.append(name)
        cases = {}
        for values in itertools.product(*[ranges[n] for n in relevant]):
            args = dict(zip(relevant, values))
            try:
                rd, wr = I.resources(I.Instr(op, args))
            except KeyError:
                continue
            cases[values] = (sum(1 << b for b in rd), sum(1 << b for b in wr))
        table[op] = (relevant, cases)
    return table


class Sequencer(wiring.Component):
    """Run control + fetch/decode/check/dispatch (see the module docstring)."""

    def __init__(self, hw: HwConfig, addr_width: int = 40):
        self.hw, self.addr_width = hw, addr_width
        k = hw.max_tokens
        self.kbits = width_for(k)
        self.DISPATCH = dispatch_layout(addr_width)
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
            # datapath
            "core_rst": Out(1),
            "issue": Out(1), "dispatch": Out(self.DISPATCH),
            # weight fetches (PREFETCH, or a MATVEC without one) for the ternary engine's weight queue
            "fetch": Out(stream.Signature(fetch_layout(addr_width))),
            "done_pulse": In(4),                     # one per engine (ENGINES order), in completion order
            "dp_error": In(1), "dp_error_code": In(32),
            "k": Out(range(k + 1)), "tree": Out(1), "write_logits": Out(1),
            "tokens": Out(data.ArrayLayout(unsigned(32), k)),
            "parents": Out(data.ArrayLayout(signed(self.kbits + 1), k)),
            "act_frac": Out(8),
            "c_m": Out(data.ArrayLayout(unsigned(32), I.SLOTS)),
            "c_e": Out(data.ArrayLayout(signed(32), I.SLOTS)),
            "dp_arg_last": In(32),
            # the draft-verify loop's passes: tokens and parents from the loop, not from TOKENS / PARENTS
            "ext": In(1), "ext_tokens": In(data.ArrayLayout(unsigned(32), k)),
            "ext_parents": In(data.ArrayLayout(signed(self.kbits + 1), k)),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        bb, W, K = hw.bus_bytes, hw.max_width, hw.max_tokens
        lg_bb = bb.bit_length() - 1
        m.submodules.unpack = up = WordUnpacker(bus_bytes=bb, max_fields=4)
        wiring.connect(m, wiring.flipped(self.ctl_data), up.beat)
        regs = [getattr(self, "reg_" + n.lower()) for n in RM.ADDRESS_REGS]
        reg = Array(regs)
        mem_lo, mem_hi = regs[I.BASE["MEM_LO"]], regs[I.BASE["MEM_HI"]]

        # ---- run state ------------------------------------------------------------------------------------
        busy, done, err = Signal(), Signal(), Signal()
        code = Signal(32)
        pc = Signal(32)
        cycles = Signal(64)
        argmax = Signal(32)
        finished = Signal()
        k = Signal(range(K + 1))
        tree, wlog = Signal(), Signal()
        ext = Signal()                     # this run's tokens / parents come from ext_tokens / ext_parents
        tokens = Array(Signal(32, name=f"tok{t}") for t in range(K))
        parents = Array(Signal(signed(self.kbits + 1), name=f"par{t}") for t in range(K))
        act_frac = Signal(8)
        c_m = Array(Signal(32, name=f"cm{p}") for p in range(I.SLOTS))
        c_e = Array(Signal(signed(32), name=f"ce{p}") for p in range(I.SLOTS))
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.error.eq(err), self.error_code.eq(code),
                     self.pc.eq(pc), self.cycles.eq(cycles), self.argmax.eq(argmax), self.finished.eq(finished),
                     self.k.eq(k), self.tree.eq(tree), self.write_logits.eq(wlog), self.act_frac.eq(act_frac)]
        for t in range(K):
            m.d.comb += [self.tokens[t].eq(tokens[t]), self.parents[t].eq(parents[t])]
        for p in range(I.SLOTS):
            m.d.comb += [self.c_m[p].eq(c_m[p]), self.c_e[p].eq(c_e[p])]
        m.d.sync += finished.eq(0)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        core_rst = Signal()
        m.d.comb += self.core_rst.eq(core_rst)
        m.d.sync += core_rst.eq(0)

        def fail(c, detail=0):
            m.d.sync += [code.eq(c | (Const(detail, 24) << 8) if isinstance(detail, int) else c | (detail << 8))]
            m.next = "ABORT"

        # ---- scoreboard ------------------------------------------------------------------------------------
        NR = I.N_RESOURCES
        streamed = sum(1 << b for b in I.STREAMED)
        slots = [(e, s) for e in ENGINES for s in range(ENGINE_SLOTS[e])]
        sb_valid = {es: Signal(name=f"sb_v_{es[0]}{es[1]}") for es in slots}
        sb_rd = {es: Signal(NR, name=f"sb_r_{es[0]}{es[1]}") for es in slots}
        sb_wr = {es: Signal(NR, name=f"sb_w_{es[0]}{es[1]}") for es in slots}
        inflight_rd = Signal(NR)
        inflight_wr = Signal(NR)
        m.d.comb += [inflight_rd.eq(0), inflight_wr.eq(0)]
        acc_r, acc_w = Const(0, NR), Const(0, NR)
        for es in slots:
            acc_r = acc_r | Mux(sb_valid[es], sb_rd[es], 0)
            acc_w = acc_w | Mux(sb_valid[es], sb_wr[es], 0)
        m.d.comb += [inflight_rd.eq(acc_r), inflight_wr.eq(acc_w)]
        all_idle = Signal()
        m.d.comb += all_idle.eq(~Cat(*sb_valid.values()).any())
        # completions: the oldest slot of the engine (matvec slots form a 2-entry FIFO: slot 0 is the oldest)
        for e in ENGINES:
            with m.If(self.done_pulse[ENGINE_ID[e]]):
                if ENGINE_SLOTS[e] == 1:
                    m.d.sync += sb_valid[(e, 0)].eq(0)
                else:
                    m.d.sync += [sb_valid[(e, 0)].eq(sb_valid[(e, 1)]), sb_rd[(e, 0)].eq(sb_rd[(e, 1)]),
                                 sb_wr[(e, 0)].eq(sb_wr[(e, 1)]), sb_valid[(e, 1)].eq(0)]

        # ---- the instruction register and its decode --------------------------------------------------------
        ir = Signal(128)
        op = Signal(8)
        m.d.comb += op.eq(ir[0:8])
        n_instr = Signal(32)
        n_fetched = Signal(32)
        opc = {name: I.OPCODE[name] for name in I.OPS}
        known = Signal()
        m.d.comb += known.eq(0)
        for name in I.OPS:
            with m.If(op == opc[name]):
                m.d.comb += known.eq(1)
        # read/write sets
        rmask, wmask = Signal(NR), Signal(NR)
        table = resource_table()
        with m.Switch(op):
            for name, (relevant, cases) in table.items():
                with m.Case(opc[name]):
                    if not relevant:
                        r, w = cases[()]
                        m.d.comb += [rmask.eq(r), wmask.eq(w)]
                    else:
                        sel = Cat(*[field(ir, n, name)[:3] for n in relevant])
                        with m.Switch(sel):
                            for values, (r, w) in cases.items():
                                key = 0
                                for i, v in enumerate(values):
                                    key |= v << (3 * i)
                                with m.Case(key):
                                    m.d.comb += [rmask.eq(r), wmask.eq(w)]
        engine = Signal(2)
        to_engine = Signal()
        for name in I.OPS:
            e = I.engine_of(name)
            if e in ENGINE_ID:
                with m.If(op == opc[name]):
                    m.d.comb += [engine.eq(ENGINE_ID[e]), to_engine.eq(1)]

        # operand legality (Emulator.check, step 1)
        def F(name, o):
            return field(ir, name, o)

        base = ir[24:28]
        base_ok = base < I.BASE["MEM_LO"]
        legal = Signal()
        m.d.comb += legal.eq(0)
        with m.Switch(op):
            with m.Case(opc["HALT"], opc["SYNC"]):
                m.d.comb += legal.eq(1)
            with m.Case(opc["SETC"]):
                m.d.comb += legal.eq(F("slot", "SETC") < I.SLOTS)
            with m.Case(opc["SETF"]):
                af = F("act_frac", "SETF")
                m.d.comb += legal.eq((af > N.SIG_STEPS_LOG2) & (af <= N.FRAC_MAX))
            with m.Case(opc["LOAD"]):
                dst, fl = F("dst", "LOAD"), F("fields", "LOAD")
                m.d.comb += legal.eq((dst <= I.LD_NORM) & Mux(dst == I.LD_NORM, (fl >= 2) & (fl <= 1 + I.SLOTS), fl == 1)
                                     & (F("count", "LOAD") != 0) & base_ok)
            with m.Case(opc["STORE"]):
                src, flg = F("src", "STORE"), F("flags", "STORE")
                cnt = F("count", "STORE")
                m.d.comb += legal.eq((src <= I.ST_ARG) & ((flg & ~I.STORE_IF_LOGITS & 0xFF) == 0) & (cnt != 0) & base_ok
                                     & ((src != I.ST_ARG) | (cnt == 1)))
            with m.Case(opc["EMBED"]):
                cnt = F("count", "EMBED")
                m.d.comb += legal.eq((cnt != 0) & (F("vocab", "EMBED") != 0)
                                     & ((F("stride16", "EMBED") << 4) >= (cnt << 2)) & base_ok)
            with m.Case(opc["QSTATS"]):
                npj = F("nproj", "QSTATS")
                m.d.comb += legal.eq((F("src", "QSTATS") <= I.SRC_A) & (npj >= 1) & (npj <= I.SLOTS)
                                     & (F("count", "QSTATS") != 0))
            with m.Case(opc["QCODES"]):
                m.d.comb += legal.eq((F("src", "QCODES") <= I.SRC_A) & (F("slot", "QCODES") < I.SLOTS)
                                     & (F("bank", "QCODES") < I.BANKS) & (F("count", "QCODES") != 0))
            with m.Case(opc["HGRN"]):
                m.d.comb += legal.eq(F("count", "HGRN") != 0)
            with m.Case(opc["MATVEC"]):
                fl = F("flags", "MATVEC")
                hf = fl & (I.HEAD_FIRST | I.HEAD_LAST)
                m.d.comb += legal.eq((F("bank", "MATVEC") < I.BANKS) & (F("slot", "MATVEC") < I.SLOTS)
                                     & (F("epi", "MATVEC") <= I.EPI_HEAD) & (F("dst", "MATVEC") <= I.DST_T2)
                                     & ((fl & ~(I.HEAD_FIRST | I.HEAD_LAST | I.PREFETCHED) & 0xF) == 0)
                                     & ((hf == 0) | (F("epi", "MATVEC") == I.EPI_HEAD))
                                     & (F("rows", "MATVEC") != 0) & (F("count", "MATVEC") != 0) & base_ok)
            with m.Case(opc["PREFETCH"]):
                m.d.comb += legal.eq((F("rows", "PREFETCH") != 0) & (F("count", "PREFETCH") != 0) & base_ok)
        # widths (step 2): every "count" operand is the word 2 or 3 field of its op
        count = Signal(32)
        m.d.comb += count.eq(0)
        for name, (_, fields) in I.OPS.items():
            if any(f.name == "count" for f in fields):
                with m.If(op == opc[name]):
                    m.d.comb += count.eq(F("count", name))
        too_wide = Signal()
        is_mv = (op == opc["MATVEC"]) | (op == opc["PREFETCH"])
        rows = ir[64:96]                  # MATVEC and PREFETCH keep rows in word 2
        m.d.comb += too_wide.eq((count > W) | (is_mv & (rows > W)))
        # address (step 3)
        has_addr = Signal()
        m.d.comb += has_addr.eq((op == opc["LOAD"]) | (op == opc["STORE"]) | (op == opc["EMBED"]) | is_mv)
        addr = Signal(ADDR_INTERNAL + 1)
        m.d.comb += addr.eq(reg[base[:3]] + ir[32:64])
        misaligned = Signal()
        m.d.comb += misaligned.eq(Mux(is_mv, addr[:4] != 0, addr[:2] != 0)
                                  | ((op == opc["STORE"]) & (ir[96:98] != 0)))
        skip_store = Signal()
        m.d.comb += skip_store.eq((op == opc["STORE"]) & F("flags", "STORE")[0] & ~wlog)
        # span operands (step 4): span = mul_a * mul_b + mul_c
        div5 = ((count[:16] + 4) * 52429) >> 18                     # ceil(count / 5), exact below 2**16
        row_bytes = ((div5 + (N.ROW_ALIGN_BYTES - 1)) >> 4) << 4     # ... rounded up to 16 bytes
        mul_a, mul_b, mul_c = Signal(32), Signal(32), Signal(34)
        with m.Switch(op):
            with m.Case(opc["LOAD"]):
                m.d.comb += [mul_a.eq(count), mul_b.eq(F("fields", "LOAD") << 2), mul_c.eq(0)]
            with m.Case(opc["STORE"]):
                m.d.comb += [mul_a.eq(k - 1), mul_b.eq(F("tstride", "STORE")), mul_c.eq(count << 2)]
            with m.Case(opc["EMBED"]):
                m.d.comb += [mul_a.eq(F("vocab", "EMBED")), mul_b.eq(F("stride16", "EMBED") << 4), mul_c.eq(0)]
            with m.Case(opc["MATVEC"], opc["PREFETCH"]):
                m.d.comb += [mul_a.eq(rows), mul_b.eq(row_bytes), mul_c.eq(0)]
        span = Signal(66)
        addr_r = Signal(ADDR_INTERNAL + 1)
        bpr = Signal(16)

        # ---- the control read client ---------------------------------------------------------------------------
        ctl_valid = Signal()
        ctl_addr = Signal(self.addr_width)
        ctl_beats = Signal(BEATS_WIDTH)
        m.d.comb += [self.ctl_cmd.valid.eq(ctl_valid), self.ctl_cmd.payload.addr.eq(ctl_addr),
                     self.ctl_cmd.payload.beats.eq(ctl_beats)]
        with m.If(self.ctl_cmd.valid & self.ctl_cmd.ready):
            m.d.sync += ctl_valid.eq(0)
        up_start, up_skip, up_fields, up_nbeats = Signal(), Signal(range(bb // 4)), Signal(3), Signal(BEATS_WIDTH)
        m.d.comb += [up.start.eq(up_start), up.skip.eq(up_skip), up.fields.eq(up_fields), up.nbeats.eq(up_nbeats)]
        m.d.sync += up_start.eq(0)

        def ctl_read(a, nbytes_words, fields):
            """Request ``nbytes_words`` 32-bit words at byte address ``a`` (4-byte aligned) as records."""
            skip = a[2:lg_bb]
            nb = ((a[2:lg_bb] + nbytes_words + (bb // 4 - 1)) >> (lg_bb - 2))
            m.d.sync += [ctl_valid.eq(1), ctl_addr.eq(Cat(Const(0, lg_bb), a[lg_bb:self.addr_width])),
                         ctl_beats.eq(nb), up_start.eq(1), up_skip.eq(skip), up_fields.eq(fields), up_nbeats.eq(nb)]

        rec = up.rec
        widx = Signal(range(K + 1))
        abort = Signal()
        m.d.comb += self.axi_abort.eq(abort)
        issue = Signal()
        m.d.comb += self.issue.eq(issue)
        d = self.dispatch
        m.d.comb += [d.engine.eq(engine), d.op.eq(op), d.w0.eq(ir[0:32]), d.w1.eq(ir[32:64]), d.w2.eq(ir[64:96]),
                     d.w3.eq(ir[96:128]), d.addr.eq(addr_r[:self.addr_width]), d.bpr.eq(bpr),
                     d.skip_store.eq(skip_store)]
        # PREFETCHes waiting for their MATVEC: (address, rows, count), oldest first
        PD = I.PREFETCH_DEPTH
        pq_addr = [Signal(ADDR_INTERNAL + 1, name=f"pq_addr{i}") for i in range(PD)]
        pq_rows = [Signal(32, name=f"pq_rows{i}") for i in range(PD)]
        pq_cnt = [Signal(32, name=f"pq_cnt{i}") for i in range(PD)]
        pq_n = Signal(range(PD + 1))
        pq_push, pq_pop = Signal(), Signal()
        with m.If(pq_pop):
            for i in range(PD - 1):
                m.d.sync += [pq_addr[i].eq(pq_addr[i + 1]), pq_rows[i].eq(pq_rows[i + 1]), pq_cnt[i].eq(pq_cnt[i + 1])]
        for i in range(PD):
            with m.If(pq_push & (Mux(pq_pop, pq_n - 1, pq_n) == i)):
                m.d.sync += [pq_addr[i].eq(addr_r), pq_rows[i].eq(rows), pq_cnt[i].eq(count)]
        m.d.sync += pq_n.eq(pq_n + pq_push - pq_pop)
        prefetched = F("flags", "MATVEC")[2]
        pq_match = (pq_n != 0) & (pq_addr[0] == addr_r) & (pq_rows[0] == rows) & (pq_cnt[0] == count)
        fetch = self.fetch
        m.d.comb += [fetch.payload.addr.eq(addr_r[:self.addr_width]), fetch.payload.rows.eq(rows),
                     fetch.payload.bpr.eq(bpr)]
        stop_requested = Signal()           # SOFT_RESET while busy: abort without an error code
        with m.If(self.soft_reset & busy):
            m.d.sync += stop_requested.eq(1)

        def in_window(a, n):
            return (a >= mem_lo) & ((a + n) <= mem_hi)

        hdr_units = Signal(16)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.soft_reset):
                    m.d.sync += [done.eq(0), err.eq(0), code.eq(0), core_rst.eq(1)]
                with m.Elif(self.start):
                    m.d.sync += [busy.eq(1), done.eq(0), err.eq(0), code.eq(0), cycles.eq(0), pc.eq(0),
                                 core_rst.eq(1), stop_requested.eq(0),
                                 k.eq(self.num_tokens[:self.kbits + 1]),
                                 tree.eq(self.flags[1]), wlog.eq(self.flags[0]),
                                 act_frac.eq(0), ext.eq(self.ext)]
                    for es in slots:
                        m.d.sync += sb_valid[es].eq(0)
                    m.d.sync += pq_n.eq(0)
                    m.next = "CHECK"
            with m.State("CHECK"):
                nt = self.num_tokens
                with m.If((nt == 0) | (nt > K)):
                    fail(RM.ERR_NUM_TOKENS)
                with m.Else():
                    bad = Signal(range(len(RM.ADDRESS_REGS) + 1))
                    m.d.comb += bad.eq(len(RM.ADDRESS_REGS))
                    for i in reversed(range(len(RM.ADDRESS_REGS))):
                        nm = RM.ADDRESS_REGS[i]
                        cond = regs[i][:6] != 0
                        if nm == "PARENTS":
                            cond = cond & tree & ~ext
                        if nm == "TOKENS":
                            cond = cond & ~ext
                        if nm == "LOGITS":
                            cond = cond & wlog
                        with m.If(cond):
                            m.d.comb += bad.eq(i)
                    with m.If(bad != len(RM.ADDRESS_REGS)):
                        fail(RM.ERR_UNALIGNED, bad)
                    with m.Elif(~in_window(regs[0], I.HEADER_BYTES)):
                        fail(RM.ERR_ADDRESS_RANGE, I.BASE["PROG_BASE"])
                    with m.Else():
                        ctl_read(regs[0], I.HEADER_BYTES // 4, 4)
                        m.next = "HDR"
            with m.State("HDR"):
                m.d.comb += rec.ready.eq(1)
                with m.If(rec.valid):
                    w = rec.payload.w
                    m.d.sync += [n_instr.eq(w[2]), hdr_units.eq(w[1][16:32])]
                    with m.If((w[0] != I.PROGRAM_MAGIC) | (w[1][:16] != I.ISA_VERSION)):
                        fail(RM.ERR_BAD_INSTRUCTION, 0)
                    with m.Elif((w[1][16:32] << 4) > W):
                        fail(RM.ERR_TOO_WIDE, w[1][16:32])
                    with m.Else():
                        m.next = "PROGRANGE"
            with m.State("PROGRANGE"):
                with m.If(~in_window(regs[0], I.HEADER_BYTES + (n_instr << 4))):
                    fail(RM.ERR_ADDRESS_RANGE, I.BASE["PROG_BASE"])
                with m.Elif(ext):
                    for t in range(K):
                        m.d.sync += [tokens[t].eq(self.ext_tokens[t]), parents[t].eq(self.ext_parents[t])]
                    m.next = "PROGREQ"
                with m.Elif(~in_window(regs[I.BASE["TOKENS"]], k << 2)):
                    fail(RM.ERR_ADDRESS_RANGE, I.BASE["TOKENS"])
                with m.Elif(tree & ~in_window(regs[I.BASE["PARENTS"]], k << 2)):
                    fail(RM.ERR_ADDRESS_RANGE, I.BASE["PARENTS"])
                with m.Elif(~self.ctl_cmd.valid):
                    ctl_read(regs[I.BASE["TOKENS"]], k, 1)
                    m.d.sync += widx.eq(0)
                    m.next = "TOK"
            with m.State("TOK"):
                m.d.comb += rec.ready.eq(1)
                with m.If(rec.valid):
                    m.d.sync += [tokens[widx].eq(rec.payload.w[0]), parents[widx].eq(widx - 1), widx.eq(widx + 1)]
                    with m.If(widx == k - 1):
                        with m.If(tree):
                            m.next = "PARREQ"
                        with m.Else():
                            m.next = "PROGREQ"
            with m.State("PARREQ"):
                with m.If(~self.ctl_cmd.valid):
                    ctl_read(regs[I.BASE["PARENTS"]], k, 1)
                    m.d.sync += widx.eq(0)
                    m.next = "PAR"
            with m.State("PAR"):
                m.d.comb += rec.ready.eq(1)
                with m.If(rec.valid):
                    q = rec.payload.w[0].as_signed()
                    m.d.sync += [parents[widx].eq(q), widx.eq(widx + 1)]
                    with m.If((q < -1) | (q >= widx)):
                        fail(RM.ERR_BAD_PARENT, widx)
                    with m.Elif(widx == k - 1):
                        m.next = "PROGREQ"
            with m.State("PROGREQ"):
                with m.If(~self.ctl_cmd.valid):
                    with m.If(n_instr != 0):
                        ctl_read(regs[0] + I.HEADER_BYTES, n_instr << 2, 4)
                    m.d.sync += [n_fetched.eq(0), pc.eq(I.HEADER_BYTES)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(stop_requested):
                    m.next = "ABORT"
                with m.Elif(self.dp_error):
                    fail(self.dp_error_code[:8], self.dp_error_code[8:32])
                with m.Elif(self.rd_error | self.wr_error):
                    fail(RM.ERR_AXI)
                with m.Elif(n_fetched == n_instr):
                    fail(RM.ERR_PROGRAM)
                with m.Else():
                    m.d.comb += rec.ready.eq(1)
                    with m.If(rec.valid):
                        m.d.sync += [ir.eq(Cat(*[rec.payload.w[i] for i in range(4)])), n_fetched.eq(n_fetched + 1)]
                        m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(~known):
                    fail(RM.ERR_BAD_INSTRUCTION, op)
                with m.Elif(~legal):
                    fail(RM.ERR_BAD_INSTRUCTION, op)
                with m.Elif(too_wide):
                    fail(RM.ERR_TOO_WIDE, 0)
                with m.Elif(has_addr & misaligned):
                    fail(RM.ERR_BAD_INSTRUCTION, op)
                with m.Else():
                    m.d.sync += [span.eq(mul_a * mul_b + mul_c), addr_r.eq(addr),
                                 bpr.eq(row_bytes >> lg_bb)]
                    m.next = "RANGE"
            with m.State("RANGE"):
                with m.If(has_addr & ~skip_store & ~in_window(addr_r, span)):
                    fail(RM.ERR_ADDRESS_RANGE, base)
                with m.Elif((op == opc["MATVEC"]) & Mux(prefetched, ~pq_match, pq_n != 0)):
                    fail(RM.ERR_BAD_INSTRUCTION, op)        # not the rows the oldest PREFETCH requested
                with m.Else():
                    m.next = "WAIT"
            with m.State("WAIT"):
                raw = (rmask & inflight_wr & ~streamed) != 0
                war = (wmask & (inflight_rd | inflight_wr)) != 0
                room = Signal()
                m.d.comb += room.eq(0)
                for e in ENGINES:
                    with m.If(engine == ENGINE_ID[e]):
                        m.d.comb += room.eq(~sb_valid[(e, ENGINE_SLOTS[e] - 1)])
                with m.If(stop_requested):
                    m.next = "ABORT"
                with m.Elif(self.dp_error):
                    fail(self.dp_error_code[:8], self.dp_error_code[8:32])
                with m.Elif(self.rd_error | self.wr_error):
                    fail(RM.ERR_AXI)
                with m.Elif(op == opc["HALT"]):
                    m.next = "DRAIN"
                with m.Elif(op == opc["SYNC"]):
                    with m.If(all_idle):
                        m.d.sync += pc.eq(pc + I.INSTR_BYTES)
                        m.next = "FETCH"
                with m.Elif(op == opc["PREFETCH"]):
                    with m.If((pq_n != PD) & fetch.ready):
                        m.d.comb += [fetch.valid.eq(1), pq_push.eq(1)]
                        m.d.sync += pc.eq(pc + I.INSTR_BYTES)
                        m.next = "FETCH"
                with m.Elif(~raw & ~war & (~to_engine | room)
                            & ((op != opc["MATVEC"]) | prefetched | fetch.ready)):
                    m.d.sync += pc.eq(pc + I.INSTR_BYTES)
                    m.next = "FETCH"
                    with m.If(op == opc["SETC"]):
                        s = F("slot", "SETC")
                        m.d.sync += [c_m[s].eq(F("c_m", "SETC")), c_e[s].eq(F("c_e", "SETC"))]
                    with m.If(op == opc["SETF"]):
                        m.d.sync += act_frac.eq(F("act_frac", "SETF"))
                    with m.If(op == opc["MATVEC"]):
                        with m.If(prefetched):
                            m.d.comb += pq_pop.eq(1)
                        with m.Else():
                            m.d.comb += fetch.valid.eq(1)
                    with m.If(to_engine):
                        m.d.comb += issue.eq(1)
                        for e in ENGINES:
                            with m.If(engine == ENGINE_ID[e]):
                                if ENGINE_SLOTS[e] == 1:
                                    tgt = [(e, 0)]
                                else:
                                    tgt = [(e, 0), (e, 1)]
                                # the first free slot (a completion in this cycle frees slot 0 / shifts 1 -> 0)
                                done_now = self.done_pulse[ENGINE_ID[e]]
                                if len(tgt) == 1:
                                    m.d.sync += [sb_valid[tgt[0]].eq(1), sb_rd[tgt[0]].eq(rmask), sb_wr[tgt[0]].eq(wmask)]
                                else:
                                    s0, s1 = tgt
                                    with m.If(~sb_valid[s0] | (done_now & ~sb_valid[s1])):
                                        m.d.sync += [sb_valid[s0].eq(1), sb_rd[s0].eq(rmask), sb_wr[s0].eq(wmask)]
                                    with m.Else():
                                        with m.If(done_now):
                                            m.d.sync += [sb_valid[s0].eq(1), sb_rd[s0].eq(sb_rd[s1]), sb_wr[s0].eq(sb_wr[s1])]
                                        m.d.sync += [sb_valid[s1].eq(1), sb_rd[s1].eq(rmask), sb_wr[s1].eq(wmask)]
            with m.State("DRAIN"):
                with m.If(stop_requested):
                    m.next = "ABORT"
                with m.Elif(self.dp_error):
                    fail(self.dp_error_code[:8], self.dp_error_code[8:32])
                with m.Elif(self.rd_error | self.wr_error):
                    fail(RM.ERR_AXI)
                with m.Elif(all_idle & self.wr_quiet):
                    m.d.comb += abort.eq(1)               # cancel the rest of the program prefetch
                    m.next = "QUIESCE"
            with m.State("QUIESCE"):
                m.d.comb += abort.eq(1)
                with m.If(self.rd_quiet & self.wr_quiet):
                    m.d.sync += [busy.eq(0), done.eq(1), finished.eq(1), argmax.eq(self.dp_arg_last)]
                    m.next = "IDLE"
            with m.State("ABORT"):
                m.d.comb += abort.eq(1)
                with m.If(self.rd_quiet & self.wr_quiet):
                    m.d.sync += [busy.eq(0), err.eq(~stop_requested), finished.eq(~stop_requested),
                                 core_rst.eq(1)]
                    with m.If(stop_requested):
                        m.d.sync += code.eq(0)
                    m.next = "IDLE"
        return m
