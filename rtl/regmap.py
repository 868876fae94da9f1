"""The accelerator's host interface: top-level ports, the AXI4-Lite register map and error codes.

This module is the contract between the gateware (:mod:`mmfree.rtl`), the simulated board
(:mod:`mmfree.sim`) and the PYNQ driver (:mod:`mmfree.host`, :mod:`mmfree.boards.pynq`). Everything that crosses the
boundary is defined here once; ``docs/accelerator.md`` explains it.

Execution model: the host places a program and the model's memory image (both produced by
:func:`mmfree.rtl.compiler.compile_model` from an exported model) in DDR, plus its own work buffers
(token ids, parents, start state, per-position output states, logits). It writes their addresses to the registers
below, the number
of tokens ``k`` of this run, and sets ``CONTROL.START``. The accelerator runs the program for the k
tokens in one pass over the weights, writes the state after every position (so the host can commit
any prefix by pointing the next run's ``STATE_IN`` at one of them) and the logits, sets
``STATUS.DONE`` (and the interrupt when enabled), and reports counters. On any fault it stops with
``STATUS.ERROR`` and an error code; it never hangs waiting on a bad request.

Buffer formats (all little-endian, all base addresses 64-byte aligned):

====================  ===============================  ==============================================
register              points at                        format
====================  ===============================  ==============================================
PROG_BASE             program                          16-byte header + 16-byte instructions
                                                       (:mod:`mmfree.rtl.isa`, docs/accelerator.md)
DATA_BASE             model memory image               :func:`mmfree.rtl.compiler.compile_model`'s image
                                                       (not ``weights.bin``: re-laid for the DMAs)
TOKENS                token ids of this run            uint32[k]
PARENTS               tree parents (``FLAGS.TREE``)    int32[k], -1 = start state, else < own index;
                                                       -1 - s: stream s's start state (a forest: the program
                                                       header's ``streams`` > s; at STATE_IN + s x stride)
STATE_IN              start state                      int32[L][d] (Q(act_frac))
STATE_OUT             state after every position       k positions :func:`state_stride` bytes apart, each
                                                       int32[L][d]; any position is a valid STATE_IN
LOGITS                logits (``FLAGS.WRITE_LOGITS``)  int32[k][V] (Q(act_frac))
ARGMAX_OUT            greedy token per position        uint32[k]
====================  ===============================  ==============================================

Every DDR access of a run must lie in [MEM_LO, MEM_HI) (``ERR_ADDRESS_RANGE`` otherwise, before anything
is read or written), and every base register in use (PARENTS only with FLAGS.TREE, LOGITS only with
FLAGS.WRITE_LOGITS, MEM_LO and MEM_HI always) must be ALIGN-byte aligned (``ERR_UNALIGNED``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from mmfree import MmfreeError
from mmfree.pymodel.layout import ALIGN as LAYOUT_ALIGN
from mmfree.pymodel.layout import round_up

#: Bumped when a register, bit or error code changes meaning. The driver refuses a bitstream whose
#: VERSION register (or .hwh metadata) differs in the major number.
REGMAP_VERSION_MAJOR = 2
REGMAP_VERSION_MINOR = 3                  # 2.3: GEN_DRAFT (the draft tree rule of GENERATE)
REGMAP_VERSION = (REGMAP_VERSION_MAJOR << 16) | REGMAP_VERSION_MINOR    # the VERSION register's fields

#: ``ID`` register value: ASCII "MMFR".
ID_MAGIC = 0x4D4D4652

#: IP-XACT identity of the packaged accelerator (the PYNQ driver binds to it).
VLNV = "mmfree.org:mmfree:mmfree_accel:1.0"

#: Top-level port names of the accelerator module (Amaranth names signature members ``a__b``; clock ``clk``,
#: active-high synchronous reset ``rst``).
TOP_NAME = "mmfree_accel"
PORT_AXI_MASTER = "m_axi"        # AXI4 master to DDR: m_axi__araddr, m_axi__rdata, ...
PORT_AXI_LITE = "s_axil"         # AXI4-Lite slave: s_axil__awaddr, ...
PORT_IRQ = "irq"                 # level-high interrupt, cleared by writing IRQ_STATUS
#: AXI masters a build may stream weights through (``HwConfig.weight_ports``, ``build.weight_ports``,
#: ``--weight-ports``): every HP port of a ZynqMP (HP0-HP3 and HPC0-HPC1) at most. Row ``r`` of a matrix goes to port
#: ``r mod P``; 6 is not a power of two, so the weight fetch divides by a constant (``rtl.pipeline.div_const``).
WEIGHT_PORT_CHOICES = (1, 2, 4, 6)
#: Most AXI masters the accelerator streams weights through (``m_axi`` and ``m_axi_w1`` .. ``m_axi_w5``).
MAX_WEIGHT_PORTS = max(WEIGHT_PORT_CHOICES)


def weight_port(p: int) -> str:
    """Name of weight port ``p`` (1 .. weight_ports - 1): an extra read-only AXI4 master (``m_axi_w1__araddr``...,
    the write channels held idle). Port 0 is ``m_axi`` itself, which also carries every other transfer."""
    if not 1 <= p < MAX_WEIGHT_PORTS:
        raise ValueError(f"weight port must be in 1..{MAX_WEIGHT_PORTS - 1}, got {p}")
    return f"{PORT_AXI_MASTER}_w{p}"
CSR_ADDR_BITS = 12               # 4 KiB register window
ALIGN = LAYOUT_ALIGN             # every base address must be a multiple of this (pymodel.layout.ALIGN)


class Access(str, enum.Enum):
    """What the host may do with a register (a ``str`` enum: ``Access.RW == "rw"``)."""
    RO = "ro"        # read only (writes ignored)
    RW = "rw"        # stored, read back
    WO = "wo"        # write only (reads 0): CONTROL's pulses
    W1C = "w1c"      # write 1 to clear


class TreeRule(enum.IntEnum):
    """``GEN_DRAFT.tree``: how the draft engine shapes each tree of a GENERATE (docs/speculative.md).
    TEMPLATE: the build's fixed template ``make_template(K - 1, K - 1)`` (``draft_tree``); COUNT_GUIDED: the
    K - 1 nodes of highest estimated path probability (``draft_tree_guided``)."""
    TEMPLATE = 0
    COUNT_GUIDED = 1

    @property
    def rule(self) -> str:
        """The reference's name of the rule (``mmfree.pymodel.trigram.TREE_RULES``)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def of(cls, rule: str) -> TreeRule:
        """The value of a rule named as the reference names it; RegisterFieldError for another name."""
        for v in cls:
            if v.rule == rule:
                return v
        raise RegisterFieldError(f"unknown draft tree rule {rule!r}: choose one of {', '.join(v.rule for v in cls)}")


