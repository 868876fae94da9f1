"""The driver (mmfree.host, mmfree.boards.pynq / accelerator): transports, AccelHost, generation with drafts, the
high-level Accelerator.

Most tests run the driver against the ISA emulator board (fast, no RTL); the ``sim`` tests run the very same
driver on the accelerator RTL under Verilator (the simulated board), two simulator runs in all. Every result
is compared with the integer reference by exact equality."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.boards import accelerator as BA
from mmfree.boards import pynq as BP
from mmfree.host import accel as HA
from mmfree.host import generate as HG
from mmfree.host import layout as HL
from mmfree.host import transport as HT
from mmfree.pymodel import drafters as DR
from mmfree.rtl import compiler as RC
from mmfree.rtl import regmap as RM
from mmfree.sim import run as SR
from mmfree.sim.accel import DEFAULT_HW
from mmfree.sim.emulator import EmulatedBoard
from tests.sim import helpers as H

PROMPT = "def "
N_TOKENS = 10


@pytest.fixture(scope="module")
def model():
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer

    im, tok_dir = open_int_model("default")
    ids = load_tokenizer(tok_dir).encode(PROMPT)
    return im, tok_dir, ids


@pytest.fixture(scope="module")
def reference(model):
    im, _, ids = model
    return SR.greedy_reference(im, ids, N_TOKENS)


def _acc(model, board=None, **kw):
    im, tok_dir, _ = model
    return BA.Accelerator(board or EmulatedBoard(DEFAULT_HW), im, tokenizer=tok_dir, **kw)


# ---- transports ------------------------------------------------------------------------------------------------
def test_transport_contract():
    b = EmulatedBoard(DEFAULT_HW)
    assert isinstance(b, HT.Transport)                  # structural: any object with the five methods
    assert not isinstance(object(), HT.Transport)
    t = HT.as_transport(b, "emulator")
    assert isinstance(t, HT.BoardTransport) and t.mem_window == b.mem_window
    assert HT.as_transport(t) is t
    assert t.read32(RM.OFFSET["ID"]) == RM.ID_MAGIC
    with pytest.raises(MmfreeError, match="not a 32-bit register"):
        t.read32(0x2)
    with pytest.raises(MmfreeError, match="not a 32-bit register"):
        t.write32(1 << RM.CSR_ADDR_BITS, 0)
    lo, hi = t.mem_window
    with pytest.raises(MmfreeError, match="outside the transport's window"):
        t.write_mem(hi - 4, b"12345678")
    with pytest.raises(MmfreeError, match="outside the transport's window"):
        t.read_mem(lo - 16, 16)
    with pytest.raises(MmfreeError, match="not a transport"):
        HT.BoardTransport(object())


def test_import_needs_no_pynq():
    code = ("import sys, mmfree.host.session, mmfree.boards.pynq, mmfree.boards.accelerator; "
            "assert 'pynq' not in sys.modules; "
            "import mmfree.boards.cli, mmfree.boards.build; assert 'pynq' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pynq_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)          # import pynq -> ImportError
    monkeypatch.setattr(BP, "_IP_CLASS", None)
    for what in (lambda: BP.MmfreeAccelIP, BP.register_pynq_driver, lambda: BP.PynqTransport(object(), 1024)):
        with pytest.raises(MmfreeError, match=r"pynq is not installed: this runs on a PYNQ board image \(pip install"):
            what()


def test_ip_class_binds_to_the_vlnv():
    pynq = pytest.importorskip("pynq")
    cls = BP.register_pynq_driver()
    assert issubclass(cls, pynq.DefaultIP) and cls.bindto == [RM.VLNV]
    from pynq.overlay import _ip_drivers

    assert _ip_drivers[RM.VLNV] is cls
    assert BP.MmfreeAccelIP is cls


class _FakePynq:
    """pynq's MMIO, allocate and cache maintenance modelled over the emulator board: the buffer is host memory,
    the emulator's DDR is what the accelerator sees; only flush() copies host -> DDR and only invalidate()
    copies DDR -> host, so a driver that forgets either gets wrong results."""

    def __init__(self, hw=DEFAULT_HW, phys=0x3000_0000, size=16 << 20, board=None):
        self.board = board if board is not None else EmulatedBoard(hw, mem_base=phys, mem_size=size)
        self.flushes = self.invalidates = 0
        fake = self
        base_holder = {}

        class Buf(np.ndarray):
            def _addr(self):
                return phys + self.__array_interface__["data"][0] - base_holder["ptr"]

            def flush(self):
                fake.flushes += 1
                fake.board.write_mem(self._addr(), self.tobytes())

            def invalidate(self):
                fake.invalidates += 1
                self[:] = np.frombuffer(fake.board.read_mem(self._addr(), self.nbytes), dtype=np.uint8)

            def freebuffer(self):
                fake.freed = True
                getattr(fake.board, "events", []).append("free")

        def allocate(shape, dtype):
            assert dtype == np.uint8 and shape[0] <= size
            buf = np.zeros(shape, dtype=dtype).view(Buf)
            buf.device_address = phys
            base_holder["ptr"] = buf.__array_interface__["data"][0]
            return buf

        self.module = types.SimpleNamespace(allocate=allocate)
        self.ip = types.SimpleNamespace(mmio=types.SimpleNamespace(read=self.board.read32, write=self.board.write32),
                                        read=self.board.read32, irq=None)


def test_pynq_transport_runs_the_model_bit_exact(model, reference, monkeypatch):
    """PynqTransport (MMIO, one pynq.allocate buffer, flush/invalidate, polling) under the whole driver."""
    fake = _FakePynq()
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    im, tok_dir, ids = model
    acc = BA.Accelerator.on_ip(fake.ip, im, board="kv260", tokenizer=tok_dir, use_interrupt=False)
    assert isinstance(acc.transport, BP.PynqTransport)
    lo, hi = acc.transport.mem_window
    assert lo == 0x3000_0000 and hi - lo == HL.ddr_needed(acc.compiled, DEFAULT_HW.max_tokens, acc.host.draft)
    g = acc.generate(PROMPT, N_TOKENS)
    assert g.tokens == reference
    assert fake.flushes > 0 and fake.invalidates > 0
    g2 = acc.generate(ids, N_TOKENS, draft="trigram", k=4)
    assert g2.tokens == reference and g2.counters["verify_steps"] > 0
    acc.close()
    assert fake.freed


def test_pynq_transport_runs_the_onchip_loop(model, reference, monkeypatch):
    """The on-chip loop through PynqTransport: the table and registers go out through flushes, GEN_OUT and the
    adapted table come back through invalidates; the DDR window includes the loop's areas."""
    fake = _FakePynq()
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    im, tok_dir, ids = model
    acc = BA.Accelerator.on_ip(fake.ip, im, tokenizer=tok_dir, use_interrupt=False)
    assert acc.host.draft is not None and acc.host.mem_end == acc.transport.mem_window[1]
    dr = DR.TrigramDrafter.for_model(im, None, tok_dir)
    start = dr.table.copy()
    g = acc.generate(ids, N_TOKENS, draft=dr, onchip=True)
    assert g.tokens == reference and g.counters["onchip"] and g.counters["gen_count"] == N_TOKENS - 1
    expect = start.copy()
    expect.observe(list(ids) + reference)
    np.testing.assert_array_equal(dr.table.trig, expect.trig)
    np.testing.assert_array_equal(dr.table.bigram, expect.bigram)
    assert acc.generate(PROMPT, N_TOKENS, onchip=True).tokens == reference        # draft="trigram" implied
    acc.close()


