"""The model compiler: an exported image (manifest + tensors, via :class:`mmfree.pymodel.intmodel.IntModel`)
-> the accelerator program (:mod:`mmfree.rtl.isa`) and the DDR memory image it runs on.

Memory image (``DATA_BASE``), every block ``LY.ALIGN`` (64) bytes aligned, in execution order so the weight stream
reads consecutive addresses:

==================  ==================================================================================
block               contents
==================  ==================================================================================
``embed``           V rows of ``embed_stride(d)`` bytes: d int32 values (Q(res_frac)), padded to 16 bytes
per layer ``l``     ``norm_ifg`` records (n, nw_i, nw_f, nw_g) int32 x d; ``lb`` uint32 x d;
                    ``w_i``, ``w_f``, ``w_g`` packed ternary rows (the export's format);
                    ``norm_o`` (g_norm.n, o.nw) x d; ``w_o``; ``norm_gate`` (mlp_norm.n, gate.nw) x d;
                    ``w_gate`` (2I rows: gate then up); ``norm_down`` (down.n, down.nw) x I; ``w_down``
head                ``norm_head`` (norm.n, lm_head.nw) x d; ``w_head`` (V rows)
==================  ==================================================================================

Norm vectors become int32 records whatever their export dtype (sign-extended), so one DMA beat carries
one element of every vector a quantizer pass needs. Packed weights are copied byte for byte.

The program addresses the image through ``DATA_BASE`` and the host buffers through their base
registers (``STATE_IN``, ``STATE_OUT``, ``LOGITS``, ``ARGMAX_OUT``). :func:`compile_model` is
:func:`plan_image` (where each block goes) + :func:`build_image` (the bytes) + :func:`emit_program` (the
instructions); the performance model runs the same planner and emitter without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM

#: How many MATVECs ahead the compiled program PREFETCHes weight rows (< ``isa.PREFETCH_DEPTH``, the most
#: PREFETCHes that may wait). Measured on the RTL (bench/sim_roofline.py shapes, k = 1): 3 ahead instead of 1
#: changed cycles per token by -0.7 % .. +1.3 % (the weight queues, not the number of prefetches, bound how
#: far the stream runs ahead), so the program prefetches one MATVEC ahead.
PREFETCH_AHEAD = 1


def embed_stride(d: int) -> int:
    """Bytes of one embedding row in the image: d int32 values padded to 16 bytes (one 128-bit beat)."""
    return LY.round_up(4 * d, 16)


#: Legal ``HwConfig.vector_lanes``: elements per cycle of the vector engine's element passes.
VECTOR_LANES = (1, 2, 4, 8)


@dataclass(frozen=True)
class HwConfig:
    """Build parameters of one accelerator (one bitstream), as its HW_CONFIG/HW_LIMITS registers report.

    ``bus_bytes``: AXI data width in bytes (8 or 16); ``max_tokens``: k per pass; ``max_width``: the
    widest vector (d and I) the on-chip buffers hold, a power of two (reported in units of
    :data:`isa.WIDTH_UNIT`); ``matvec_engines``: rows per weight port the lock-step ternary engine computes side
    by side (its ways; 2 consume weights twice as fast as one port delivers them, so prefetched rows catch
    up after vector passes); ``weight_ports``: AXI masters the weight stream is spread over (one of
    :data:`regmap.WEIGHT_PORT_CHOICES`: 1, 2, 4 or 6, every HP and HPC port of a ZynqMP;
    ``m_axi`` plus ``m_axi_w1``..): port ``p`` reads rows ``p, p + P, ...`` of every matrix (strided bursts,
    one row per burst group, so the DDR image is the same for every build) into its ``matvec_engines``
    weight queues; row ``r`` is way ``r mod (weight_ports x matvec_engines)``; ``draft_vocab``: rows of the
    on-chip bigram fallback of the trigram draft engine that runs the draft-verify loop (0: no engine;
    tables of at most that many tokens, default :class:`~mmfree.pymodel.trigram.TableParams`);
    ``vector_lanes``: V, elements per cycle of the vector engine's QSTATS / QCODES passes (1, 2, 4 or 8; the
    vector buffers are banked by V, element i in bank i mod V; 1 is the one-element-per-cycle build).
    """

    bus_bytes: int = 16
    max_tokens: int = 4
    max_width: int = 4096
    matvec_engines: int = 2
    weight_ports: int = 1
    draft_vocab: int = 0
    #: the datapath instantiates the pipelined variants of its vector units (``pipelined=True``: Reciprocal,
    #: Codes, OutputMultiplier, Dequantize, MlgruUpdate, GatedProduct; shorter paths, more cycles each;
    #: docs/rtl.md "Timing"); reported in HW_CONFIG bit 28
    pipelined_units: bool = False
    vector_lanes: int = 1

    def __post_init__(self):
        if self.bus_bytes not in (8, 16):
            raise ValueError(f"bus_bytes must be 8 or 16 (a 64- or 128-bit AXI bus), got {self.bus_bytes}")
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 16:
            raise ValueError(f"max_tokens must be an integer in 1..16, got {self.max_tokens}")
        if self.matvec_engines not in (1, 2):
            raise ValueError(f"matvec_engines must be 1 or 2, got {self.matvec_engines}")
        if self.weight_ports not in RM.WEIGHT_PORT_CHOICES:
            raise ValueError(f"weight_ports must be one of {', '.join(map(str, RM.WEIGHT_PORT_CHOICES))}, "
                             f"got {self.weight_ports!r}")
        if not isinstance(self.max_width, int) or self.max_width < I.WIDTH_UNIT \
                or self.max_width & (self.max_width - 1) or self.max_width > N.MAX_K:
            raise ValueError(f"max_width must be a power of two in {I.WIDTH_UNIT}..{N.MAX_K}, got {self.max_width}")
        if not isinstance(self.draft_vocab, int) or not 0 <= self.draft_vocab <= 1 << 16:
            raise ValueError(f"draft_vocab must be 0 (no draft engine) or a vocabulary size up to 65536, "
                             f"got {self.draft_vocab}")
        if not isinstance(self.pipelined_units, bool):
            raise ValueError(f"pipelined_units must be True or False, got {self.pipelined_units!r}")
        if type(self.vector_lanes) is not int or self.vector_lanes not in VECTOR_LANES:
            raise ValueError(f"vector_lanes must be one of {', '.join(map(str, VECTOR_LANES))} (elements per cycle "
                             f"of the vector engine), got {self.vector_lanes!r}")
        if self.lanes % self.vector_lanes:     # a cycle's codes never straddle a code memory word
            raise ValueError(f"vector_lanes {self.vector_lanes} must divide the ternary engine's {self.lanes} lanes")
        if self.draft_vocab and self.max_tokens < 2:
            raise ValueError("a draft engine needs max_tokens >= 2 (the root and at least one drafted token per pass)")

    @property
    def lanes(self) -> int:
        """Ternary weights per cycle of one engine: one bus beat of packed trits."""
        return self.bus_bytes * N.TRITS_PER_BYTE

    @property
    def hw_config_reg(self) -> int:
        return RM.encode_hw_config(self.bus_bytes, self.lanes * self.matvec_engines, self.max_tokens,
                                   self.weight_ports, self.pipelined_units)

    @property
    def engines(self) -> int:
        """Ternary engines in all: ``matvec_engines`` per weight port."""
        return self.matvec_engines * self.weight_ports

    @property
    def hw_limits_reg(self) -> int:
        return self.max_width // I.WIDTH_UNIT

    @property
    def draft_params(self):
        """The draft engine's :class:`~mmfree.pymodel.trigram.TableParams` (None without an engine)."""
        if not self.draft_vocab:
            return None
        from mmfree.pymodel.trigram import TableParams

        return TableParams()

    @property
    def draft_regs(self) -> dict[str, int]:
        """DRAFT_CONFIG, DRAFT_VOCAB and DRAFT_COUNTERS as this build reports them (all 0 without an engine)."""
        p = self.draft_params
        if p is None:
            return {"DRAFT_CONFIG": 0, "DRAFT_VOCAB": 0, "DRAFT_COUNTERS": 0}
        return {"DRAFT_CONFIG": RM.encode_draft_config(p.sets_log2, p.ways, p.slots, p.bigram_slots),
                "DRAFT_VOCAB": self.draft_vocab, "DRAFT_COUNTERS": p.inc | (p.cmax << 16)}