@dataclass(frozen=True)
class Field:
    """One bit field of a register: bits ``lo .. lo + width - 1``, an unsigned integer; ``values``: the
    ``IntEnum`` of its legal values for an enumerated field (None: any value that fits)."""
    name: str
    lo: int
    width: int
    values: type[enum.IntEnum] | None = None

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo


@dataclass(frozen=True)
class Reg:
    """One 32-bit register: byte offset, host access, description and (for the registers that have them) its bit
    fields, lowest first (bits no field names are reserved: written 0, read 0)."""
    name: str
    offset: int
    access: Access
    doc: str
    fields: tuple[Field, ...] = ()


def _f(*spec: tuple[str, int, int]) -> tuple[Field, ...]:
    return tuple(Field(*s) for s in spec)


REGISTERS: tuple[Reg, ...] = (
    Reg("ID", 0x000, Access.RO, "ID_MAGIC"),
    Reg("VERSION", 0x004, Access.RO, "REGMAP_VERSION: major << 16 | minor",
        _f(("minor", 0, 16), ("major", 16, 16))),
    Reg("HW_CONFIG", 0x008, Access.RO, "bits 7:0 bus bytes per beat, 15:8 lanes per weight port (trits per cycle of "
                                        "one port's ternary engines), 23:16 max tokens k, 27:24 weight ports (AXI "
                                        "masters streaming weights; 0 reads as 1), 28 pipelined units (the datapath's "
                                        "vector units are their pipelined variants: HwConfig.pipelined_units)",
        _f(("bus_bytes", 0, 8), ("lanes", 8, 8), ("max_tokens", 16, 8), ("weight_ports", 24, 4),
           ("pipelined_units", 28, 1))),
    Reg("HW_LIMITS", 0x00C, Access.RO, "bits 15:0 max width (d, and I) in units of 16 elements; 31:16 reserved",
        _f(("width_units", 0, 16))),
    Reg("CONTROL", 0x010, Access.WO, "bit 0 START, bit 1 SOFT_RESET (abort and clear), bit 2 IRQ_ENABLE (sticky), "
                                     "bit 3 GENERATE (the on-chip draft-verify loop)",
        _f(("start", 0, 1), ("soft_reset", 1, 1), ("irq_enable", 2, 1), ("generate", 3, 1))),
    Reg("STATUS", 0x014, Access.RO, "bit 0 BUSY, bit 1 DONE, bit 2 ERROR, bit 3 IRQ_ENABLED",
        _f(("busy", 0, 1), ("done", 1, 1), ("error", 2, 1), ("irq_enabled", 3, 1))),
    Reg("ERROR_CODE", 0x018, Access.RO, "0 = none, else an ERR_* code in bits 7:0 and detail in 31:8",
        _f(("code", 0, 8), ("detail", 8, 24))),
    Reg("IRQ_STATUS", 0x01C, Access.W1C, "bit 0 DONE or ERROR interrupt pending; write 1 to clear",
        _f(("pending", 0, 1))),
    Reg("PROG_BASE_LO", 0x020, Access.RW, ""), Reg("PROG_BASE_HI", 0x024, Access.RW, ""),
    Reg("DATA_BASE_LO", 0x028, Access.RW, ""), Reg("DATA_BASE_HI", 0x02C, Access.RW, ""),
    Reg("TOKENS_LO", 0x030, Access.RW, ""), Reg("TOKENS_HI", 0x034, Access.RW, ""),
    Reg("PARENTS_LO", 0x038, Access.RW, ""), Reg("PARENTS_HI", 0x03C, Access.RW, ""),
    Reg("STATE_IN_LO", 0x040, Access.RW, ""), Reg("STATE_IN_HI", 0x044, Access.RW, ""),
    Reg("STATE_OUT_LO", 0x048, Access.RW, ""), Reg("STATE_OUT_HI", 0x04C, Access.RW, ""),
    Reg("LOGITS_LO", 0x050, Access.RW, ""), Reg("LOGITS_HI", 0x054, Access.RW, ""),
    Reg("ARGMAX_OUT_LO", 0x058, Access.RW, ""), Reg("ARGMAX_OUT_HI", 0x05C, Access.RW, ""),
    Reg("MEM_LO_LO", 0x060, Access.RW, "lowest DDR address the accelerator may touch"), Reg("MEM_LO_HI", 0x064, Access.RW, ""),
    Reg("MEM_HI_LO", 0x068, Access.RW, "one past the highest DDR address it may touch"), Reg("MEM_HI_HI", 0x06C, Access.RW, ""),
    Reg("NUM_TOKENS", 0x070, Access.RW, "k, 1..max tokens"),
    Reg("FLAGS", 0x074, Access.RW, "bit 0 WRITE_LOGITS (the program's logits STOREs run), bit 1 TREE (use PARENTS; "
                                    "else a chain)",
        _f(("write_logits", 0, 1), ("tree", 1, 1))),
    Reg("ARGMAX", 0x078, Access.RO, "greedy token of the last position of the last run"),
    Reg("PC", 0x07C, Access.RO, "byte offset from PROG_BASE of the instruction being decoded (the faulting one for "
                                 "decode errors; for an engine's error, the one decoded when it was reported)"),
    Reg("CYCLES_LO", 0x080, Access.RO, "clock cycles of the last run (START to DONE)"), Reg("CYCLES_HI", 0x084, Access.RO, ""),
    Reg("STALLS_LO", 0x088, Access.RO, "cycles a ternary engine with rows to do waited for weight data"),
    Reg("STALLS_HI", 0x08C, Access.RO, ""),
    Reg("RD_BYTES_LO", 0x090, Access.RO, "bytes read from DDR in the last run (AXI R beats x bus bytes)"),
    Reg("RD_BYTES_HI", 0x094, Access.RO, ""),
    Reg("WR_BYTES_LO", 0x098, Access.RO, "bytes written to DDR in the last run (AXI W beats x bus bytes)"),
    Reg("WR_BYTES_HI", 0x09C, Access.RO, ""),
    # ---- the on-chip draft-verify loop (CONTROL.GENERATE; builds with a draft engine, DRAFT_VOCAB != 0) ----
    Reg("TABLE_BASE_LO", 0x0A0, Access.RW, "trigram lines of the draft table (the table file's trig array as it is: "
                                            "2**S x W lines of 4 (1 + K) bytes)"), Reg("TABLE_BASE_HI", 0x0A4, Access.RW, ""),
    Reg("BIGRAM_BASE_LO", 0x0A8, Access.RW, "bigram rows: DRAFT_VOCAB rows of 4 KB bytes (rows past the table's "
                                             "vocabulary zero); loaded at GENERATE, written back at its end"),
    Reg("BIGRAM_BASE_HI", 0x0AC, Access.RW, ""),
    Reg("GEN_OUT_LO", 0x0B0, Access.RW, "emitted tokens, uint32[GEN_N]"), Reg("GEN_OUT_HI", 0x0B4, Access.RW, ""),
    Reg("STATE_ALT_LO", 0x0B8, Access.RW, "second state area (max tokens positions): passes alternate STATE_OUT and "
                                           "STATE_ALT"), Reg("STATE_ALT_HI", 0x0BC, Access.RW, ""),
    Reg("GEN_N", 0x0C0, Access.RW, "tokens to emit, >= 1"),
    Reg("GEN_CONTEXT", 0x0C4, Access.RW, "bits 15:0 the last committed token (not yet fed; the first pass's root), "
                                          "31:16 the token before it",
        _f(("root", 0, 16), ("prev", 16, 16))),
    Reg("GEN_EOS", 0x0C8, Access.RW, "bit 31 enable, bits 15:0 a token that ends the generation (emitted, then stop)",
        _f(("token", 0, 16), ("enable", 31, 1))),
    Reg("STATE_STRIDE", 0x0CC, Access.RW, "bytes between positions in STATE_OUT (state_stride(d, L)), a multiple of "
                                           "ALIGN"),
    Reg("DRAFT_CONFIG", 0x0D0, Access.RO, "0: no draft engine; else bits 7:0 sets_log2, 15:8 ways, 23:16 slots, "
                                           "31:24 bigram_slots (TableParams)",
        _f(("sets_log2", 0, 8), ("ways", 8, 8), ("slots", 16, 8), ("bigram_slots", 24, 8))),
    Reg("DRAFT_VOCAB", 0x0D4, Access.RO, "rows of the on-chip bigram fallback (0: no draft engine)"),
    Reg("DRAFT_COUNTERS", 0x0D8, Access.RO, "bits 15:0 inc, 31:16 cmax (TableParams); 0: no draft engine",
        _f(("inc", 0, 16), ("cmax", 16, 16))),
    Reg("GEN_COUNT", 0x0DC, Access.RO, "tokens emitted by the last GENERATE"),
    Reg("GEN_PASSES", 0x0E0, Access.RO, "verification passes of the last GENERATE"),
    Reg("GEN_NODES", 0x0E4, Access.RO, "draft tree nodes (roots included) fed by the last GENERATE"),
    Reg("GEN_CYCLES_LO", 0x0E8, Access.RO, "clock cycles of the last GENERATE (CONTROL to DONE: table load, drafts, "
                                            "passes, updates, table write-back)"),
    Reg("GEN_CYCLES_HI", 0x0EC, Access.RO, ""),
    Reg("GEN_STATE_LO", 0x0F0, Access.RO, "address of the state after the last committed node of the last GENERATE (a "
                                           "STATE_IN to go on from)"), Reg("GEN_STATE_HI", 0x0F4, Access.RO, ""),
    Reg("GEN_DRAFT", 0x0F8, Access.RW, "bits 1:0 tree: the draft tree rule of GENERATE (TreeRule: 0 the build's "
                                        "template, 1 count-guided; others ERR_GEN_CONFIG detail 2)",
        (Field("tree", 0, 2, TreeRule),)),
)
REG = {r.name: r for r in REGISTERS}
OFFSET = {r.name: r.offset for r in REGISTERS}