class _FakeIrq:
    """pynq.Interrupt's shape: ``await wait()`` returns when the line goes high."""

    def __init__(self, delay):
        self.delay, self.waits = delay, 0

    async def wait(self):
        import asyncio

        self.waits += 1
        await asyncio.sleep(self.delay)


def test_pynq_transport_waits_with_time_outs(monkeypatch):
    import asyncio
    import time as _time

    fake = _FakePynq()
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    t = BP.PynqTransport(fake.ip, 4096, use_interrupt=False, poll_s=1e-3)
    t0 = _time.monotonic()
    assert t.wait_irq(0.05) is False                   # nothing started: STATUS never shows DONE
    assert 0.04 < _time.monotonic() - t0 < 2
    # through the IP's interrupt (asyncio, with a time-out)
    fake.ip.interrupt = _FakeIrq(10.0)
    t = BP.PynqTransport(fake.ip, 4096)
    assert t.irq is fake.ip.interrupt
    t0 = _time.monotonic()
    assert t.wait_irq(0.05) is False and fake.ip.interrupt.waits == 1 and _time.monotonic() - t0 < 2
    fake.ip.interrupt.delay = 0.0
    assert t.wait_irq(1.0) is True
    # inside a running event loop (a Jupyter cell) it polls instead of nesting asyncio.run
    fake.ip.interrupt.waits = 0

    async def in_loop():
        return t.wait_irq(0.05)

    assert asyncio.run(in_loop()) is False and fake.ip.interrupt.waits == 0


# ---- AccelHost and generate -------------------------------------------------------------------------------------
def test_generate_default_is_prompt_lookup_as_before(model, reference):
    """``generate`` without a drafter keeps its meaning: prompt-lookup chains of exactly k tokens."""
    im, _, ids = model
    from mmfree.rtl.compiler import compile_model

    host = HA.AccelHost(EmulatedBoard(DEFAULT_HW), compile_model(im))
    toks, passes = HG.generate(host, ids, N_TOKENS, k=4)
    assert toks == reference
    done = 0
    for p in passes:
        if not p["prefill"]:
            seq = list(ids) + toks[:done]
            assert len(p["tokens"]) == 4 and "parents" not in p
            assert p["tokens"] == [seq[-1]] + DR.draft_tokens(seq, 3)
        done += p["emitted"]
    toks1, passes1 = HG.generate(host, ids, N_TOKENS)
    assert toks1 == reference and len(passes1) == len(ids) + N_TOKENS - 1