@dataclass
class Compiled:
    """A compiled model: the program, the DDR image, and what the host needs to run it."""

    program: bytes
    image: bytes
    dims: LY.Dims
    symbols: dict[str, int]            # block name -> byte offset in the image
    state_stride: int                  # bytes between positions in STATE_OUT (64-byte aligned)
    head_chunk: int                    # head rows per MATVEC (logits staged on chip)
    max_width: int                     # widest vector (elements)
    instrs: list = field(default_factory=list)
    streams: int = 1                   # independent streams one pass may carry (the program header's)

    @property
    def vocab(self) -> int:
        return self.dims.vocab

    def buffer_sizes(self, k: int) -> dict[str, int]:
        return RM.buffer_sizes(self.dims.d, self.dims.layers, self.dims.vocab, k)

    def save(self, out) -> None:
        """Write ``program.bin``, ``image.bin`` and ``compiled.json`` into directory ``out`` (atomically)."""
        import json
        from pathlib import Path

        from mmfree.atomic import atomic_path

        with atomic_path(Path(out)) as tmp:
            tmp.mkdir()
            (tmp / "program.bin").write_bytes(self.program)
            (tmp / "image.bin").write_bytes(self.image)
            meta = {"dims": {"vocab": self.dims.vocab, "d": self.dims.d, "inter": self.dims.inter,
                             "layers": self.dims.layers},
                    "symbols": self.symbols, "state_stride": self.state_stride, "head_chunk": self.head_chunk,
                    "max_width": self.max_width, "isa_version": I.ISA_VERSION}
            (tmp / "compiled.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, path) -> Compiled:
        import json
        from pathlib import Path

        path = Path(path)
        meta = json.loads((path / "compiled.json").read_text())
        if meta.get("isa_version") != I.ISA_VERSION:
            raise MmfreeError(f"{path} was compiled for ISA version {meta.get('isa_version')}, this is {I.ISA_VERSION}")
        dims = LY.Dims(**meta["dims"])
        program = (path / "program.bin").read_bytes()
        header, instrs = I.disassemble(program)
        return cls(program, (path / "image.bin").read_bytes(), dims, meta["symbols"], meta["state_stride"],
                   meta["head_chunk"], meta["max_width"], instrs, header.streams)


def head_chunk_rows(dims: LY.Dims) -> int:
    """Head rows per MATVEC: the widest vector of the model (so the logits fit a T buffer), a multiple of 16."""
    w = max(dims.d, dims.inter)
    return max(I.WIDTH_UNIT, (w // I.WIDTH_UNIT) * I.WIDTH_UNIT)


@dataclass(frozen=True)
class ImagePlan:
    """Where every block of the DDR image goes (:func:`plan_image`): byte offsets and sizes, no data."""

    symbols: dict[str, int]            # block name -> byte offset in the image (LY.ALIGN-byte aligned)
    sizes: dict[str, int]              # block name -> bytes of data (before padding)
    size: int                          # bytes of the whole image (a multiple of LY.ALIGN)


def _image_blocks(dims: LY.Dims) -> list[tuple[str, int]]:
    """The image's blocks in DDR (= execution) order with their sizes in bytes (module docstring)."""
    d, inter, V = dims.d, dims.inter, dims.vocab
    rb_d, rb_i = N.row_bytes(d), N.row_bytes(inter)
    blocks = [("embed", V * embed_stride(d))]
    for li in range(dims.layers):
        p = f"layers.{li}."
        blocks += [(p + "norm_ifg", 4 * 4 * d), (p + "lb", 4 * d),
                   (p + "w_i", d * rb_d), (p + "w_f", d * rb_d), (p + "w_g", d * rb_d),
                   (p + "norm_o", 2 * 4 * d), (p + "w_o", d * rb_d),
                   (p + "norm_gate", 2 * 4 * d), (p + "w_gate", 2 * inter * rb_d),
                   (p + "norm_down", 2 * 4 * inter), (p + "w_down", d * rb_i)]
    return blocks + [("norm_head", 2 * 4 * d), ("w_head", V * rb_d)]


def plan_image(dims: LY.Dims) -> ImagePlan:
    """The DDR image's layout for a model of shape ``dims``: every block ``LY.ALIGN``-byte aligned."""
    symbols, sizes, pos = {}, {}, 0
    for name, nbytes in _image_blocks(dims):
        pos = LY.round_up(pos)
        symbols[name], sizes[name] = pos, nbytes
        pos += nbytes
    return ImagePlan(symbols, sizes, LY.round_up(pos))


def _image_block_data(model, name: str) -> bytes:
    """The bytes of image block ``name`` (see :func:`_image_blocks`) from an :class:`IntModel`."""

    def records(*names: str) -> bytes:
        cols = [model.tensor(n).astype(np.int64) for n in names]
        for n, c in zip(names, cols):
            if c.min() < -(1 << 31) or c.max() >= 1 << 31:
                raise MmfreeError(f"vector {n} does not fit int32")
        return np.stack(cols, axis=1).astype("<i4").tobytes()

    def weights(bl: str) -> bytes:
        return np.ascontiguousarray(model.tensor(model.bitlinear_specs[bl].w)).tobytes()

    if name == "embed":
        d = model.dims.d
        table = np.zeros((model.dims.vocab, embed_stride(d) // 4), dtype="<i4")
        table[:, :d] = model.embed(np.arange(model.dims.vocab))
        return table.tobytes()
    if name == "norm_head":
        return records("norm.n", "lm_head.nw")
    if name == "w_head":
        return weights("lm_head")
    p, block = name.rsplit(".", 1)
    p += "."
    return {
        "norm_ifg": lambda: records(p + "attn_norm.n", p + "attn.i_proj.nw", p + "attn.f_proj.nw",
                                    p + "attn.g_proj.nw"),
        "lb": lambda: model.tensor(p + "attn.one_minus_lb").astype("<u4").tobytes(),
        "w_i": lambda: weights(p + "attn.i_proj"), "w_f": lambda: weights(p + "attn.f_proj"),
        "w_g": lambda: weights(p + "attn.g_proj"),
        "norm_o": lambda: records(p + "attn.g_norm.n", p + "attn.o_proj.nw"),
        "w_o": lambda: weights(p + "attn.o_proj"),
        "norm_gate": lambda: records(p + "mlp_norm.n", p + "mlp.gate_proj.nw"),
        "w_gate": lambda: weights(p + "mlp.gate_proj"),
        "norm_down": lambda: records(p + "mlp.down_proj.n", p + "mlp.down_proj.nw"),
        "w_down": lambda: weights(p + "mlp.down_proj"),
    }[block]()


def build_image(model, plan: ImagePlan) -> bytes:
    """The DDR image of an :class:`IntModel` laid out by ``plan`` (:func:`plan_image` of its dims).
    Raises :class:`MmfreeError` when a tensor's size disagrees with the plan (a corrupt export)."""
    image = bytearray(plan.size)
    for name, off in plan.symbols.items():
        data = _image_block_data(model, name)
        if len(data) != plan.sizes[name]:
            raise MmfreeError(f"image block {name}: the export holds {len(data)} bytes, its shape needs "
                              f"{plan.sizes[name]}; re-export the model")
        image[off:off + len(data)] = data
    return bytes(image)


class _Emitter:
    """Builds the instruction list; every MATVEC's rows are PREFETCHed :data:`PREFETCH_AHEAD` MATVECs
    earlier (in program order: the hardware matches them), so the weight stream runs on through the vector
    passes in between, also past short matrices."""

    def __init__(self, dims: LY.Dims, symbols: dict[str, int], consts: dict | None, streams: int = 1):
        self.dims, self.sym, self.consts, self.streams = dims, symbols, consts, streams
        self.specs = {b.name: b for b in LY.bitlinears(dims)}
        self.prog: list[I.Instr] = []
        self.next_matvec: list[dict] = []

    def emit(self, op: str, **args) -> None:
        self.prog.append(I.Instr(op, args))

    def setc(self, slot: int, bl: str) -> None:
        """SETC of BitLinear ``bl``'s output constants (0 without constants: a timing-only program)."""
        c = self.consts[bl] if self.consts is not None else {"c_m": 0, "c_e": 0}
        self.emit("SETC", slot=slot, c_m=int(c["c_m"]), c_e=int(c["c_e"]))

    def mv_operands(self, bl: str, block: str, row0: int = 0, rows: int | None = None) -> dict:
        spec = self.specs[bl]
        rows = spec.N if rows is None else rows
        return dict(base=I.BASE["DATA_BASE"], offset=self.sym[block] + row0 * N.row_bytes(spec.K), rows=rows,
                    count=spec.K)

    def matvec(self, bl: str, epi: int, block: str, dst=0, bank=0, flags=0, row0=0, rows=None) -> None:
        """MATVEC (its rows already prefetched), then the PREFETCH of the MATVEC ``PREFETCH_AHEAD`` later."""
        self.emit("MATVEC", bank=bank, slot=bank, epi=epi, flags=flags | I.PREFETCHED, dst=dst,
                  **self.mv_operands(bl, block, row0, rows))
        if self.next_matvec:
            self.emit("PREFETCH", **self.next_matvec.pop(0))

    def matvec_order(self) -> list[dict]:
        """The operands of every MATVEC in execution order (what the PREFETCHes request)."""
        inter, V = self.dims.inter, self.dims.vocab
        order = []
        for li in range(self.dims.layers):
            p = f"layers.{li}."
            order += [self.mv_operands(p + f"attn.{x}_proj", p + f"w_{x}") for x in ("i", "f", "g")]
            order += [self.mv_operands(p + "attn.o_proj", p + "w_o"),
                      self.mv_operands(p + "mlp.gate_proj", p + "w_gate", rows=inter),
                      self.mv_operands(p + "mlp.gate_proj", p + "w_gate", row0=inter, rows=inter),
                      self.mv_operands(p + "mlp.down_proj", p + "w_down")]
        chunk = head_chunk_rows(self.dims)
        return order + [self.mv_operands("lm_head", "w_head", row0=r0, rows=min(chunk, V - r0))
                        for r0 in range(0, V, chunk)]

    def layer(self, li: int) -> None:
        """One MLGRU layer + GLU: quantize, i/f/g MATVECs, HGRN, o_proj, gate/up, down_proj."""
        d, inter, L = self.dims.d, self.dims.inter, self.dims.layers
        DATA, SIN, SOUT = (I.BASE[n] for n in ("DATA_BASE", "STATE_IN", "STATE_OUT"))
        p, emit, sym = f"layers.{li}.", self.emit, self.sym
        # the quantizer's statistics stream in with their norm records; LB and H0 are needed only by HGRN
        emit("LOAD", dst=I.LD_NORM, fields=4, base=DATA, offset=sym[p + "norm_ifg"], count=d)
        for slot, proj in enumerate(("i", "f", "g")):
            self.setc(slot, p + f"attn.{proj}_proj")
        emit("QSTATS", src=I.SRC_X, nproj=3, count=d)
        emit("LOAD", dst=I.LD_LB, fields=1, base=DATA, offset=sym[p + "lb"], count=d)
        emit("LOAD", dst=I.LD_H0, fields=1, base=SIN, offset=li * d * 4, count=d)
        emit("QCODES", src=I.SRC_X, slot=0, bank=0, count=d)
        self.matvec(p + "attn.i_proj", I.EPI_STORE, p + "w_i", dst=0, bank=0)
        # f and g codes go into banks 1 and 2 while the engine multiplies i
        emit("QCODES", src=I.SRC_X, slot=1, bank=1, count=d)
        emit("QCODES", src=I.SRC_X, slot=2, bank=2, count=d)
        self.matvec(p + "attn.f_proj", I.EPI_STORE, p + "w_f", dst=1, bank=1)
        self.matvec(p + "attn.g_proj", I.EPI_STORE, p + "w_g", dst=2, bank=2)
        # streams 1..B-1: their start states (STATE_IN + s x state_stride) into their roots' H, while f and g multiply
        # (HGRN reads them whole: H is not a streamed buffer)
        for s in range(1, self.streams):
            emit("LOAD", dst=I.LD_HROOT, fields=1, stream=s, base=SIN,
                 offset=s * RM.state_stride(d, L) + li * d * 4, count=d)
        emit("LOAD", dst=I.LD_NORM, fields=2, base=DATA, offset=sym[p + "norm_o"], count=d)
        emit("HGRN", count=d)
        emit("STORE", src=I.ST_H, base=SOUT, offset=li * d * 4, count=d, tstride=RM.state_stride(d, L))
        self.setc(0, p + "attn.o_proj")
        emit("QSTATS", src=I.SRC_A, nproj=1, count=d)
        emit("QCODES", src=I.SRC_A, slot=0, bank=0, count=d)
        self.matvec(p + "attn.o_proj", I.EPI_RESID, p + "w_o")
        emit("LOAD", dst=I.LD_NORM, fields=2, base=DATA, offset=sym[p + "norm_gate"], count=d)
        self.setc(0, p + "mlp.gate_proj")
        emit("QSTATS", src=I.SRC_X, nproj=1, count=d)
        emit("QCODES", src=I.SRC_X, slot=0, bank=0, count=d)
        self.matvec(p + "mlp.gate_proj", I.EPI_STORE, p + "w_gate", dst=0, rows=inter)
        self.matvec(p + "mlp.gate_proj", I.EPI_GLU, p + "w_gate", row0=inter, rows=inter)
        emit("LOAD", dst=I.LD_NORM, fields=2, base=DATA, offset=sym[p + "norm_down"], count=inter)
        self.setc(0, p + "mlp.down_proj")
        emit("QSTATS", src=I.SRC_A, nproj=1, count=inter)
        emit("QCODES", src=I.SRC_A, slot=0, bank=0, count=inter)
        self.matvec(p + "mlp.down_proj", I.EPI_RESID, p + "w_down")

    def head(self) -> None:
        """Final norm + the LM head in chunks of :func:`head_chunk_rows` rows (alternating T buffers, each
        chunk's logits STOREd while the next one multiplies), then the argmax."""
        d, V = self.dims.d, self.dims.vocab
        LOG, ARG = I.BASE["LOGITS"], I.BASE["ARGMAX_OUT"]
        self.emit("LOAD", dst=I.LD_NORM, fields=2, base=I.BASE["DATA_BASE"], offset=self.sym["norm_head"], count=d)
        self.setc(0, "lm_head")
        self.emit("QSTATS", src=I.SRC_X, nproj=1, count=d)
        self.emit("QCODES", src=I.SRC_X, slot=0, bank=0, count=d)
        chunk = head_chunk_rows(self.dims)
        starts = list(range(0, V, chunk))
        pending = None
        for c, r0 in enumerate(starts):
            rows = min(chunk, V - r0)
            flags = (I.HEAD_FIRST if c == 0 else 0) | (I.HEAD_LAST if c == len(starts) - 1 else 0)
            dst = c % 2
            self.matvec("lm_head", I.EPI_HEAD, "w_head", dst=dst, flags=flags, row0=r0, rows=rows)
            if pending is not None:
                self.emit("STORE", **pending)
            pending = dict(src=I.ST_T0 + dst, flags=I.STORE_IF_LOGITS, base=LOG, offset=r0 * 4, count=rows,
                           tstride=V * 4)
        self.emit("STORE", **pending)
        self.emit("STORE", src=I.ST_ARG, base=ARG, offset=0, count=1, tstride=4)


def emit_program(dims: LY.Dims, symbols: dict[str, int] | None = None, consts: dict | None = None,
                 act_frac: int = 0, streams: int = 1) -> list[I.Instr]:
    """The decode-step program for a model of shape ``dims`` over the image laid out as ``symbols``
    (default :func:`plan_image` of ``dims``).

    ``streams`` (1..:data:`isa.MAX_STREAMS`): independent streams a pass may carry (a forest: a root
    ``parents[j] = -1 - s`` continues from stream s's start state, which the host places at ``STATE_IN + s x
    state_stride``); every layer then LOADs streams 1..streams-1's start states into their roots (``LD_HROOT``).

    ``consts`` (BitLinear name -> ``{"c_m", "c_e"}``, :attr:`IntModel.consts`) and ``act_frac`` fill SETC and
    SETF; without them (0) the program is the same instruction for instruction, every operand its timing
    depends on included: what the performance model (:mod:`mmfree.sim.perf`) replays.
    """
    if max(dims.d, dims.inter) > N.MAX_K:
        raise MmfreeError(f"model width {max(dims.d, dims.inter)} exceeds the numerics limit MAX_K = {N.MAX_K}")
    if not isinstance(streams, int) or not 1 <= streams <= I.MAX_STREAMS:
        raise MmfreeError(f"streams must be an integer in 1..{I.MAX_STREAMS}, got {streams!r}")
    em = _Emitter(dims, plan_image(dims).symbols if symbols is None else symbols, consts, streams)
    order = em.matvec_order()
    em.next_matvec = order[PREFETCH_AHEAD:]
    for ops in order[:PREFETCH_AHEAD]:
        em.emit("PREFETCH", **ops)
    em.emit("SETF", act_frac=act_frac)
    em.emit("EMBED", base=I.BASE["DATA_BASE"], offset=em.sym["embed"], count=dims.d,
            stride16=embed_stride(dims.d) // 16, vocab=dims.vocab)
    for li in range(dims.layers):
        em.layer(li)
    em.head()
    em.emit("HALT")
    return em.prog


def compile_model(model, streams: int = 1) -> Compiled:
    """Compile an :class:`IntModel` (an exported image) into a program and a DDR image; ``streams``: how many
    independent streams one pass may carry (:func:`emit_program`; the build's ``max_tokens`` bounds it at run time).

    The program is independent of the hardware build: it needs ``max_width >= max(d, I)`` (checked by the
    hardware against HW_LIMITS, ``ERR_TOO_WIDE``) and runs with any k up to the build's ``max_tokens``.
    Raises :class:`MmfreeError` for a model wider than ``numerics.MAX_K`` or an export whose tensors do not
    fit its shape.
    """
    dims = model.dims
    if max(dims.d, dims.inter) > N.MAX_K:
        raise MmfreeError(f"model width {max(dims.d, dims.inter)} exceeds the numerics limit MAX_K = {N.MAX_K}")
    plan = plan_image(dims)
    image = build_image(model, plan)
    prog = emit_program(dims, plan.symbols, model.consts, model.act_frac, streams)
    chunk = head_chunk_rows(dims)
    width = max(dims.d, dims.inter, chunk)
    return Compiled(I.assemble(prog, width, streams), image, dims, dict(plan.symbols),
                    RM.state_stride(dims.d, dims.layers), chunk, width, prog, streams)


def must_move_bytes(dims: LY.Dims, k: int = 1, write_logits: bool = True) -> int:
    """Bytes that must cross the DDR interface for one pass of ``k`` tokens: the one definition the
    roofline fraction of ``mmfree sim`` divides by (docs/sim.md).

    * the packed ternary weights of every BitLinear at 5 trits per byte **without** row padding
      (``ceil(K / 5)`` bytes per row), once per pass;
    * once per pass: every norm vector (n and nw of each BitLinear, the head's included) and
      ``1 - lb`` at their export size, and the start state (L x d int32);
    * per token: the token id (uint32), its embedding row (at its export size), the state
      after it (L x d int32), its argmax (uint32) and, when they are written, its logits (V int32).

    Row padding, instruction fetch and the int32 widening of norm records are overheads of this design
    and do not count.
    """
    weights = LY.weight_bytes_per_token(dims, padded=False)
    vec = sum(t.nbytes for t in LY.tensors(dims)
              if t.name.endswith((".n", ".nw", "one_minus_lb")))
    d, L, V = dims.d, dims.layers, dims.vocab
    emb_row = sum(t.nbytes for t in LY.tensors(dims) if t.name.startswith("embed")) // V
    per_token = 4 + emb_row + 4 * L * d + 4 + (4 * V if write_logits else 0)
    return weights + vec + 4 * L * d + k * per_token