class RegisterFieldError(MmfreeError, ValueError):
    """A register name, field name or field value that the register map does not have room for."""


def fields_of(name: str) -> tuple[Field, ...]:
    """The bit fields of register ``name`` (empty for a plain 32-bit value); RegisterFieldError for an unknown name."""
    if name not in REG:
        raise RegisterFieldError(f"unknown register {name!r}: choose one of regmap.REGISTERS")
    return REG[name].fields


# the one check of MAX_WEIGHT_PORTS against the width of the HW_CONFIG field that reports it
if MAX_WEIGHT_PORTS >= 1 << next(f.width for f in fields_of("HW_CONFIG") if f.name == "weight_ports"):
    raise RegisterFieldError(f"MAX_WEIGHT_PORTS = {MAX_WEIGHT_PORTS} does not fit HW_CONFIG's weight_ports field")


def encode(name: str, **fields: int) -> int:
    """The 32-bit value of register ``name`` with these fields (others 0), e.g. ``encode("CONTROL", start=1)``.
    RegisterFieldError names the register and field when a field is unknown or its value does not fit."""
    known = {f.name: f for f in fields_of(name)}
    value = 0
    for key, v in fields.items():
        if key not in known:
            raise RegisterFieldError(f"register {name} has no field {key!r}; its fields: {', '.join(known) or 'none'}")
        f = known[key]
        v = int(v)
        if not 0 <= v < 1 << f.width:
            raise RegisterFieldError(f"{name}.{key} must be in 0..{(1 << f.width) - 1} ({f.width} bits), got {v}")
        if f.values is not None and v not in set(f.values):
            legal = ", ".join(f"{int(x)} ({x.name})" for x in f.values)
            raise RegisterFieldError(f"{name}.{key} must be one of {legal}, got {v}")
        value |= v << f.lo
    return value


