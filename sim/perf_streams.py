"""Modeled multi-stream passes: B independent sequences verified in one weight pass (a forest, one tree per
stream; :meth:`mmfree.pymodel.intmodel.IntModel.verify_forest` defines the numbers).

Not built yet: the accelerator verifies one tree from one start state. The forest build this module prices is
the one docs/performance.md "Multi-stream passes" specifies: each layer's start state is LOADed once per
stream (stream 0 into H0 as today, stream ``s >= 1`` into the per-token H vector of its root, which the
root's MLGRU update reads in place of H0 and then overwrites), a root ``parents[j] = -1 - s``; everything
else is the tree pass of ``B x k`` tokens the RTL runs today, so the forest needs no extra memory. A forest
pass is priced as :func:`mmfree.sim.perf.pass_cycles` of :func:`forest_program` (the compiler's program with
the start-state LOAD repeated per stream) on a build of ``max_tokens = B x k``.

Public API: :func:`forest_program`, :func:`predict_streams` (what ``mmfree perf --streams B`` prints). Every
number is modeled.
"""

from __future__ import annotations

from dataclasses import replace

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig, emit_program

#: Most streams per pass the model prices (a forest of B x k nodes must fit a build's max_tokens <= 16).
MAX_STREAMS = 16


def forest_program(dims: LY.Dims, streams: int) -> list[I.Instr]:
    """The decode-step program of a forest build for ``streams`` streams: :func:`emit_program` with every
    start-state ``LOAD`` (destination H0) followed by one more per further stream (stream ``s`` at
    ``s x state_stride`` past the first). The copies keep destination H0, read as it fills: the timing proxy
    of the forest build's LOADs into the roots' H vectors, which are issued a layer's three i/f/g MATVECs
    before the MLGRU update reads them. ``streams == 1`` is the plain program. Raises
    :class:`MmfreeError` for ``streams`` outside 1..:data:`MAX_STREAMS`."""
    if not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise MmfreeError(f"--streams must be an integer in 1..{MAX_STREAMS}, got {streams!r}")
    stride = RM.state_stride(dims.d, dims.layers)
    out: list[I.Instr] = []
    for ins in emit_program(dims):
        out.append(ins)
        if ins.op == "LOAD" and ins["dst"] == I.LD_H0:
            out += [I.Instr("LOAD", dict(ins.args, offset=ins["offset"] + s * stride)) for s in range(1, streams)]
    return out


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
             forest_build="modeled: the forest RTL is specified (docs/performance.md 'Multi-stream passes'), "
                          "not built")
    return r