class _BranchyDrafter(DR.Drafter):
    """A tree with two children at the root: the reference's token and a wrong one, in both orders."""

    name = "branchy"

    def __init__(self, truth):
        self.truth, self.flip = truth, False

    def draft(self, context, k):
        nxt = self.truth.get(tuple(context))
        self.flip = not self.flip
        wrong = (nxt or 0) + 1
        kids = [wrong, nxt] if self.flip else [nxt, wrong]
        if nxt is None:
            return [context[-1]], None
        return [context[-1]] + kids[:k - 1], [-1, 0, 0][:k]


def test_tree_drafts_give_greedy_tokens(model, reference):
    im, _, ids = model
    truth = {}
    seq = list(ids)
    for t in reference:
        truth[tuple(seq)] = t
        seq.append(t)
    acc = _acc(model, write_logits=True)
    g = acc.generate(ids, N_TOKENS, draft=_BranchyDrafter(truth), k=3, keep_arrays=True)
    assert g.tokens == reference
    trees = [p for p in g.passes if "parents" in p]
    assert trees and all(p["parents"] == [-1, 0, 0] for p in trees)
    # replay every pass on the integer reference: logits, argmax, states
    from mmfree.sim.accel import replay_and_compare

    ok, problems = replay_and_compare(im, g.passes)
    assert ok, problems


def test_accelerator_on_emulator(model, reference):
    acc = _acc(model)
    g = acc.generate(PROMPT, N_TOKENS)
    assert g.tokens == reference and g.text == acc.decode_text(reference)
    c = g.counters
    assert c["verify_steps"] == 0 and c["mean_accepted"] == 1.0 and c["rd_bytes"] > 0
    assert c["passes"] == c["prefill_passes"] + c["decode_passes"]
    for draft in ("trigram", "lookup"):
        g2 = acc.generate(PROMPT, N_TOKENS, draft=draft, k=4)
        assert g2.tokens == reference, draft
        assert g2.counters["verify_steps"] == g2.counters["decode_passes"] > 0
    # step by step: prefill + step give the same tokens
    tok = acc.prefill(PROMPT)
    out = [tok]
    while len(out) < N_TOKENS:
        out.append(acc.step(out[-1]))
    assert out == reference


def test_trigram_run_matches_reference_speculative_loop(model, reference):
    """The driver's trigram tree passes emit exactly what pymodel.speculative does (same table, same template)."""
    from mmfree.pymodel.speculative import speculative_generate

    im, _, ids = model
    acc = _acc(model)
    g = acc.generate(ids, N_TOKENS, draft="trigram", k=4)
    ref = speculative_generate(im, ids, N_TOKENS, max_draft=3, max_nodes=3, log=lambda m: None)
    assert ref.tokens == g.tokens == reference
    assert ref.extra["verify_steps"] == g.counters["verify_steps"]


def test_trigram_tree_rules_match_reference_speculative_loop(model, reference):
    """Both tree rules on the host drafter: the driver's passes emit what pymodel.speculative does with the same
    rule at k - 1 = 3 nodes, the rule used is reported; a rule is refused with another drafter, an unknown one
    by name, and on chip when the engine drafts another rule."""
    from mmfree.pymodel import trigram as TG
    from mmfree.pymodel.speculative import speculative_generate

    im, _, ids = model
    acc = _acc(model)
    for rule in TG.TREE_RULES:
        g = acc.generate(ids, N_TOKENS, draft="trigram", k=4, tree_rule=rule)
        ref = speculative_generate(im, ids, N_TOKENS, max_draft=3, max_nodes=3, log=lambda m: None, tree_rule=rule)
        assert ref.tokens == g.tokens == reference, rule
        assert ref.extra["verify_steps"] == g.counters["verify_steps"], rule
        assert g.tree_rule == rule and g.as_dict()["tree_rule"] == rule
    assert acc.generate(ids, N_TOKENS, draft="trigram", k=4).tree_rule == TG.DEFAULT_TREE_RULE
    # the prompt-lookup source (host option): greedy all the same, and the steps drafters.replay predicts
    def lookup():
        return DR.TrigramDrafter.for_model(im, None, model[1], tree_rule="count-guided", lookup=True)
    g = acc.generate(ids, N_TOKENS, draft=lookup(), k=4)
    assert g.tokens == reference and g.tree_rule == "count-guided"
    assert g.counters["verify_steps"] == DR.replay(lookup(), ids, reference, 4)["verify_steps"]
    assert "tree_rule" not in acc.generate(ids, N_TOKENS, draft="lookup", k=4).as_dict()
    with pytest.raises(MmfreeError, match="tree rule .* use --draft trigram"):
        acc.generate(ids, 4, draft="lookup", k=4, tree_rule="template")
    with pytest.raises(MmfreeError, match="tree_rule must be one of count-guided, template, got 'deep'"):
        acc.generate(ids, 4, draft="trigram", k=4, tree_rule="deep")
    # on chip: a register map 2.3 engine runs either rule (GEN_DRAFT) as the reference loop does; a 2.2 bitstream
    # drafts template trees only and refuses the other rule
    for rule in TG.TREE_RULES:
        g = acc.generate(ids, N_TOKENS, draft="trigram", tree_rule=rule, onchip=True)
        ref = speculative_generate(im, ids, N_TOKENS, max_draft=3, max_nodes=3, log=lambda m: None, tree_rule=rule)
        assert g.tokens == ref.tokens == reference and g.tree_rule == rule, rule
        assert g.counters["gen_passes"] == ref.extra["verify_steps"], rule
    old = EmulatedBoard(DEFAULT_HW)
    old.csr["VERSION"] = RM.encode("VERSION", major=RM.REGMAP_VERSION_MAJOR, minor=2)
    assert _acc(model, old).generate(ids, 4, draft="trigram", onchip=True).tree_rule == "template"
    with pytest.raises(MmfreeError, match="draft engine drafts template trees, not count-guided"):
        _acc(model, old).generate(ids, 4, draft="trigram", tree_rule="count-guided", onchip=True)
    with pytest.raises(MmfreeError, match="give the tree rule to the TrigramDrafter itself"):
        acc.generate(ids, 4, draft=DR.TrigramDrafter.for_model(im, None, model[1]), tree_rule="template")


