"""Modeled multi-stream passes: B independent sequences verified in one weight pass (a forest, one tree per
stream; :meth:`mmfree.pymodel.intmodel.IntModel.verify_forest` defines the numbers).

The accelerator (ISA version 2, docs/accelerator.md "Multi-stream passes") runs a forest as a tree whose roots
``parents[j] = -1 - s`` continue from stream s's start state: each layer LOADs stream 0's into H0 as before and
stream ``s >= 1``'s into the per-token H vector of its root (``LOAD HROOT``), which the root's MLGRU update
reads in place of H0 and then overwrites; everything else is the tree pass of ``B x k`` tokens, so a forest
needs no extra memory. A forest pass is priced as :func:`mmfree.sim.perf.pass_cycles` of the compiler's program
for B streams (:func:`forest_program`) on a build of ``max_tokens = B x k``.

Public API: :func:`forest_program`, :func:`predict_streams` (what ``mmfree perf --streams B`` prints). Every
number is modeled.
"""

from __future__ import annotations

from dataclasses import replace

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.rtl import isa as I
from mmfree.rtl.compiler import HwConfig, emit_program

#: Most streams per pass the model prices (a forest of B x k nodes must fit a build's max_tokens <= 16).
MAX_STREAMS = I.MAX_STREAMS


def forest_program(dims: LY.Dims, streams: int) -> list[I.Instr]:
    """The decode-step program of ``streams`` streams: the compiler's (:func:`emit_program` with ``streams``),
    which LOADs streams 1..B-1's start states into their roots (``LD_HROOT``) after each layer's ``LOAD H0``.
    ``streams == 1`` is the plain program. Raises :class:`MmfreeError` for ``streams`` outside
    1..:data:`MAX_STREAMS`."""
    if not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise MmfreeError(f"--streams must be an integer in 1..{MAX_STREAMS}, got {streams!r}")
    return emit_program(dims, streams=streams)


def _forest_hw(dims: LY.Dims, board, streams: int, k: int, hw: HwConfig | None) -> HwConfig:
    from mmfree.sim.perf import default_hw

    nodes = streams * k
    if nodes > 16:
        raise MmfreeError(f"--streams {streams} x --k {k} = {nodes} tokens per pass; a build holds at most 16 "
                          "(lower --streams or --k)")
    if hw is None:
        return default_hw(dims, board, nodes)
    if hw.max_tokens < nodes:
        raise MmfreeError(f"--streams {streams} x --k {k} = {nodes} tokens per pass but the build's max_tokens is "
                          f"{hw.max_tokens}")
    return hw


def predict_streams(dims, board, streams: int, k: int = 1, accept_len: float | None = None,
                    hw: HwConfig | None = None, clock_mhz: float | None = None, write_logits: bool = False,
                    latency_ns: float | None = None) -> dict:
    """Modeled aggregate decode speed of ``streams`` (B) independent streams sharing every weight pass.

    Each pass is a forest of ``B x k`` nodes (each stream its pending token plus ``k - 1`` drafts, of which
    ``accept_len`` tokens per stream are emitted, 1..k) on a build of ``max_tokens = B x k`` (or ``hw``).
    Returns :func:`mmfree.sim.perf.predict`'s dict for that pass (``tokens_per_s`` = all streams' tokens;
    ``accept_len`` per stream; the resources of the ``B x k`` tree build: the forest adds no memory) plus
    ``streams``, ``forest_nodes``,
    ``aggregate_tokens_per_s``, ``per_stream_tokens_per_s``, ``single_stream_tokens_per_s`` (plain decoding,
    one stream, ``k = 1`` on the same build with ``max_tokens = 1``, board, clock and latency) and ``speedup_vs_single_stream``.
    Raises :class:`MmfreeError` for B outside 1..16, ``B x k > 16`` or ``accept_len`` outside 1..k.
    """
    from mmfree.boardfile import Board, load_board
    from mmfree.sim import perf as P

    if not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise MmfreeError(f"--streams must be an integer in 1..{MAX_STREAMS}, got {streams!r}")
    if not isinstance(k, int) or k < 1:
        raise MmfreeError(f"--k must be an integer >= 1, got {k!r}")
    A = 1.0 if accept_len is None else float(accept_len)
    if not 1 <= A <= k:
        raise MmfreeError(f"--accept-len {A} must be in 1..k = {k} (tokens emitted per stream per pass)")
    dims = P.dims_for(dims)
    b = board if isinstance(board, Board) else load_board(str(board))
    hw = _forest_hw(dims, b, streams, k, hw)
    nodes = streams * k
    r = P.predict(dims, b, clock_mhz, hw=hw, k=nodes, accept_len=streams * A, write_logits=write_logits,
                  latency_ns=latency_ns, prog=forest_program(dims, streams))
    single = P.predict(dims, b, clock_mhz, hw=replace(hw, max_tokens=1, draft_vocab=0), k=1, latency_ns=latency_ns,
                       write_logits=write_logits)
    r.update(streams=streams, forest_nodes=nodes, accept_len=A, aggregate_tokens_per_s=r["tokens_per_s"],
             per_stream_tokens_per_s=r["tokens_per_s"] / streams,
             single_stream_tokens_per_s=single["tokens_per_s"],
             speedup_vs_single_stream=r["tokens_per_s"] / single["tokens_per_s"],
             forest_build="the forest program (ISA 2, LOAD HROOT per stream) on a build of max_tokens = B x k; "
                          "modeled")
    return r
