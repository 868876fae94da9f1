"""The accelerator's instruction set: one definition for the compiler, the ISA emulator and the RTL decoder.

A *program* is a 16-byte header followed by 16-byte instructions, little-endian, placed in DDR at
``PROG_BASE`` (see :mod:`mmfree.rtl.regmap`). Every DDR operand is ``(base register, byte offset)``:
the base is one of :data:`mmfree.rtl.regmap.ADDRESS_REGS` (``DATA_BASE`` for the compiled model
image, ``STATE_IN``/``STATE_OUT``/``LOGITS``/``ARGMAX_OUT`` for the host's work buffers), so a
program is relocatable: only the base registers change when the buffers move.

Machine model (``docs/accelerator.md`` explains it with the hardware):

* **On-chip vector buffers** (:data:`BUFFERS`), ``W`` elements wide (``HW_LIMITS``), per token where
  marked ``[k]``: ``X`` residual (int32 [k], Q(res_frac)), ``A`` BitLinear input product (int64 [k]),
  ``H`` state after each position of the current layer (int32 [k]), ``T0..T2`` BitLinear outputs (int32 [k]),
  ``H0`` start state of the current layer, ``LB`` ``1 - lower bound`` (Q0.31), ``N`` pre-norm
  weight and ``NW0..NW2`` folded weights of the BitLinear(s) being quantized.
* **Code banks** 0..2 of the ternary engine (int8 codes of k token vectors).
* **Scalar registers** per token: the normalising shifts of ``X`` and ``A`` (tracked by every unit
  that writes them); per projection slot 0..2 ``P`` and the sum-of-squares shift ``sz`` (QSTATS), the
  code reciprocal, and ``(M, shift)`` (QCODES, which also sums the squares); the per-projection constants
  ``(c_m, c_e)`` (``SETC``), the model's
  activation format ``act_frac`` (``SETF``; the sigmoid/SiLU units index their table with it), and the argmax.

Execution: instructions are issued in order to four engines (vector-load DMA, store DMA, vector
unit, ternary engine). ``PREFETCH`` starts streaming a MATVEC's packed rows into the weight queue
early (while vector passes run); the MATVEC that carries the ``PREFETCHED`` flag and the same operands
consumes them, in program order. The hardware holds an instruction back while an earlier, unfinished one
writes something it reads or reads/writes something it writes; the one exception is a ``LOAD``
destination, which its readers consume element by element as it arrives. So the program needs no
explicit synchronisation; ``HALT`` waits for every engine before the run reports DONE.

:class:`Instr` encodes and decodes instructions; the bit fields are in :data:`OPS`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from mmfree.pymodel import numerics as N
from mmfree.rtl import regmap as RM

#: Bumped when an opcode, field or semantic changes; programs record it in their header. 2: multi-stream passes
#: (LOAD destination HROOT, the header's stream count, roots ``-1 - s``).
ISA_VERSION = 2
#: Program header magic (the bytes "MMFP").
PROGRAM_MAGIC = int.from_bytes(b"MMFP", "little")
INSTR_BYTES = 16
HEADER_BYTES = 16
#: Widths are reported (HW_LIMITS) and checked in units of this many elements.
WIDTH_UNIT = 16

# ---- operands ---------------------------------------------------------------------------------------
#: Base registers by name -> index (the index is also the ERR_ADDRESS_RANGE/ERR_UNALIGNED detail).
BASE = {name: i for i, name in enumerate(RM.ADDRESS_REGS)}

# vector buffers (resources of the hazard check; the numbering is also the scoreboard bit)
BUF_X, BUF_A, BUF_H, BUF_H0, BUF_T0, BUF_T1, BUF_T2, BUF_LB, BUF_N, BUF_NW0, BUF_NW1, BUF_NW2 = range(12)
BUFFERS = ("X", "A", "H", "H0", "T0", "T1", "T2", "LB", "N", "NW0", "NW1", "NW2")
#: Buffers that hold one vector per token (the others hold one vector).
PER_TOKEN = {BUF_X, BUF_A, BUF_H, BUF_T0, BUF_T1, BUF_T2}

# LOAD destinations (operand A). HROOT: stream ``s``'s start state of the current layer into the H vector of
# every token whose tree parent is ``-1 - s`` (a root of stream s, s >= 1); the MLGRU update of such a root reads
# it there instead of H0 (multi-stream passes, docs/accelerator.md).
LD_H0, LD_LB, LD_NORM, LD_HROOT = 0, 1, 2, 3
#: Most streams one program serves (the header's ``streams``; LOAD ``stream`` is 4 bits).
MAX_STREAMS = 16
# STORE sources (operand A)
ST_H, ST_T0, ST_T1, ST_ARG = 0, 1, 2, 3
STORE_IF_LOGITS = 1         # STORE operand B bit 0: only when FLAGS.WRITE_LOGITS is set
# quantizer sources (operand A of QSTATS/QCODES)
SRC_X, SRC_A = 0, 1
# ternary-engine epilogues (MATVEC ``epi``) and head flags (MATVEC ``flags``)
EPI_STORE, EPI_GLU, EPI_RESID, EPI_HEAD = 0, 1, 2, 3
HEAD_FIRST = 1              # first chunk of the head: restart the running argmax
HEAD_LAST = 2               # last chunk: the argmax of every token is final (ARG written)
PREFETCHED = 4              # the rows were requested by the oldest unmatched PREFETCH (same operands)
#: PREFETCHes that may be requested and not yet matched by their MATVEC.
PREFETCH_DEPTH = 4
# MATVEC destinations (operand C bits 7:4) for STORE/HEAD epilogues
DST_T0, DST_T1, DST_T2 = 0, 1, 2
#: Projection slots (SETC, QSTATS outputs, QCODES, MATVEC dequantisation) and code banks.
SLOTS = 3
BANKS = 3


@dataclass(frozen=True)
class Field:
    name: str
    word: int          # 0..3 (32-bit words of the instruction)
    lsb: int
    width: int
    signed: bool = False


def _f(name, word, lsb, width, signed=False):
    return Field(name, word, lsb, width, signed)


_A, _B, _C = (lambda n, w=8: _f(n, 0, 8, w)), (lambda n, w=8: _f(n, 0, 16, w)), (lambda n, w=8: _f(n, 0, 24, w))

#: opcode name -> (opcode, fields). Word 0 bits 7:0 hold the opcode.
OPS: dict[str, tuple[int, tuple[Field, ...]]] = {
    "HALT": (0x01, ()),
    "SYNC": (0x02, ()),
    "SETC": (0x03, (_A("slot"), _f("c_m", 1, 0, 32), _f("c_e", 2, 0, 32, True))),
    "SETF": (0x04, (_A("act_frac"),)),
    "LOAD": (0x10, (_A("dst"), _f("fields", 0, 16, 4), _f("stream", 0, 20, 4), _C("base"), _f("offset", 1, 0, 32),
                    _f("count", 2, 0, 32))),
    "STORE": (0x11, (_A("src"), _B("flags"), _C("base"), _f("offset", 1, 0, 32), _f("count", 2, 0, 32),
                      _f("tstride", 3, 0, 32))),
    "EMBED": (0x20, (_C("base"), _f("offset", 1, 0, 32), _f("count", 2, 0, 16), _f("stride16", 2, 16, 16),
                      _f("vocab", 3, 0, 32))),
    "QSTATS": (0x21, (_A("src"), _B("nproj"), _f("count", 2, 0, 32))),
    "QCODES": (0x22, (_A("src"), _B("slot"), _C("bank"), _f("count", 2, 0, 32))),
    "HGRN": (0x23, (_f("count", 2, 0, 32),)),
    "MATVEC": (0x30, (_f("bank", 0, 8, 4), _f("slot", 0, 12, 4), _f("epi", 0, 16, 4), _f("flags", 0, 20, 4),
                      _f("base", 0, 24, 4), _f("dst", 0, 28, 4), _f("offset", 1, 0, 32), _f("rows", 2, 0, 32),
                      _f("count", 3, 0, 32))),
    "PREFETCH": (0x31, (_f("base", 0, 24, 4), _f("offset", 1, 0, 32), _f("rows", 2, 0, 32), _f("count", 3, 0, 32))),
}
OPCODES = {code: name for name, (code, _) in OPS.items()}
OPCODE = {name: code for name, (code, _) in OPS.items()}


#: opcode name -> its operand legality, one expression over the operands (step 1 of the decoder's checks).
#: ``a`` gives each operand as an attribute and ``a.select(c, x, y)`` (x where c, else y); the expressions use
#: only comparisons joined by ``&`` / ``|``, so the same table runs on Python ints (the emulator,
#: :class:`Operands`) and on Amaranth values (the RTL decoder, :mod:`mmfree.rtl.decoder`). An instruction is
#: legal when its expression is true; HALT and SYNC have no operands to check.
LEGAL = {
    "HALT": lambda a: True,
    "SYNC": lambda a: True,
    "SETC": lambda a: a.slot < SLOTS,
    "SETF": lambda a: (a.act_frac > N.SIG_STEPS_LOG2) & (a.act_frac <= N.FRAC_MAX),
    "LOAD": lambda a: ((a.dst <= LD_HROOT)
                       & a.select(a.dst == LD_NORM, (a.fields >= 2) & (a.fields <= 1 + SLOTS), a.fields == 1)
                       & a.select(a.dst == LD_HROOT, a.stream != 0, a.stream == 0)
                       & (a.count != 0) & _base_ok(a)),
    "STORE": lambda a: ((a.src <= ST_ARG) & ((a.flags & ~STORE_IF_LOGITS) == 0) & (a.count != 0) & _base_ok(a)
                        & ((a.src != ST_ARG) | (a.count == 1))),
    "EMBED": lambda a: (a.count != 0) & (a.vocab != 0) & ((a.stride16 << 4) >= (a.count << 2)) & _base_ok(a),
    "QSTATS": lambda a: (a.src <= SRC_A) & (a.nproj >= 1) & (a.nproj <= SLOTS) & (a.count != 0),
    "QCODES": lambda a: (a.src <= SRC_A) & (a.slot < SLOTS) & (a.bank < BANKS) & (a.count != 0),
    "HGRN": lambda a: a.count != 0,
    "MATVEC": lambda a: ((a.bank < BANKS) & (a.slot < SLOTS) & (a.epi <= EPI_HEAD) & (a.dst <= DST_T2)
                         & ((a.flags & ~(HEAD_FIRST | HEAD_LAST | PREFETCHED)) == 0)
                         & (((a.flags & (HEAD_FIRST | HEAD_LAST)) == 0) | (a.epi == EPI_HEAD))
                         & (a.rows != 0) & (a.count != 0) & _base_ok(a)),
    "PREFETCH": lambda a: (a.rows != 0) & (a.count != 0) & _base_ok(a),
}


def _base_ok(a):
    """A DDR operand's base register is one the program may address (not MEM_LO / MEM_HI)."""
    return a.base < BASE["MEM_LO"]


