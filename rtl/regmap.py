"""The accelerator's host interface: top-level ports, the AXI4-Lite register map and error codes.

This module is the contract between the gateware (:mod:`mmfree.rtl`), the simulated board
(:mod:`mmfree.sim`) and the PYNQ driver (:mod:`mmfree.host`, :mod:`mmfree.boards.pynq`). Everything that crosses the
boundary is defined here once; ``docs/accelerator.md`` explains it.

Execution model: the host places a program and the model's memory image (both produced by
:func:`mmfree.rtl.compiler.compile_model` from an exported model) in DDR, plus its own work buffers
(token ids, parents, start state, per-position output states, logits). It writes their addresses to the registers below, the number
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
PARENTS               tree parents (``FLAGS.TREE``)    int32[k], -1 = start state, else < own index
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

from dataclasses import dataclass

#: Bumped when a register, bit or error code changes meaning. The driver refuses a bitstream whose
#: VERSION register (or .hwh metadata) differs in the major number.
REGMAP_VERSION_MAJOR = 2
REGMAP_VERSION_MINOR = 2
REGMAP_VERSION = (REGMAP_VERSION_MAJOR << 16) | REGMAP_VERSION_MINOR

#: ``ID`` register value: ASCII "MMFR".
ID_MAGIC = 0x4D4D4652

#: IP-XACT identity of the packaged accelerator (the PYNQ driver binds to it).
VLNV = "mmfree.org:mmfree:mmfree_accel:1.0"

#: Top-level port names of the accelerator module (Amaranth names signature members ``a__b``).
TOP_NAME = "mmfree_accel"
PORT_CLK = "clk"
PORT_RST = "rst"                 # active-high synchronous reset
PORT_AXI_MASTER = "m_axi"        # AXI4 master to DDR: m_axi__araddr, m_axi__rdata, ...
PORT_AXI_LITE = "s_axil"         # AXI4-Lite slave: s_axil__awaddr, ...
PORT_IRQ = "irq"                 # level-high interrupt, cleared by writing IRQ_STATUS
#: Most AXI masters the accelerator streams weights through (``m_axi`` and ``m_axi_w1`` .. ``m_axi_w3``).
MAX_WEIGHT_PORTS = 4


def weight_port(p: int) -> str:
    """Name of weight port ``p`` (1 .. weight_ports - 1): an extra read-only AXI4 master (``m_axi_w1__araddr``...,
    the write channels held idle). Port 0 is ``m_axi`` itself, which also carries every other transfer."""
    if not 1 <= p < MAX_WEIGHT_PORTS:
        raise ValueError(f"weight port must be in 1..{MAX_WEIGHT_PORTS - 1}, got {p}")
    return f"{PORT_AXI_MASTER}_w{p}"
CSR_ADDR_BITS = 12               # 4 KiB register window
ALIGN = 64                       # every base address must be a multiple of this


@dataclass(frozen=True)
class Reg:
    name: str
    offset: int
    access: str      # "ro", "rw", "wo", "w1c"
    doc: str


REGISTERS: tuple[Reg, ...] = (
    Reg("ID", 0x000, "ro", "ID_MAGIC"),
    Reg("VERSION", 0x004, "ro", "REGMAP_VERSION: major << 16 | minor"),
    Reg("HW_CONFIG", 0x008, "ro", "bits 7:0 bus bytes per beat, 15:8 lanes per weight port (trits per cycle of "
                                  "one port's ternary engines), 23:16 max tokens k, 27:24 weight ports (AXI "
                                  "masters streaming weights; 0 reads as 1)"),
    Reg("HW_LIMITS", 0x00C, "ro", "bits 15:0 max width (d, and I) in units of 16 elements; 31:16 reserved"),
    Reg("CONTROL", 0x010, "wo", "bit 0 START, bit 1 SOFT_RESET (abort and clear), bit 2 IRQ_ENABLE (sticky)"),
    Reg("STATUS", 0x014, "ro", "bit 0 BUSY, bit 1 DONE, bit 2 ERROR, bit 3 IRQ_ENABLED"),
    Reg("ERROR_CODE", 0x018, "ro", "0 = none, else an ERR_* code in bits 7:0 and detail in 31:8"),
    Reg("IRQ_STATUS", 0x01C, "w1c", "bit 0 DONE or ERROR interrupt pending; write 1 to clear"),
    Reg("PROG_BASE_LO", 0x020, "rw", ""), Reg("PROG_BASE_HI", 0x024, "rw", ""),
    Reg("DATA_BASE_LO", 0x028, "rw", ""), Reg("DATA_BASE_HI", 0x02C, "rw", ""),
    Reg("TOKENS_LO", 0x030, "rw", ""), Reg("TOKENS_HI", 0x034, "rw", ""),
    Reg("PARENTS_LO", 0x038, "rw", ""), Reg("PARENTS_HI", 0x03C, "rw", ""),
    Reg("STATE_IN_LO", 0x040, "rw", ""), Reg("STATE_IN_HI", 0x044, "rw", ""),
    Reg("STATE_OUT_LO", 0x048, "rw", ""), Reg("STATE_OUT_HI", 0x04C, "rw", ""),
    Reg("LOGITS_LO", 0x050, "rw", ""), Reg("LOGITS_HI", 0x054, "rw", ""),
    Reg("ARGMAX_OUT_LO", 0x058, "rw", ""), Reg("ARGMAX_OUT_HI", 0x05C, "rw", ""),
    Reg("MEM_LO_LO", 0x060, "rw", "lowest DDR address the accelerator may touch"), Reg("MEM_LO_HI", 0x064, "rw", ""),
    Reg("MEM_HI_LO", 0x068, "rw", "one past the highest DDR address it may touch"), Reg("MEM_HI_HI", 0x06C, "rw", ""),
    Reg("NUM_TOKENS", 0x070, "rw", "k, 1..max tokens"),
    Reg("FLAGS", 0x074, "rw", "bit 0 WRITE_LOGITS (the program's logits STOREs run), bit 1 TREE (use PARENTS; "
                              "else a chain)"),
    Reg("ARGMAX", 0x078, "ro", "greedy token of the last position of the last run"),
    Reg("PC", 0x07C, "ro", "byte offset from PROG_BASE of the instruction being decoded (the faulting one for "
                           "decode errors; for an engine's error, the one decoded when it was reported)"),
    Reg("CYCLES_LO", 0x080, "ro", "clock cycles of the last run (START to DONE)"), Reg("CYCLES_HI", 0x084, "ro", ""),
    Reg("STALLS_LO", 0x088, "ro", "cycles a ternary engine with rows to do waited for weight data"),
    Reg("STALLS_HI", 0x08C, "ro", ""),
    Reg("RD_BYTES_LO", 0x090, "ro", "bytes read from DDR in the last run (AXI R beats x bus bytes)"),
    Reg("RD_BYTES_HI", 0x094, "ro", ""),
    Reg("WR_BYTES_LO", 0x098, "ro", "bytes written to DDR in the last run (AXI W beats x bus bytes)"),
    Reg("WR_BYTES_HI", 0x09C, "ro", ""),
    # ---- the on-chip draft-verify loop (CONTROL.GENERATE; builds with a draft engine, DRAFT_VOCAB != 0) ----
    Reg("TABLE_BASE_LO", 0x0A0, "rw", "trigram lines of the draft table (the table file's trig array as it is: "
                                      "2**S x W lines of 4 (1 + K) bytes)"), Reg("TABLE_BASE_HI", 0x0A4, "rw", ""),
    Reg("BIGRAM_BASE_LO", 0x0A8, "rw", "bigram rows: DRAFT_VOCAB rows of 4 KB bytes (rows past the table's "
                                       "vocabulary zero); loaded at GENERATE, written back at its end"),
    Reg("BIGRAM_BASE_HI", 0x0AC, "rw", ""),
    Reg("GEN_OUT_LO", 0x0B0, "rw", "emitted tokens, uint32[GEN_N]"), Reg("GEN_OUT_HI", 0x0B4, "rw", ""),
    Reg("STATE_ALT_LO", 0x0B8, "rw", "second state area (max tokens positions): passes alternate STATE_OUT and "
                                     "STATE_ALT"), Reg("STATE_ALT_HI", 0x0BC, "rw", ""),
    Reg("GEN_N", 0x0C0, "rw", "tokens to emit, >= 1"),
    Reg("GEN_CONTEXT", 0x0C4, "rw", "bits 15:0 the last committed token (not yet fed; the first pass's root), "
                                    "31:16 the token before it"),
    Reg("GEN_EOS", 0x0C8, "rw", "bit 31 enable, bits 15:0 a token that ends the generation (emitted, then stop)"),
    Reg("STATE_STRIDE", 0x0CC, "rw", "bytes between positions in STATE_OUT (state_stride(d, L)), a multiple of "
                                     "ALIGN"),
    Reg("DRAFT_CONFIG", 0x0D0, "ro", "0: no draft engine; else bits 7:0 sets_log2, 15:8 ways, 23:16 slots, "
                                     "31:24 bigram_slots (TableParams)"),
    Reg("DRAFT_VOCAB", 0x0D4, "ro", "rows of the on-chip bigram fallback (0: no draft engine)"),
    Reg("DRAFT_COUNTERS", 0x0D8, "ro", "bits 15:0 inc, 31:16 cmax (TableParams); 0: no draft engine"),
    Reg("GEN_COUNT", 0x0DC, "ro", "tokens emitted by the last GENERATE"),
    Reg("GEN_PASSES", 0x0E0, "ro", "verification passes of the last GENERATE"),
    Reg("GEN_NODES", 0x0E4, "ro", "draft tree nodes (roots included) fed by the last GENERATE"),
    Reg("GEN_CYCLES_LO", 0x0E8, "ro", "clock cycles of the last GENERATE (CONTROL to DONE: table load, drafts, "
                                      "passes, updates, table write-back)"),
    Reg("GEN_CYCLES_HI", 0x0EC, "ro", ""),
    Reg("GEN_STATE_LO", 0x0F0, "ro", "address of the state after the last committed node of the last GENERATE (a "
                                     "STATE_IN to go on from)"), Reg("GEN_STATE_HI", 0x0F4, "ro", ""),
)
REG = {r.name: r for r in REGISTERS}
OFFSET = {r.name: r.offset for r in REGISTERS}

# CONTROL bits
CTRL_START = 1 << 0
CTRL_SOFT_RESET = 1 << 1
CTRL_IRQ_ENABLE = 1 << 2
CTRL_GENERATE = 1 << 3         # run the on-chip draft-verify loop (docs/speculative.md)
# STATUS bits
STAT_BUSY = 1 << 0
STAT_DONE = 1 << 1
STAT_ERROR = 1 << 2
STAT_IRQ_ENABLED = 1 << 3
# FLAGS bits
FLAG_WRITE_LOGITS = 1 << 0
FLAG_TREE = 1 << 1

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
ERR_BAD_PARENT = 6        # FLAGS.TREE and parents[j] not in [-1, j); detail: position
ERR_AXI = 7               # DDR returned SLVERR/DECERR
ERR_TOO_WIDE = 8          # the program asks for a vector wider than the hardware holds (HW_LIMITS); detail: the
                          # program header's width in units of 16 (0 when an instruction's operand is too wide)
ERR_PROGRAM = 9           # the program ran past its end without HALT
ERR_NOT_LOADED = 10       # an instruction read an on-chip buffer beyond what the program LOADed into it; detail: opcode
ERR_NO_DRAFT = 11         # CONTROL.GENERATE on a build without a draft engine (DRAFT_VOCAB == 0)
ERR_GEN_CONFIG = 12       # GENERATE with GEN_N == 0 (detail 0), or STATE_STRIDE 0 / not a multiple of ALIGN (detail 1)

ERROR_MESSAGES = {
    ERR_ADDRESS_RANGE: "a DDR access fell outside [MEM_LO, MEM_HI): the program, image or a buffer does not fit the "
                       "configured address window",
    ERR_UNALIGNED: f"a base address register is not {ALIGN}-byte aligned",
    ERR_TOKEN_RANGE: "a token id is outside the model's vocabulary",
    ERR_BAD_INSTRUCTION: "the program holds an unknown or malformed instruction (program/bitstream mismatch?)",
    ERR_NUM_TOKENS: "NUM_TOKENS is 0 or larger than the hardware's maximum tokens per pass",
    ERR_BAD_PARENT: "a tree parent index is not in [-1, position)",
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
    code, detail = code_register & 0xFF, code_register >> 8
    if code == ERR_NONE:
        return "no error"
    text = ERROR_MESSAGES.get(code, f"unknown error code {code}")
    if code in (ERR_ADDRESS_RANGE, ERR_UNALIGNED) and detail < len(ADDRESS_REGS) + len(GEN_ADDRESS_REGS):
        text += f" (register {(ADDRESS_REGS + GEN_ADDRESS_REGS)[detail]})"
    elif code == ERR_GEN_CONFIG and detail in (0, 1):
        text += " (" + ("GEN_N is 0: ask for at least one token" if detail == 0 else
                        f"STATE_STRIDE must be a non-zero multiple of {ALIGN}") + ")"
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
    return {"bus_bytes": value & 0xFF, "lanes": (value >> 8) & 0xFF, "max_tokens": (value >> 16) & 0xFF,
            "weight_ports": max(1, (value >> 24) & 0xF)}


def encode_hw_config(bus_bytes: int, lanes: int, max_tokens: int, weight_ports: int = 1) -> int:
    for name, v in (("bus_bytes", bus_bytes), ("lanes", lanes), ("max_tokens", max_tokens)):
        if not 0 < v < 256:
            raise ValueError(f"{name} must be in 1..255, got {v}")
    if not 1 <= weight_ports <= MAX_WEIGHT_PORTS:
        raise ValueError(f"weight_ports must be in 1..{MAX_WEIGHT_PORTS}, got {weight_ports}")
    return bus_bytes | (lanes << 8) | (max_tokens << 16) | (weight_ports << 24)


def state_stride(d: int, layers: int) -> int:
    """Bytes between consecutive positions in ``STATE_OUT``: one state (int32[L][d]) rounded up to ``ALIGN``,
    so the state after any position is itself a legal ``STATE_IN`` (commit a prefix without a copy)."""
    return -(-4 * layers * d // ALIGN) * ALIGN


def buffer_sizes(d: int, layers: int, vocab: int, k: int) -> dict[str, int]:
    """Bytes of each host work buffer for a run of k tokens (before 64-byte alignment)."""
    return {"TOKENS": 4 * k, "PARENTS": 4 * k, "STATE_IN": 4 * layers * d, "STATE_OUT": k * state_stride(d, layers),
            "LOGITS": 4 * k * vocab, "ARGMAX_OUT": 4 * k}


def encode_draft_config(sets_log2: int, ways: int, slots: int, bigram_slots: int) -> int:
    """DRAFT_CONFIG of a build whose draft engine has these TableParams fields (each 1..255)."""
    for name, v in (("sets_log2", sets_log2), ("ways", ways), ("slots", slots), ("bigram_slots", bigram_slots)):
        if not 0 < v < 256:
            raise ValueError(f"{name} must be in 1..255, got {v}")
    return sets_log2 | (ways << 8) | (slots << 16) | (bigram_slots << 24)


def decode_draft_config(config: int, counters: int) -> dict | None:
    """The draft engine's table geometry and counter rules from DRAFT_CONFIG / DRAFT_COUNTERS (None: no engine)."""
    if config == 0:
        return None
    return {"sets_log2": config & 0xFF, "ways": (config >> 8) & 0xFF, "slots": (config >> 16) & 0xFF,
            "bigram_slots": config >> 24, "inc": counters & 0xFFFF, "cmax": counters >> 16}