def decode(name: str, value: int) -> dict[str, int]:
    """Every field of register ``name`` read from its 32-bit ``value`` (reserved bits ignored)."""
    return {f.name: (int(value) >> f.lo) & ((1 << f.width) - 1) for f in fields_of(name)}


class Registers:
    """Host access to the register map by name over two 32-bit bus functions (MMIO, the simulated board, the
    emulator): ``read32(offset) -> int`` and ``write32(offset, value)``, offsets in bytes from the window's base.

    * ``read(name)`` the 32-bit value; ``fields(name)`` its decoded fields (a dict);
    * ``write(name, value)`` or ``write(name, **fields)`` (the fields encoded, the others 0);
    * ``read64(name)`` / ``write64(name, value)`` a 64-bit register by the name without ``_LO`` / ``_HI``
      (``read64("CYCLES")``, ``write64("PROG_BASE", addr)``), low word first.

    Unknown names, fields or values that do not fit raise :class:`RegisterFieldError`."""

    def __init__(self, read32: Callable[[int], int], write32: Callable[[int, int], None]):
        self._read32, self._write32 = read32, write32

    @staticmethod
    def offset(name: str) -> int:
        fields_of(name)
        return REG[name].offset

    def read(self, name: str) -> int:
        return int(self._read32(self.offset(name)))

    def fields(self, name: str) -> dict[str, int]:
        return decode(name, self.read(name))

    def write(self, name: str, value: int | None = None, **fields: int) -> None:
        if (value is None) == (not fields):
            raise RegisterFieldError(f"write {name}: give either a value or its fields (one of the two)")
        if value is None:
            value = encode(name, **fields)
        if not 0 <= int(value) < 1 << 32:
            raise RegisterFieldError(f"{name} is a 32-bit register, got {value}")
        self._write32(self.offset(name), int(value))

    def read64(self, name: str) -> int:
        lo = self.read(name + "_LO")
        return lo | (self.read(name + "_HI") << 32)

    def write64(self, name: str, value: int) -> None:
        if not 0 <= int(value) < 1 << 64:
            raise RegisterFieldError(f"{name} is a 64-bit register, got {value}")
        self.write(name + "_LO", int(value) & 0xFFFFFFFF)
        self.write(name + "_HI", int(value) >> 32)


