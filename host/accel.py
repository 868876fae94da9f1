"""The host side of one accelerator: :class:`AccelHost` runs passes of k tokens on any :class:`Transport`.

It places a compiled model (:mod:`mmfree.rtl.compiler`) and its work buffers in the window
(:func:`mmfree.host.layout.host_layout`), programs the base registers once, and runs passes
(:meth:`AccelHost.run`), returning a :class:`PassResult`: logits, argmax and the state after every position.
States live in two areas used in turn, so committing a prefix is pointing the next pass's ``STATE_IN`` at one
position of the last ``STATE_OUT`` (no copy). Every wait has a time-out."""

from __future__ import annotations

import struct
import time
import warnings
from dataclasses import dataclass

import numpy as np

from mmfree import MmfreeError, MmfreeWarning
from mmfree.host.errors import AccelRunError, check_timeout
from mmfree.host.layout import host_layout
from mmfree.host.transport import as_transport
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import Compiled, HwConfig

__all__ = ["ABORT_WAIT_S", "AccelHost", "AccelRunError", "PassResult", "read_draft_engine", "read_identity"]

#: How long :meth:`AccelHost.abort` waits for STATUS.BUSY to clear after SOFT_RESET (the RTL needs a few cycles).
ABORT_WAIT_S = 1.0


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


def read_draft_engine(read32) -> dict | None:
    """The accelerator's draft engine from DRAFT_CONFIG / DRAFT_COUNTERS / DRAFT_VOCAB (``read32(offset)``):
    :func:`regmap.decode_draft_config`'s dict plus ``vocab`` (bigram rows) and ``tree_rules`` (the rules
    GEN_DRAFT.tree selects: every :class:`regmap.TreeRule` from register map 2.3 on, only "template" before),
    or None for a build without one (either register 0, as a register map 2.1 bitstream reads)."""
    regs = RM.Registers(read32, None)
    vocab = regs.read("DRAFT_VOCAB")
    eng = RM.decode_draft_config(regs.read("DRAFT_CONFIG"), regs.read("DRAFT_COUNTERS"))
    if eng is None or not vocab:
        return None
    rules = tuple(r.rule for r in RM.TreeRule) if regs.fields("VERSION")["minor"] >= 3 else ("template",)
    return dict(eng, vocab=vocab, tree_rules=rules)


def read_identity(read32) -> dict:
    """Check the identity registers through ``read32(offset)`` and return HW_CONFIG's fields
    (:func:`regmap.decode_hw_config`). MmfreeError when ID is not the accelerator's, VERSION is another register
    map major version, or HW_CONFIG reads 0 or a zero bus width, lane count or tokens per pass (a build whose
    parameters do not read back: nothing could be sized from it)."""
    regs = RM.Registers(read32, None)
    if regs.read("ID") != RM.ID_MAGIC:
        raise MmfreeError("no mmfree accelerator answers at this CSR window (ID register mismatch): wrong "
                          "overlay, or the bitstream is not loaded")
    version = regs.read("VERSION")
    if version >> 16 != RM.REGMAP_VERSION_MAJOR:
        raise MmfreeError(f"the accelerator implements register map {version >> 16}.{version & 0xFFFF}, this "
                          f"host speaks {RM.REGMAP_VERSION_MAJOR}.{RM.REGMAP_VERSION_MINOR}")
    raw = regs.read("HW_CONFIG")
    hwc = RM.decode_hw_config(raw)
    zero = [f for f in ("bus_bytes", "lanes", "max_tokens") if not hwc[f]]
    if zero:
        raise MmfreeError(f"HW_CONFIG reads {raw:#010x}: {', '.join(zero)} {'is' if len(zero) == 1 else 'are'} 0, "
                          "so the host cannot size its buffers; the bitstream's build parameters do not read back "
                          "(a broken or foreign build): rebuild it with `mmfree build` and load it again")
    return hwc