def test_bad_inputs_refused_before_the_hardware(model):
    acc = _acc(model)
    with pytest.raises(MmfreeError, match="outside the vocabulary"):
        acc.generate([1, acc.vocab_size], 2)
    with pytest.raises(MmfreeError, match="empty"):
        acc.generate([], 2)
    with pytest.raises(MmfreeError, match="k must be in 1..4"):
        acc.generate([1], 2, k=5)
    with pytest.raises(MmfreeError, match="unknown drafter"):
        acc.generate([1], 2, draft="bigram")


def test_hardware_error_is_an_exception_with_code(model):
    acc = _acc(model)
    msg = r"error 3: a token id is outside the model's vocabulary \(position 1\)"
    with pytest.raises(HA.AccelRunError, match=msg) as ei:
        acc.host.run([1, acc.vocab_size + 7])
    assert (ei.value.code, ei.value.detail) == (RM.ERR_TOKEN_RANGE, 1)
    bad_base = acc.host.addr["DATA_BASE"] + 8
    rec = HG.run_script(acc.host, [{"tokens": [1], "regs": {"DATA_BASE": bad_base}}, {"tokens": [1]}])
    assert (rec[0]["error"], rec[0]["detail"]) == (RM.ERR_UNALIGNED, RM.ADDRESS_REGS.index("DATA_BASE"))
    assert "register DATA_BASE" in rec[0]["message"]
    assert "error" not in rec[1]                      # the next pass runs normally


def test_timeout_aborts_and_reports(model):
    board = H.stuck_board(DEFAULT_HW, RM.CTRL_START)     # START is swallowed: never finishes
    acc = _acc(model, board=board, timeout_s=0.01)
    with pytest.raises(MmfreeError, match=r"did not finish within 0.01 s .*aborted with SOFT_RESET"):
        acc.generate([1], 2)
    assert board.controls[-1] & RM.CTRL_SOFT_RESET


def test_model_larger_than_board_ddr_is_refused(model):
    class Untouchable:
        mem_window = (0, 1 << 40)

        def __getattr__(self, name):
            raise AssertionError(f"the hardware was touched ({name})")

    class Huge:
        def __len__(self):
            return 400 << 20

    from mmfree.rtl.compiler import compile_model

    c = compile_model(model[0])
    big = RC.Compiled(c.program, Huge(), c.dims, c.symbols, c.state_stride, c.head_chunk, c.max_width)
    with pytest.raises(MmfreeError, match=r"needs 400\.\d MiB of DDR .* the pynq-z2 leaves 320 MiB"):
        BA.Accelerator(Untouchable(), big, board="pynq-z2")
    from mmfree.boardfile import load_board

    assert HL.check_fits(c, load_board("pynq-z2")) == HL.ddr_needed(c, 4)


# ---- faults: time-outs, MMIO errors, identity registers, token limits (issue 22.4) ------------------------------
BAD_TIMEOUTS = (float("nan"), float("inf"), -float("inf"), 0, 0.0, -1, True, "soon", None, 1e9)


@pytest.mark.parametrize("bad", BAD_TIMEOUTS)
def test_every_wait_needs_a_finite_positive_time_out(model, bad, monkeypatch):
    """nan, inf, <= 0, non-numbers and more than a day are refused by every API that waits, before waiting."""
    msg = r"must be > 0, finite"
    with pytest.raises(MmfreeError, match=r"timeout_s must be > 0, finite and at most 86400 seconds"):
        _acc(model, timeout_s=bad)
    acc = _acc(model)
    if bad is not None:                   # None: the host's own time-out
        with pytest.raises(MmfreeError, match=msg):
            acc.host.run([1], timeout_s=bad)
    if bad != 1e9:                        # the transports take any finite positive wait (a GENERATE's is n x pass)
        with pytest.raises(MmfreeError, match=msg):
            HT.BoardTransport(EmulatedBoard(DEFAULT_HW)).wait_irq(bad)
        fake = _FakePynq()
        monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
        with pytest.raises(MmfreeError, match=msg):
            BP.PynqTransport(fake.ip, 4096, use_interrupt=False).wait_irq(bad)
        with pytest.raises(MmfreeError, match=r"poll_s must be > 0"):
            BP.PynqTransport(fake.ip, 4096, use_interrupt=False, poll_s=bad)


