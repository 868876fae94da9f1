"""Where the host puts a compiled model and its work buffers in the accelerator's DDR window, and whether it
fits a board: :func:`host_layout`, :func:`draft_area_bytes`, :func:`ddr_needed`, :func:`check_fits`."""

from __future__ import annotations

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import Compiled

#: Tokens one GENERATE writes at most (the GEN_OUT area); :func:`generate_onchip` runs longer generations as
#: several GENERATEs, each going on from the last one's GEN_STATE and table.
GEN_OUT_TOKENS = 4096

def draft_area_bytes(draft: dict) -> dict[str, int]:
    """Bytes of the on-chip loop's DDR areas for a draft engine (:func:`read_draft_engine`): TABLE_BASE (the
    trigram lines, ``2**S W 4 (1 + K)``), BIGRAM_BASE (``vocab`` rows of ``4 KB``) and GEN_OUT
    (:data:`GEN_OUT_TOKENS` uint32)."""
    return {"TABLE_BASE": (1 << draft["sets_log2"]) * draft["ways"] * 4 * (1 + draft["slots"]),
            "BIGRAM_BASE": draft["vocab"] * 4 * draft["bigram_slots"], "GEN_OUT": 4 * GEN_OUT_TOKENS}


def host_layout(compiled: Compiled, max_tokens: int, mem_window: tuple[int, int],
                draft: dict | None = None) -> tuple[dict[str, int], int]:
    """Where :class:`AccelHost` puts everything in the DDR window: the program, the host work buffers
    (TOKENS, PARENTS, ARGMAX_OUT, two state areas STATE_A/STATE_B, LOGITS), then the model image
    (``DATA_BASE``), and with a draft engine (``draft``: :func:`read_draft_engine`) the on-chip loop's
    TABLE_BASE, BIGRAM_BASE and GEN_OUT after it (so every other address is the same with or without an
    engine; the loop's second state area is STATE_A or STATE_B). Returns (name -> address, end address)."""
    dims = compiled.dims
    sizes = RM.buffer_sizes(dims.d, dims.layers, dims.vocab, max_tokens)
    lo, hi = mem_window
    layout = [("PROG_BASE", len(compiled.program)), ("TOKENS", sizes["TOKENS"]), ("PARENTS", sizes["PARENTS"]),
              ("ARGMAX_OUT", sizes["ARGMAX_OUT"]), ("STATE_A", sizes["STATE_OUT"]), ("STATE_B", sizes["STATE_OUT"]),
              ("LOGITS", sizes["LOGITS"]), ("DATA_BASE", len(compiled.image))]
    if draft is not None:
        layout += list(draft_area_bytes(draft).items())
    addr: dict[str, int] = {}
    pos = LY.round_up(lo)
    for name, n in layout:
        addr[name] = pos
        pos = LY.round_up(pos + n)
    if pos > hi:
        raise MmfreeError(f"the model and its buffers need {pos - lo} bytes of DDR, the window has {hi - lo}")
    return addr, pos

def ddr_needed(compiled: Compiled, max_tokens: int, draft: dict | None = None) -> int:
    """Bytes of DDR :class:`AccelHost` needs for ``compiled`` (program, host buffers, image, and the on-chip
    loop's areas for a draft engine ``draft``: :func:`read_draft_engine`), 64-byte aligned."""
    _, end = host_layout(compiled, max_tokens, (0, 1 << 62), draft)
    return end


def check_fits(compiled: Compiled, board, max_tokens: int = 4) -> int:
    """Refuse a model whose program, buffers and image exceed the board's usable DDR (``Board.ddr_usable_bytes``:
    DDR size less what the OS keeps) before anything is allocated. Returns the bytes needed."""
    need = ddr_needed(compiled, max_tokens)
    have = board.ddr_usable_bytes
    if need > have:
        raise MmfreeError(f"the model needs {need / 2**20:.1f} MiB of DDR (image {len(compiled.image) / 2**20:.1f} MiB "
                          f"+ buffers), the {board.name} leaves {have / 2**20:.0f} MiB to the accelerator "
                          f"({board.ddr['size_mb']} MB DDR less {board.ddr.get('os_reserved_mb', 0)} MB for the OS): "
                          "use a smaller model or a board with more DDR")
    return need


#: Host bytes one generated token costs at most when no per-pass arrays are kept: its id in the output lists and
#: its share of a pass record (a dict of about a dozen small fields and the argmax). An upper bound: measured
#: 581-700 bytes per token (default model, greedy, 10 and 100 tokens, CPython 3.11, records sized recursively with
#: sys.getsizeof: ``python bench/host_memory.py``; 41.9-45.7 kB with
#: ``keep_arrays``); the test asserts the bound.
RECORD_BYTES_PER_TOKEN = 4096


def host_bytes_per_token(compiled: Compiled, max_tokens: int, keep_arrays: bool = False) -> int:
    """Host memory a generation keeps per generated token: :data:`RECORD_BYTES_PER_TOKEN`, plus with
    ``keep_arrays`` the states and logits of a pass of ``max_tokens`` positions (int64: ``k (L d + V) 8`` bytes)."""
    dims = compiled.dims
    arrays = max_tokens * (dims.layers * dims.d + dims.vocab) * 8 if keep_arrays else 0
    return RECORD_BYTES_PER_TOKEN + arrays


def max_generation_tokens(compiled: Compiled, board, max_tokens: int = 4, keep_arrays: bool = False) -> int:
    """The most tokens one generation may ask for on ``board`` (a :class:`~mmfree.boardfile.Board`): the board's
    usable DDR (the host's memory on a Zynq) less what the accelerator's window takes (:func:`ddr_needed`),
    divided by :func:`host_bytes_per_token`."""
    free = board.ddr_usable_bytes - ddr_needed(compiled, max_tokens)
    return max(0, free // host_bytes_per_token(compiled, max_tokens, keep_arrays))


def check_n_tokens(n_tokens, compiled: Compiled | None = None, board=None, max_tokens: int = 4,
                   keep_arrays: bool = False, name: str = "n_tokens") -> int:
    """``n_tokens`` if it is an integer >= 1 and, with ``board``, at most :func:`max_generation_tokens`; else
    MmfreeError naming ``name`` and the limit."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise MmfreeError(f"{name} must be >= 1 (an integer), got {n_tokens!r}")
    if board is not None:
        most = max_generation_tokens(compiled, board, max_tokens, keep_arrays)
        if n_tokens > most:
            raise MmfreeError(f"{name} {n_tokens} is more than the {board.name} can hold: at most {most} tokens "
                              f"({host_bytes_per_token(compiled, max_tokens, keep_arrays)} host bytes each in "
                              f"{board.ddr_usable_bytes / 2**20:.0f} MiB usable DDR less the model's window); "
                              "generate in several calls")
    return n_tokens