class AccelHost:
    """Owns the accelerator on one board for one compiled model (see the module docstring).

    ``board``: a :class:`Transport` or any object of that shape (kept as ``self.board``; every access goes
    through ``self.transport``, which makes the transport checks). ``timeout_s``: the longest one pass may
    take before it is aborted (SOFT_RESET) and reported, finite and in (0, MAX_TIMEOUT_S] (MmfreeError otherwise).
    The identity registers are checked first (:func:`read_identity`). ``draft``: the bitstream's draft engine
    (:func:`read_draft_engine`; None without one), read at start-up with the other identity registers."""

    def __init__(self, board, compiled: Compiled, timeout_s: float = 60.0):
        self.board, self.c, self.timeout_s = board, compiled, check_timeout(timeout_s)
        self.transport = t = as_transport(board)
        self.regs = RM.Registers(t.read32, t.write32)      # every register access by name (rtl/regmap.py)
        hwc = read_identity(t.read32)
        if self.busy():
            warnings.warn("the accelerator was BUSY when opened (a pass or GENERATE left running, e.g. by a process "
                          "that was killed): it was reset with SOFT_RESET first", MmfreeWarning, stacklevel=2)
            if not self.abort():
                raise MmfreeError(f"the accelerator stays BUSY {ABORT_WAIT_S:g} s after SOFT_RESET: reload the "
                                  "overlay (`mmfree flash`)")
        self.draft = read_draft_engine(t.read32)
        self.hw = HwConfig(bus_bytes=hwc["bus_bytes"], max_tokens=hwc["max_tokens"],
                           max_width=16 * (self.regs.read("HW_LIMITS") & 0xFFFF),
                           weight_ports=hwc["weight_ports"], draft_vocab=self.draft["vocab"] if self.draft else 0,
                           pipelined_units=bool(hwc.get("pipelined_units", 0)))
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
        self.regs.write("IRQ_STATUS", 1)
        self.regs.write("CONTROL", irq_enable=1)
        self.state_in = self.addr["STATE_A"]
        self.next_out = self.addr["STATE_B"]
        self.reset_state()

    def set_addr(self, name: str, value: int) -> None:
        self.regs.write64(name, value)

    def reg64(self, name: str) -> int:
        return self.regs.read64(name)

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

    def busy(self) -> bool:
        """STATUS.BUSY: a pass or GENERATE is running."""
        return bool(self.regs.fields("STATUS")["busy"])

    def abort(self) -> bool:
        """Stop whatever the accelerator runs: SOFT_RESET (IRQ_ENABLE kept), acknowledge the interrupt, then wait
        up to :data:`ABORT_WAIT_S` for STATUS.BUSY to clear. True when it is idle. Every way out of a running pass
        that did not end by itself (time-out, Ctrl-C, any exception while waiting, closing) goes through here
        before the host frees anything."""
        self.regs.write("CONTROL", soft_reset=1, irq_enable=1)
        self.regs.write("IRQ_STATUS", 1)
        deadline = time.monotonic() + ABORT_WAIT_S
        while self.busy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(1e-4)
        return True

    def _abort_quietly(self) -> None:
        """:meth:`abort` while another exception is on its way out (Ctrl-C, a lost mapping): that one wins."""
        try:
            self.abort()
        except Exception:
            pass

    def start_and_wait(self, control: int, timeout_s: float) -> None:
        """Write ``control`` (CTRL_START or CTRL_GENERATE; IRQ_ENABLE is added) to CONTROL and wait for the
        interrupt. Not finished within ``timeout_s``: aborted (:meth:`abort`: SOFT_RESET, wait for IDLE) and
        reported (MmfreeError); STATUS.ERROR (the hardware stopped the pass itself and stays idle, ERROR_CODE
        readable): :class:`AccelRunError` (code, detail, PC). Anything raised while waiting (KeyboardInterrupt, an
        MMIO error) aborts the pass before it goes on."""
        b = self.transport
        timeout_s = check_timeout(timeout_s, max_s=None)
        self.regs.write("CONTROL", control | RM.CTRL_IRQ_ENABLE)
        try:
            done = b.wait_irq(timeout_s)
        except BaseException:
            self._abort_quietly()
            raise
        if not done:
            status, pc = self.regs.read("STATUS"), self.regs.read("PC")
            where = ""
            if control & RM.CTRL_GENERATE:
                where = f", GEN_COUNT {self.regs.read('GEN_COUNT')}, GEN_PASSES {self.regs.read('GEN_PASSES')}"
            idle = self.abort()                                   # never left running
            raise MmfreeError(f"the accelerator did not finish within {timeout_s:g} s (STATUS {status:#x}, "
                              f"PC {pc:#x}{where}); it was aborted with SOFT_RESET"
                              + ("" if idle else f" but stayed BUSY for {ABORT_WAIT_S:g} s: reload the overlay")
                              + ". Raise the time-out for big models")
        self.regs.write("IRQ_STATUS", 1)
        status = self.regs.read("STATUS")
        if RM.decode("STATUS", status)["error"]:   # the hardware stopped itself; STATUS/ERROR_CODE stay readable
            raise AccelRunError(self.regs.read("ERROR_CODE"), self.regs.read("PC"))
        if not RM.decode("STATUS", status)["done"]:
            raise MmfreeError(f"interrupt without DONE or ERROR (STATUS {status:#x})")

    def read_state(self, addr: int) -> np.ndarray:
        """The state (int64 ``[L, d]``) at DDR address ``addr`` (a position of STATE_A or STATE_B)."""
        raw = self.transport.read_mem(addr, 4 * self.L * self.d)
        return np.frombuffer(raw, dtype="<i4").reshape(self.L, self.d).astype(np.int64)

    def run_forest(self, tokens, parents, starts, write_logits: bool = True) -> PassResult:
        """One pass of B = ``len(starts)`` independent streams: a forest whose root ``parents[j] = -1 - s``
        continues from stream s's start state (docs/accelerator.md "Multi-stream passes"; IntModel.verify_forest
        defines the numbers). The compiled program must serve B streams (``Compiled.streams``, ``compile_model(...,
        streams=B)``) and B <= the bitstream's max tokens.

        ``starts``: each stream's start state, an int array ``[L, d]`` or the DDR address of a state written by
        the previous pass (``PassResult.state_addrs``). Stream s's state is placed at ``STATE_IN + s x
        state_stride`` of the area the first address lies in (STATE_A if none; a state already in its place is
        not copied, so decoding one token per stream with the roots first copies nothing), the pass writes the
        other area. Nothing is committed: the caller keeps each stream's state. MmfreeError for B outside
        1..min(streams, max tokens) or a state of the wrong shape."""
        B = len(starts)
        limit = min(self.c.streams, self.hw.max_tokens)
        if not 1 <= B <= limit:
            raise MmfreeError(f"a forest pass takes 1..{limit} streams (the program serves {self.c.streams}: compile "
                              f"it with streams=B; the bitstream verifies {self.hw.max_tokens} tokens), got {B}")
        stride = self.c.state_stride
        addrs = [a for a in starts if isinstance(a, (int, np.integer))]
        area = self.state_area(int(addrs[0])) if addrs else self.addr["STATE_A"]
        data = {}
        for s, src in enumerate(starts):
            dst = area + s * stride
            if isinstance(src, (int, np.integer)):
                if int(src) != dst:
                    data[dst] = self.transport.read_mem(int(src), 4 * self.L * self.d)
                continue
            h = np.asarray(src)
            if h.shape != (self.L, self.d):
                raise MmfreeError(f"stream {s}'s start state is [{self.L}, {self.d}], got {list(h.shape)}")
            data[dst] = h.astype("<i4").tobytes()
        for dst, raw in data.items():                  # every source read before anything is overwritten
            self.transport.write_mem(dst, raw)
        self.commit_state(area)
        return self.run(tokens, parents=parents, write_logits=write_logits, commit_last=False)

    def run(self, tokens, parents=None, write_logits: bool = True, commit_last: bool = True,
            num_tokens: int | None = None, timeout_s: float | None = None) -> PassResult:
        """One pass of k = len(tokens) tokens (a chain, or a tree with ``parents``). The state after the last
        position becomes the next start state when ``commit_last``. ``num_tokens`` overrides the NUM_TOKENS
        register (tests of the hardware's checks). A pass that does not finish within ``timeout_s`` (default:
        the host's) is aborted with SOFT_RESET and reported; a pass the hardware stops with an error raises
        :class:`AccelRunError` (code, detail, PC)."""
        b, k = self.transport, len(tokens)
        timeout_s = self.timeout_s if timeout_s is None else check_timeout(timeout_s)
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
        self.regs.write("NUM_TOKENS", k if num_tokens is None else num_tokens)
        self.regs.write("FLAGS", flags)
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