# CONTROL, STATUS and FLAGS bits as masks (derived from the field tables above)
CTRL_START = encode("CONTROL", start=1)
CTRL_SOFT_RESET = encode("CONTROL", soft_reset=1)
CTRL_IRQ_ENABLE = encode("CONTROL", irq_enable=1)
CTRL_GENERATE = encode("CONTROL", generate=1)        # run the on-chip draft-verify loop (docs/speculative.md)
STAT_BUSY = encode("STATUS", busy=1)
STAT_DONE = encode("STATUS", done=1)
STAT_ERROR = encode("STATUS", error=1)
STAT_IRQ_ENABLED = encode("STATUS", irq_enabled=1)
FLAG_WRITE_LOGITS = encode("FLAGS", write_logits=1)
FLAG_TREE = encode("FLAGS", tree=1)

#: 64-bit address registers, by the name without the _LO/_HI suffix.
ADDRESS_REGS = ("PROG_BASE", "DATA_BASE", "TOKENS", "PARENTS", "STATE_IN", "STATE_OUT", "LOGITS", "ARGMAX_OUT",
                "MEM_LO", "MEM_HI")
#: 64-bit address registers of the draft-verify loop; error details count on from ``len(ADDRESS_REGS)``.
GEN_ADDRESS_REGS = ("TABLE_BASE", "BIGRAM_BASE", "GEN_OUT", "STATE_ALT")

