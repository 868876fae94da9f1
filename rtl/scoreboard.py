"""The sequencer's hazard scoreboard: which resources the instructions in flight read and write.

Each engine has :data:`ENGINE_SLOTS` slots (the ternary engine fetches one command ahead, so it holds two, a
2-entry FIFO whose slot 0 is the oldest). A slot holds the read and write sets (:func:`mmfree.rtl.isa.resources`
as masks over :data:`mmfree.rtl.isa.N_RESOURCES`) of one dispatched instruction until its engine reports it
done; the sequencer holds an instruction back while ``inflight_rd`` / ``inflight_wr`` overlap what it touches.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import isa as I
from mmfree.rtl.decoder import ENGINE_ID, ENGINES

#: in-flight instructions each engine may hold (the ternary engine fetches one command ahead)
ENGINE_SLOTS = {"load": 1, "store": 1, "vector": 1, "matvec": 2}


class Scoreboard(wiring.Component):
    """``issue`` (with ``engine``, ``rmask``, ``wmask``) fills the engine's first free slot; ``done_pulse`` (one
    bit per engine, :data:`ENGINES` order) frees its oldest; ``clear`` empties every slot (a new run).
    ``room``: the engine named by ``engine`` has a free slot; ``all_idle``: no slot is held. ``hazard`` (a
    register, two cycles behind the masks, so that no dispatch waits on the slots' OR and the masks' compare in
    its own cycle, and the compare and the OR sit in different cycles): the slots held this cycle write a
    resource that ``rmask`` (as it was two cycles ago) reads (except :data:`isa.STREAMED`, read element by
    element as they arrive) or touch one its ``wmask`` writes; exact in a cycle that follows two without
    ``issue`` and with the same masks (the sequencer reads it only while an instruction waits, its masks load
    two cycles before it starts waiting, and it issues on leaving)."""

    def __init__(self):
        NR = I.N_RESOURCES
        super().__init__({
            "clear": In(1), "issue": In(1), "engine": In(2), "rmask": In(NR), "wmask": In(NR),
            "done_pulse": In(len(ENGINES)),
            "inflight_rd": Out(NR), "inflight_wr": Out(NR), "all_idle": Out(1), "room": Out(1), "hazard": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        NR = I.N_RESOURCES
        slots = [(e, s) for e in ENGINES for s in range(ENGINE_SLOTS[e])]
        valid = {es: Signal(name=f"sb_v_{es[0]}{es[1]}") for es in slots}
        rd = {es: Signal(NR, name=f"sb_r_{es[0]}{es[1]}") for es in slots}
        wr = {es: Signal(NR, name=f"sb_w_{es[0]}{es[1]}") for es in slots}
        acc_r, acc_w = Const(0, NR), Const(0, NR)
        for es in slots:
            acc_r = acc_r | Mux(valid[es], rd[es], 0)
            acc_w = acc_w | Mux(valid[es], wr[es], 0)
        m.d.comb += [self.inflight_rd.eq(acc_r), self.inflight_wr.eq(acc_w),
                     self.all_idle.eq(~Cat(*valid.values()).any())]
        for e in ENGINES:
            with m.If(self.engine == ENGINE_ID[e]):
                m.d.comb += self.room.eq(~valid[(e, ENGINE_SLOTS[e] - 1)])
        self._hazard(m, slots, valid, rd, wr)
        # completions: the oldest slot of the engine
        for e in ENGINES:
            with m.If(self.done_pulse[ENGINE_ID[e]]):
                if ENGINE_SLOTS[e] == 1:
                    m.d.sync += valid[(e, 0)].eq(0)
                else:
                    m.d.sync += [valid[(e, 0)].eq(valid[(e, 1)]), rd[(e, 0)].eq(rd[(e, 1)]),
                                 wr[(e, 0)].eq(wr[(e, 1)]), valid[(e, 1)].eq(0)]
        # issue: the first free slot (a completion in this cycle frees slot 0 / shifts 1 -> 0)
        with m.If(self.issue):
            for e in ENGINES:
                with m.If(self.engine == ENGINE_ID[e]):
                    if ENGINE_SLOTS[e] == 1:
                        m.d.sync += [valid[(e, 0)].eq(1), rd[(e, 0)].eq(self.rmask), wr[(e, 0)].eq(self.wmask)]
                        continue
                    s0, s1 = (e, 0), (e, 1)
                    done_now = self.done_pulse[ENGINE_ID[e]]
                    with m.If(~valid[s0] | (done_now & ~valid[s1])):
                        m.d.sync += [valid[s0].eq(1), rd[s0].eq(self.rmask), wr[s0].eq(self.wmask)]
                    with m.Else():
                        with m.If(done_now):
                            m.d.sync += [valid[s0].eq(1), rd[s0].eq(rd[s1]), wr[s0].eq(wr[s1])]
                        m.d.sync += [valid[s1].eq(1), rd[s1].eq(self.rmask), wr[s1].eq(self.wmask)]
        with m.If(self.clear):
            m.d.sync += [valid[es].eq(0) for es in slots]
        return m

    def _hazard(self, m, slots, valid, rd, wr):
        """``hazard`` two cycles on: each held slot's compare with this cycle's masks is registered (``hit``,
        registers only in front of it), then the next cycle's and this one's completions pick which registered
        compares stand for the slots as they will be (each completion frees the engine's oldest slot and moves
        the second down; ``clear`` empties them) and their OR is ``hazard``. Exact where the masks are steady
        and no ``issue`` comes in the two cycles before (the sequencer's masks load in FETCH, two cycles before
        WAIT, and it issues only on leaving WAIT)."""
        reads = self.rmask & ~sum(1 << b for b in I.STREAMED)
        hit = {es: Signal(name=f"sb_hit_{es[0]}{es[1]}") for es in slots}
        done_r = Signal(len(ENGINES), name="sb_done_r")        # the previous cycle's completions
        m.d.sync += [hit[es].eq(valid[es] & ~self.clear & ((reads & wr[es]) | (self.wmask & (rd[es] | wr[es]))).any())
                     for es in slots]
        m.d.sync += done_r.eq(self.done_pulse)
        nxt = []
        for e in ENGINES:
            n_slots, i = ENGINE_SLOTS[e], ENGINE_ID[e]
            gone = [done_r[i], self.done_pulse[i]]              # completions: at most n_slots free
            assert n_slots <= 2
            if n_slots == 1:
                nxt.append(hit[(e, 0)] & ~gone[0] & ~gone[1])
            else:                                   # none done: both held; one: slot 1 moved down; two: empty
                none, one = ~gone[0] & ~gone[1], gone[0] ^ gone[1]
                nxt.append((none & (hit[(e, 0)] | hit[(e, 1)])) | (one & hit[(e, 1)]))
        m.d.sync += self.hazard.eq(Cat(*nxt).any() & ~self.clear)