class _FailingBoard(EmulatedBoard):
    """The emulator whose MMIO read or write of one register raises OSError (a lost mapping) once armed."""

    def __init__(self, op, reg):
        super().__init__(DEFAULT_HW)
        self.op, self.offset, self.armed = op, RM.OFFSET[reg], False

    def read32(self, offset):
        if self.armed and self.op == "read" and offset == self.offset:
            raise OSError(5, "Input/output error")
        return super().read32(offset)

    def write32(self, offset, value):
        if self.armed and self.op == "write" and offset == self.offset:
            raise OSError(5, "Input/output error")
        super().write32(offset, value)


@pytest.mark.parametrize("op,reg", [("read", "STATUS"), ("write", "CONTROL"), ("read", "CYCLES_LO")])
def test_mmio_os_error_is_an_accel_run_error_naming_the_register(model, op, reg):
    board = _FailingBoard(op, reg)
    acc = _acc(model, board=board)
    board.armed = True
    with pytest.raises(HA.AccelRunError, match=rf"the {op} of accelerator register {reg} \(offset "
                                              rf"{RM.OFFSET[reg]:#x}\) failed: \[Errno 5\]") as ei:
        acc.generate([1], 2)
    assert ei.value.register == reg and ei.value.code is None and isinstance(ei.value.__cause__, OSError)


def test_mmio_os_error_through_pynq_transport(model, monkeypatch):
    fake = _FakePynq()
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)

    def read(offset):
        if offset == RM.OFFSET["HW_LIMITS"]:
            raise OSError(14, "Bad address")
        return fake.board.read32(offset)

    fake.ip.mmio.read = fake.ip.read = read
    im, tok_dir, _ = model
    with pytest.raises(HA.AccelRunError, match=r"the read of accelerator register HW_LIMITS .* Bad address") as ei:
        BA.Accelerator.on_ip(fake.ip, im, tokenizer=tok_dir, use_interrupt=False)
    assert ei.value.register == "HW_LIMITS"


def test_zero_hw_config_is_a_clear_error(model, monkeypatch):
    """A bitstream whose HW_CONFIG reads 0 is refused before anything is sized or written, on every path."""
    class ZeroConfig(EmulatedBoard):
        def read32(self, offset):
            return 0 if offset == RM.OFFSET["HW_CONFIG"] else super().read32(offset)

        def write_mem(self, addr, data):
            raise AssertionError("DDR was written")

    msg = r"HW_CONFIG reads 0x00000000: bus_bytes, lanes, max_tokens are 0, so the host cannot size its buffers"
    with pytest.raises(MmfreeError, match=msg):
        _acc(model, board=ZeroConfig(DEFAULT_HW))
    fake = _FakePynq()
    fake.module.allocate = lambda **kw: pytest.fail("DDR was allocated")
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    fake.ip.read = ZeroConfig(DEFAULT_HW).read32
    with pytest.raises(MmfreeError, match=msg):
        BA.Accelerator.on_ip(fake.ip, model[0], use_interrupt=False)
    # one field zero: named alone
    one = EmulatedBoard(DEFAULT_HW)
    one.csr["HW_CONFIG"] &= ~(0xFF << 16)
    with pytest.raises(MmfreeError, match=r"max_tokens is 0"):
        _acc(model, board=one)


def test_tokens_bounded_by_the_board_memory(model):
    from mmfree.boardfile import load_board

    im = model[0]
    acc = BA.Accelerator(EmulatedBoard(DEFAULT_HW), im, board="pynq-z2")
    most = HL.max_generation_tokens(acc.compiled, load_board("pynq-z2"), DEFAULT_HW.max_tokens)
    assert 10_000 < most < (512 << 20) // HL.RECORD_BYTES_PER_TOKEN
    with pytest.raises(MmfreeError, match=rf"n_tokens {most + 1} is more than the pynq-z2 can hold: at most {most}"):
        acc.generate([1], most + 1)
    kept = HL.max_generation_tokens(acc.compiled, load_board("pynq-z2"), DEFAULT_HW.max_tokens, keep_arrays=True)
    assert kept < most
    with pytest.raises(MmfreeError, match=rf"at most {kept} tokens"):
        acc.generate([1], kept + 1, keep_arrays=True)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(MmfreeError, match=r"n_tokens must be >= 1 \(an integer\)"):
            acc.generate([1], bad)