class Operands:
    """The operands of one :class:`Instr` as attributes, for :data:`LEGAL` on Python ints."""

    def __init__(self, ins: Instr):
        self._ins = ins

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ins[name]

    @staticmethod
    def select(cond, if_true, if_false):
        return if_true if cond else if_false


def legal(ins: Instr) -> bool:
    """Whether an instruction's operands are legal (:data:`LEGAL`; ERR_BAD_INSTRUCTION otherwise)."""
    return bool(LEGAL[ins.op](Operands(ins)))


class IsaError(ValueError):
    pass


@dataclass
class Instr:
    """One instruction: ``op`` name and its operand values (missing operands are 0)."""

    op: str
    args: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return int(self.args.get(name, 0))

    def encode(self) -> bytes:
        if self.op not in OPS:
            raise IsaError(f"unknown instruction {self.op!r}; legal: {', '.join(OPS)}")
        code, fields = OPS[self.op]
        names = {f.name for f in fields}
        extra = set(self.args) - names
        if extra:
            raise IsaError(f"{self.op} has no operand(s) {sorted(extra)}; it takes {sorted(names)}")
        words = [code, 0, 0, 0]
        for f in fields:
            v = int(self.args.get(f.name, 0))
            lo, hi = (-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed else (0, (1 << f.width) - 1)
            if not lo <= v <= hi:
                raise IsaError(f"{self.op}.{f.name} = {v} does not fit its {f.width}-bit field [{lo}, {hi}]")
            words[f.word] |= (v & ((1 << f.width) - 1)) << f.lsb
        return struct.pack("<4I", *words)

    @classmethod
    def decode(cls, raw: bytes) -> Instr:
        words = struct.unpack("<4I", raw)
        code = words[0] & 0xFF
        if code not in OPCODES:
            raise IsaError(f"unknown opcode 0x{code:02x}")
        name = OPCODES[code]
        args = {}
        for f in OPS[name][1]:
            v = (words[f.word] >> f.lsb) & ((1 << f.width) - 1)
            if f.signed and v >> (f.width - 1):
                v -= 1 << f.width
            args[f.name] = v
        return cls(name, args)

    def __str__(self) -> str:
        return self.op + " " + ", ".join(f"{k}={v}" for k, v in self.args.items() if v or k in ("offset",))


@dataclass(frozen=True)
class Header:
    """The 16-byte program header: magic, ISA version, the widest vector the program uses (in units of
    :data:`WIDTH_UNIT`), the number of instructions that follow and ``streams``, how many independent streams
    the program's passes may carry (1..:data:`MAX_STREAMS`: it LOADs a start state per stream; tree parents
    below ``-streams`` are refused, ERR_BAD_PARENT; 0 in a program reads as 1)."""

    n_instr: int
    width_units: int
    version: int = ISA_VERSION
    streams: int = 1

    def encode(self) -> bytes:
        if not 0 < self.width_units < 1 << 16:
            raise IsaError(f"width_units must be in 1..65535, got {self.width_units}")
        if not 1 <= self.streams <= MAX_STREAMS:
            raise IsaError(f"streams must be in 1..{MAX_STREAMS}, got {self.streams}")
        return struct.pack("<IHHII", PROGRAM_MAGIC, self.version, self.width_units, self.n_instr, self.streams)

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        magic, version, width_units, n_instr, streams = struct.unpack("<IHHII", raw[:HEADER_BYTES])
        if magic != PROGRAM_MAGIC:
            raise IsaError(f"not an mmfree program (magic 0x{magic:08x})")
        return cls(n_instr, width_units, version, max(1, streams))


def assemble(instrs: list[Instr], width: int, streams: int = 1) -> bytes:
    """Header + encoded instructions. ``width``: the widest vector any instruction touches (elements);
    ``streams``: the streams the program serves (:class:`Header`)."""
    units = -(-width // WIDTH_UNIT)
    return Header(len(instrs), units, streams=streams).encode() + b"".join(i.encode() for i in instrs)


def disassemble(program: bytes) -> tuple[Header, list[Instr]]:
    h = Header.decode(program)
    body = program[HEADER_BYTES:HEADER_BYTES + h.n_instr * INSTR_BYTES]
    if len(body) != h.n_instr * INSTR_BYTES:
        raise IsaError(f"program is truncated: header says {h.n_instr} instructions, {len(body) // INSTR_BYTES} present")
    return h, [Instr.decode(body[i:i + INSTR_BYTES]) for i in range(0, len(body), INSTR_BYTES)]


# ---- what each instruction reads and writes (the hazard check of the sequencer and the emulator) --------
#: Scoreboard resources beyond the 12 buffers: code banks, projection slots' scalars, shift registers.
RES_BANK0 = 12                 # 12, 13, 14: code banks
RES_SLOT0 = 15                 # 15, 16, 17: (P, M, shift, R) of projection slot p
RES_CONST0 = 18                # 18, 19, 20: (c_m, c_e) of slot p
RES_SHX, RES_SHA, RES_ARG, RES_FRAC = 21, 22, 23, 24
N_RESOURCES = 25
#: Resources written only by LOAD: their readers wait per element, not for the whole LOAD.
STREAMED = frozenset({BUF_H0, BUF_LB, BUF_N, BUF_NW0, BUF_NW1, BUF_NW2})


def resources(ins: Instr) -> tuple[set[int], set[int]]:
    """(read set, write set) of an instruction, over the scoreboard resources."""
    a = ins
    op = ins.op
    if op == "SETC":
        return set(), {RES_CONST0 + a["slot"]}
    if op == "SETF":
        return set(), {RES_FRAC}
    if op == "LOAD":
        if a["dst"] == LD_H0:
            return set(), {BUF_H0}
        if a["dst"] == LD_LB:
            return set(), {BUF_LB}
        if a["dst"] == LD_HROOT:
            return set(), {BUF_H}
        return set(), {BUF_N} | {BUF_NW0 + p for p in range(max(0, a["fields"] - 1))}
    if op == "STORE":
        src = {ST_H: BUF_H, ST_T0: BUF_T0, ST_T1: BUF_T1, ST_ARG: RES_ARG}[a["src"]]
        return {src}, set()
    if op == "EMBED":
        return set(), {BUF_X, RES_SHX}
    if op == "QSTATS":
        src, sh = (BUF_X, RES_SHX) if a["src"] == SRC_X else (BUF_A, RES_SHA)
        n = a["nproj"]
        return {src, sh, BUF_N} | {BUF_NW0 + p for p in range(n)}, {RES_SLOT0 + p for p in range(n)}
    if op == "QCODES":
        src, sh = (BUF_X, RES_SHX) if a["src"] == SRC_X else (BUF_A, RES_SHA)
        slot = a["slot"]
        return ({src, sh, BUF_N, BUF_NW0 + slot, RES_SLOT0 + slot, RES_CONST0 + slot},
                {RES_BANK0 + a["bank"], RES_SLOT0 + slot})
    if op == "HGRN":
        return {BUF_H0, BUF_T0, BUF_T1, BUF_T2, BUF_LB, RES_FRAC}, {BUF_H, BUF_A, RES_SHA}
    if op == "MATVEC":
        rd = {RES_BANK0 + a["bank"], RES_SLOT0 + a["slot"]}
        e = a["epi"]
        if e == EPI_STORE:
            return rd, {BUF_T0 + a["dst"]}
        if e == EPI_GLU:
            return rd | {BUF_T0, RES_FRAC}, {BUF_A, RES_SHA}
        if e == EPI_RESID:
            return rd | {BUF_X}, {BUF_X, RES_SHX}
        # chunks of the head run in order on one engine; only the last one publishes the argmax
        return rd, {BUF_T0 + a["dst"]} | ({RES_ARG} if a["flags"] & HEAD_LAST else set())
    return set(), set()


def engine_of(op: str) -> str:
    """Which engine executes ``op``: "load", "store", "vector", "matvec" or "seq" (the sequencer itself)."""
    return {"LOAD": "load", "STORE": "store", "EMBED": "vector", "QSTATS": "vector", "QCODES": "vector",
            "HGRN": "vector", "MATVEC": "matvec"}.get(op, "seq")