# Error codes (ERROR_CODE bits 7:0). Detail bits 31:8 say more where noted.
ERR_NONE = 0
ERR_ADDRESS_RANGE = 1     # a DDR access outside [MEM_LO, MEM_HI); detail: which base register (index in ADDRESS_REGS)
ERR_UNALIGNED = 2         # a base address not a multiple of ALIGN; detail: index in ADDRESS_REGS
ERR_TOKEN_RANGE = 3       # a token id >= vocabulary; detail: position in the run
ERR_BAD_INSTRUCTION = 4   # unknown opcode, bad operand or misaligned operand address, a MATVEC that does not
                          # match its PREFETCH; detail: opcode (0: bad program header magic/version)
ERR_NUM_TOKENS = 5        # NUM_TOKENS == 0 or > max tokens
ERR_BAD_PARENT = 6        # FLAGS.TREE and parents[j] not in [-S, j), S = min(program streams, K); detail: position
ERR_AXI = 7               # DDR returned SLVERR/DECERR
ERR_TOO_WIDE = 8          # the program asks for a vector wider than the hardware holds (HW_LIMITS); detail: the
                          # program header's width in units of 16 (0 when an instruction's operand is too wide)
ERR_PROGRAM = 9           # the program ran past its end without HALT
ERR_NOT_LOADED = 10       # an instruction read an on-chip buffer beyond what the program LOADed into it; detail: opcode
ERR_NO_DRAFT = 11         # CONTROL.GENERATE on a build without a draft engine (DRAFT_VOCAB == 0)
ERR_GEN_CONFIG = 12       # GENERATE with GEN_N == 0 (detail 0), or STATE_STRIDE 0 / not a multiple of ALIGN (detail 1),
                          # or GEN_DRAFT.tree not a TreeRule (detail 2)

ERROR_MESSAGES = {
    ERR_ADDRESS_RANGE: "a DDR access fell outside [MEM_LO, MEM_HI): the program, image or a buffer does not fit the "
                       "configured address window",
    ERR_UNALIGNED: f"a base address register is not {ALIGN}-byte aligned",
    ERR_TOKEN_RANGE: "a token id is outside the model's vocabulary",
    ERR_BAD_INSTRUCTION: "the program holds an unknown or malformed instruction (program/bitstream mismatch?)",
    ERR_NUM_TOKENS: "NUM_TOKENS is 0 or larger than the hardware's maximum tokens per pass",
    ERR_BAD_PARENT: "a tree parent index is not in [-streams, position) (-1 - s: a root of stream s)",
    ERR_AXI: "the DDR interface returned an AXI error response",
    ERR_TOO_WIDE: "the model is wider than this bitstream's on-chip buffers (HW_LIMITS)",
    ERR_PROGRAM: "the program ran past its end without HALT",
    ERR_NOT_LOADED: "an instruction read an on-chip buffer beyond what the program loaded into it (compiler bug)",
    ERR_NO_DRAFT: "GENERATE needs a bitstream with the draft engine (DRAFT_VOCAB is 0): rebuild with one, or draft on "
                  "the host",
    ERR_GEN_CONFIG: "a draft-verify loop register is invalid",
}