def _deep_size(obj) -> int:
    """bench/_common.deep_size: the same measure the host-memory bench records."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from _common import deep_size
    finally:
        sys.path.pop(0)
    return deep_size(obj)


def test_host_memory_per_token(model, reference):
    """Per-pass states and logits are kept only on request: without them a generation's records cost at most
    RECORD_BYTES_PER_TOKEN host bytes per token (so 10,000 tokens stay tens of MB)."""
    acc = _acc(model, write_logits=True)
    g = acc.generate(PROMPT, N_TOKENS)
    assert g.tokens == reference
    assert all("states" not in p and "logits" not in p for p in g.passes)
    per_token = _deep_size(g.passes) / N_TOKENS
    assert per_token < HL.RECORD_BYTES_PER_TOKEN, per_token
    kept = acc.generate(PROMPT, N_TOKENS, keep_arrays=True)
    assert kept.tokens == reference and all(p["states"] is not None and p["logits"] is not None for p in kept.passes)
    from mmfree.sim.accel import replay_and_compare

    assert replay_and_compare(model[0], kept.passes) == (True, [])
    with pytest.raises(MmfreeError, match=r"carry no states to compare: generate with keep_arrays=True"):
        replay_and_compare(model[0], g.passes)


# ---- the interrupt through pynq's real Interrupt class (issue 19) -----------------------------------------------
PIN, RAW_IRQ = "mmfree_accel_0/interrupt", 121


class _PtyUio:
    """The missing hardware under pynq's interrupt stack: a UIO device node stood in for by a pseudo-terminal in
    raw mode. pynq's own ``UioController`` opens the slave path exactly as it opens ``/dev/uioN`` and reads it on
    its event loop; this "kernel + accelerator" thread reads the 4-byte enable words pynq writes, runs the
    board's pending pass once the interrupt is enabled (the host is waiting) and then answers with the 4-byte
    interrupt count while IRQ_STATUS is high, as the uio driver does (one interrupt per enable)."""

    def __init__(self, board):
        import os
        import threading
        import tty

        self.board, self.fired, self.enables = board, 0, 0
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import os
        import select
        import struct

        enabled = False
        while not self.stop.is_set():
            if select.select([self.master], [], [], 0.001)[0]:
                data = os.read(self.master, 64)
                assert data == b"\x00\x00\x00\x01" * (len(data) // 4), data      # pynq's "enable" word
                self.enables += len(data) // 4
                enabled = True
            if enabled:
                self.board.step()
                if self.board.csr["IRQ_STATUS"] & 1:
                    self.fired += 1
                    os.write(self.master, struct.pack("<I", self.fired))
                    enabled = False

    def close(self):
        import os

        self.stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pynq_irq():
    """(a pynq.interrupt.Interrupt on the accelerator's pin, the busy board behind it, the UIO stand-in, the event
    loop pynq registered it on). pynq's Device, Interrupt and UioController are the real classes; a pynq.Device
    subclass carries the pin (a straight UIO interrupt, no AXI interrupt controller), made the active device."""
    import asyncio
    import gc

    pynq = BP._pynq()
    from pynq.interrupt import Interrupt, _InterruptController
    from pynq.uio import UioController

    class IrqDevice(pynq.Device):
        def __init__(self):
            super().__init__("mmfree-irq-test")
            self.interrupt_pins = {PIN: {"controller": "", "parent": "", "index": 0, "raw_irq": RAW_IRQ,
                                         "fullpath": PIN}}
            self.interrupt_controllers, self.timestamp = {}, "mmfree-irq-test"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)                        # the loop current when the overlay loads
    board = H.busy_board(DEFAULT_HW, mem_base=0x3000_0000, mem_size=16 << 20)
    uio = _PtyUio(board)
    old = vars(pynq.Device).get("_active_device")
    pynq.Device.active_device = IrqDevice()
    ctrl = _InterruptController._uio_devices[RAW_IRQ] = UioController(uio.path)   # the device node for this IRQ
    try:
        yield Interrupt(PIN), board, uio, loop
    finally:
        _InterruptController._uio_devices.pop(RAW_IRQ, None)
        loop.remove_reader(ctrl.uio)                    # the loop's reader holds the controller
        node = ctrl.uio     # held here: a timed-out wait's traceback can keep the controller in a cycle, and the
        del ctrl            # collector would otherwise finalise the node's file first, under UioController.__del__
        gc.collect()                                    # UioController.__del__ (closes the node) on its own loop
        assert node.closed
        del node
        if old is None:
            del pynq.Device._active_device
        else:
            pynq.Device.active_device = old
        uio.close()
        asyncio.set_event_loop(None)
        loop.close()


def test_interrupt_wait_through_pynq_interrupt(model, reference, pynq_irq, monkeypatch):
    """Every pass waits on pynq's real Interrupt, on pynq's loop, again and again (the old asyncio.run wait missed
    the first interrupt and then failed with "bound to a different event loop")."""
    irq, board, uio, loop = pynq_irq
    fake = _FakePynq(board=board)
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    fake.ip.interrupt = irq
    im, tok_dir, ids = model
    acc = BA.Accelerator.on_ip(fake.ip, im, tokenizer=tok_dir)
    assert acc.transport.irq is irq and acc.transport.loop is loop
    g = acc.generate(PROMPT, N_TOKENS)
    assert g.tokens == reference
    # the UIO stand-in's thread counts an interrupt after the board step that raised it, so a pass the driver saw
    # end (IRQ_STATUS read before or after its wait) may be counted a moment later
    H.wait_for(lambda: uio.fired == len(g.passes) == uio.enables, 5, "an interrupt per pass", poll_s=0.001)
    g2 = acc.generate(ids, N_TOKENS, draft="trigram", k=4)
    assert g2.tokens == reference
    H.wait_for(lambda: uio.fired == len(g.passes) + len(g2.passes), 5, "an interrupt per pass", poll_s=0.001)
    acc.close()
    assert fake.freed


def test_interrupt_wait_times_out_and_recovers(model, pynq_irq, monkeypatch):
    """A pass that never ends: the wait on pynq's Interrupt gives up after its time-out (twice, on the same loop),
    the pass is aborted (SOFT_RESET, IDLE) and the next one runs through the interrupt again."""
    import time as _time

    irq, board, uio, loop = pynq_irq
    fake = _FakePynq(board=board)
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    fake.ip.interrupt = irq
    acc = BA.Accelerator.on_ip(fake.ip, model[0], timeout_s=0.05)
    run = board.step
    board.step = lambda: False                                        # the pass hangs
    for _ in range(2):
        t0 = _time.monotonic()
        with pytest.raises(MmfreeError, match=r"did not finish within 0.05 s .*aborted with SOFT_RESET\."):
            acc.host.run([1])
        assert _time.monotonic() - t0 < 2
        assert board.events[-3:] == ["start", "soft_reset", "idle"]
    board.step = run
    assert acc.host.run([1]).argmax.shape == (1,)
    H.wait_for(lambda: uio.fired == 1, 5, "the recovered pass's interrupt", poll_s=0.001)     # counted late
    acc.close()


def test_no_interrupt_polls_status(model, reference, monkeypatch):
    """An overlay without the interrupt pin (or use_interrupt=False): STATUS is polled."""
    fake = _FakePynq()
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    im, tok_dir, _ = model
    acc = BA.Accelerator.on_ip(fake.ip, im, tokenizer=tok_dir)       # fake.ip has no interrupt attribute
    assert acc.transport.irq is None and acc.transport.loop is None
    assert acc.generate(PROMPT, N_TOKENS).tokens == reference
    acc.close()


def test_sim_pynq_device_is_a_pynq_device(model, reference):
    """The simulated pynq device plugs in where pynq lets a back end plug in: MMIO through REGISTER_RW, buffers as
    pynq's own PynqBuffer whose flush/invalidate move bytes to and from the emulator's DDR."""
    pynq = BP._pynq()
    from pynq.buffer import PynqBuffer

    from mmfree.sim.pynq_device import CSR_BASE, sim_pynq_device

    dev, desc = sim_pynq_device(DEFAULT_HW)
    assert isinstance(dev, pynq.Device) and dev.has_capability("REGISTER_RW")
    ip = BP.register_pynq_driver()(desc)
    assert ip.mmio.base_addr == CSR_BASE and ip.read(RM.OFFSET["ID"]) == RM.ID_MAGIC
    buf = pynq.allocate(shape=(64,), dtype=np.uint8, target=dev)
    assert isinstance(buf, PynqBuffer) and buf.device_address == dev.board.mem_window[0]
    buf[8:12] = [1, 2, 3, 4]
    assert dev.board.read_mem(buf.device_address + 8, 4) == bytes(4)          # not flushed yet
    buf[8:12].flush()
    assert dev.board.read_mem(buf.device_address + 8, 4) == bytes([1, 2, 3, 4])
    dev.board.write_mem(buf.device_address + 16, b"\x09")
    buf[16:17].invalidate()
    assert buf[16] == 9
    with pytest.raises(MmfreeError, match="outside the accelerator's 32-bit registers"):
        dev.read_registers(CSR_BASE + (1 << RM.CSR_ADDR_BITS), 4)
    im, tok_dir, _ = model
    previous = vars(pynq.Device).get("_active_device")
    pynq.Device.active_device = dev                      # pynq.allocate() without a target, as on a board
    try:
        with ip.accelerator(im, tokenizer=tok_dir, use_interrupt=False) as acc:
            assert isinstance(acc.transport.buf, PynqBuffer)
            assert acc.generate(PROMPT, N_TOKENS).tokens == reference
    finally:
        if previous is None:
            del pynq.Device._active_device
        else:
            pynq.Device.active_device = previous


# ---- safe stop (issue 19) ----------------------------------------------------------------------------------------
def test_ctrl_c_mid_pass_aborts_before_the_buffers_are_freed(model, monkeypatch):
    """A real SIGINT while a pass runs: SOFT_RESET, IDLE, and only then the DMA buffer is freed."""
    import os
    import signal
    import threading

    board = H.busy_board(DEFAULT_HW, finish=False, mem_base=0x3000_0000, mem_size=16 << 20)
    fake = _FakePynq(board=board)
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    acc = BA.Accelerator.on_ip(fake.ip, model[0], use_interrupt=False, timeout_s=30)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            with acc:
                timer.start()
                acc.generate([1, 2], 4)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert board.events == ["start", "soft_reset", "idle", "free"], board.events


def test_time_out_and_error_abort_before_free(model, monkeypatch):
    board = H.busy_board(DEFAULT_HW, finish=False, mem_base=0x3000_0000, mem_size=16 << 20)
    fake = _FakePynq(board=board)
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    with pytest.raises(MmfreeError, match="did not finish within 0.02 s"):
        with BA.Accelerator.on_ip(fake.ip, model[0], use_interrupt=False, timeout_s=0.02) as acc:
            acc.generate([1], 2)
    assert board.events == ["start", "soft_reset", "idle", "free"], board.events
    # a pass the hardware ends with an error has stopped itself: reported, nothing to abort, ERROR readable
    rec = H.stuck_board(DEFAULT_HW, 0)                                # records CONTROL writes, swallows nothing
    acc = _acc(model, board=rec)
    with pytest.raises(HA.AccelRunError, match="outside the model's vocabulary"):
        acc.host.run([1, acc.vocab_size])
    assert rec.controls[-1] == RM.CTRL_START | RM.CTRL_IRQ_ENABLE and not acc.host.busy()
    assert rec.read32(RM.OFFSET["STATUS"]) & RM.STAT_ERROR
    assert acc.host.run([1]).argmax.shape == (1,)


def test_close_aborts_a_running_pass_first(model, monkeypatch):
    board = H.busy_board(DEFAULT_HW, finish=False, mem_base=0x3000_0000, mem_size=16 << 20)
    fake = _FakePynq(board=board)
    monkeypatch.setattr(BP, "_pynq", lambda: fake.module)
    acc = BA.Accelerator.on_ip(fake.ip, model[0], use_interrupt=False)
    acc.transport.write32(RM.OFFSET["CONTROL"], RM.CTRL_START)        # left running (e.g. a killed caller)
    acc.close()
    assert board.events == ["start", "soft_reset", "idle", "free"], board.events


def test_opening_a_busy_accelerator_resets_it_and_says_so(model, reference):
    from mmfree import MmfreeWarning

    board = EmulatedBoard(DEFAULT_HW)
    board.csr["STATUS"] = RM.STAT_BUSY                                  # a pass left running by another process
    with pytest.warns(MmfreeWarning, match=r"was BUSY when opened .* reset with SOFT_RESET first"):
        acc = _acc(model, board=board)
    assert acc.generate(PROMPT, N_TOKENS).tokens == reference
    stuck = H.busy_board(DEFAULT_HW, finish=False)
    stuck.csr["STATUS"] = RM.STAT_BUSY
    stuck.write32 = lambda offset, value: None                          # ignores SOFT_RESET: stays BUSY
    with pytest.warns(MmfreeWarning), pytest.raises(MmfreeError, match=r"stays BUSY 1 s after SOFT_RESET: reload"):
        _acc(model, board=stuck)


# ---- the simulated board: the same driver on the RTL (Verilator + cocotb) ---------------------------------------
@pytest.fixture(scope="module")
def sim_speculative():
    """One simulator run: trigram drafts with k = 4, then injected hardware errors and a recovery pass."""
    return SR.run_sim("default", PROMPT, N_TOKENS, draft="trigram", k=4, inject=[
        {"tokens": [5000]},                                        # token id >= vocabulary (4096)
        {"tokens": [1], "regs": {"TOKENS": 0x4000_0000 + 4}},      # a misaligned base address
        {"tokens": [1]},                                           # recovers
    ])


@pytest.mark.sim
def test_sim_speculative_trigram_is_greedy(sim_speculative, reference):
    r = sim_speculative
    assert r["bit_exact"], r["problems"]
    assert r["tokens"] == reference == r["reference_tokens"]
    assert r["draft"] == "trigram" and r["k"] == 4
    assert r["verify_steps"] > 0 and r["mean_accepted"] > 1.0
    assert r["passes"] < N_TOKENS                     # fewer weight passes than plain decoding
    assert r["cycles"] > 0 and r["rd_bytes"] > 0


@pytest.mark.sim
def test_sim_injected_errors_raise_with_code_and_recover(sim_speculative):
    bad_token, unaligned, ok = sim_speculative["inject"]
    assert (bad_token["error"], bad_token["detail"]) == (RM.ERR_TOKEN_RANGE, 0)
    assert "a token id is outside the model's vocabulary (position 0)" in bad_token["message"]
    assert (unaligned["error"], unaligned["detail"]) == (RM.ERR_UNALIGNED, RM.ADDRESS_REGS.index("TOKENS"))
    assert "register TOKENS" in unaligned["message"]
    assert "error" not in ok and ok["cycles"] > 0