def error_message(code_register: int) -> str:
    """Human-readable text of an ERROR_CODE register value."""
    code, detail = decode("ERROR_CODE", code_register).values()
    if code == ERR_NONE:
        return "no error"
    text = ERROR_MESSAGES.get(code, f"unknown error code {code}")
    if code in (ERR_ADDRESS_RANGE, ERR_UNALIGNED) and detail < len(ADDRESS_REGS) + len(GEN_ADDRESS_REGS):
        text += f" (register {(ADDRESS_REGS + GEN_ADDRESS_REGS)[detail]})"
    elif code == ERR_GEN_CONFIG and detail in (0, 1):
        text += " (" + ("GEN_N is 0: ask for at least one token" if detail == 0 else
                        f"STATE_STRIDE must be a non-zero multiple of {ALIGN}") + ")"
    elif code == ERR_GEN_CONFIG and detail == 2:
        text += (" (GEN_DRAFT.tree must be " + " or ".join(f"{int(v)} ({v.rule})" for v in TreeRule) + ")")
    elif code in (ERR_TOKEN_RANGE, ERR_BAD_PARENT):
        text += f" (position {detail})"
    elif code in (ERR_BAD_INSTRUCTION, ERR_NOT_LOADED) and detail:
        text += f" (opcode 0x{detail:02x})"
    elif code == ERR_TOO_WIDE and detail:
        text += f" (the program needs {16 * detail} elements)"
    elif detail:
        text += f" (detail {detail})"
    return f"error {code}: {text}"


def decode_hw_config(value: int) -> dict:
    """HW_CONFIG fields; ``lanes`` is per weight port, ``weight_ports`` at least 1."""
    out = decode("HW_CONFIG", value)
    out["weight_ports"] = max(1, out["weight_ports"])
    return out


def encode_hw_config(bus_bytes: int, lanes: int, max_tokens: int, weight_ports: int = 1,
                     pipelined_units: bool = False) -> int:
    """HW_CONFIG of a build (bus_bytes, lanes, max_tokens each 1..255; weight_ports one of WEIGHT_PORT_CHOICES;
    pipelined_units a bool)."""
    for name, v in (("bus_bytes", bus_bytes), ("lanes", lanes), ("max_tokens", max_tokens)):
        if not 0 < v < 256:
            raise RegisterFieldError(f"{name} must be in 1..255, got {v}")
    if weight_ports not in WEIGHT_PORT_CHOICES:
        raise RegisterFieldError(f"weight_ports must be one of {', '.join(map(str, WEIGHT_PORT_CHOICES))}, "
                                 f"got {weight_ports}")
    return encode("HW_CONFIG", bus_bytes=bus_bytes, lanes=lanes, max_tokens=max_tokens, weight_ports=weight_ports,
                  pipelined_units=int(bool(pipelined_units)))


def state_stride(d: int, layers: int) -> int:
    """Bytes between consecutive positions in ``STATE_OUT``: one state (int32[L][d]) rounded up to ``ALIGN``,
    so the state after any position is itself a legal ``STATE_IN`` (commit a prefix without a copy)."""
    return round_up(4 * layers * d, ALIGN)


def buffer_sizes(d: int, layers: int, vocab: int, k: int) -> dict[str, int]:
    """Bytes of each host work buffer for a run of k tokens (before 64-byte alignment)."""
    return {"TOKENS": 4 * k, "PARENTS": 4 * k, "STATE_IN": 4 * layers * d, "STATE_OUT": k * state_stride(d, layers),
            "LOGITS": 4 * k * vocab, "ARGMAX_OUT": 4 * k}


def encode_draft_config(sets_log2: int, ways: int, slots: int, bigram_slots: int) -> int:
    """DRAFT_CONFIG of a build whose draft engine has these TableParams fields (each 1..255)."""
    for name, v in (("sets_log2", sets_log2), ("ways", ways), ("slots", slots), ("bigram_slots", bigram_slots)):
        if not 0 < v < 256:
            raise RegisterFieldError(f"{name} must be in 1..255, got {v}")
    return encode("DRAFT_CONFIG", sets_log2=sets_log2, ways=ways, slots=slots, bigram_slots=bigram_slots)


def decode_draft_config(config: int, counters: int) -> dict | None:
    """The draft engine's table geometry and counter rules from DRAFT_CONFIG / DRAFT_COUNTERS (None: no engine)."""
    if config == 0:
        return None
    return {**decode("DRAFT_CONFIG", config), **decode("DRAFT_COUNTERS", counters)}
