"""The hardware image layout: which tensors an exported model has, their types, shapes and offsets.

One definition for every consumer: the export writes it, :class:`mmfree.pymodel.intmodel.IntModel`
reads it, the accelerator compiler places it in DDR, the PYNQ driver loads it, the HLS harness takes
its vectors from it. An image is a directory::

    manifest.json   format/spec versions, the model config, every tensor (offset, dtype, shape, sha256),
                    per-BitLinear constants, the sha256 of weights.bin
    weights.bin     all tensors back to back in layout order, each at a 64-byte aligned offset
    tokenizer.json  copied from the checkpoint when it has one

Tensor order is execution order (embedding, then each layer, then the head), so a DMA that streams a
layer's weights reads consecutive addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfree.pymodel import numerics as N

FORMAT = "mmfree-image"
FORMAT_VERSION = 1
#: Alignment of everything placed in DDR, in bytes (one 64-byte burst line): tensors in weights.bin, blocks
#: of the accelerator's image, the draft tables, the host buffers (``rtl.regmap.ALIGN``).
ALIGN = 64


def round_up(n: int, a: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``a`` (default :data:`ALIGN`)."""
    return -(-n // a) * a


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str          # numpy dtype string: "int32", "uint8", "uint32"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BitLinearSpec:
    """One ternary projection: ``N`` outputs from ``K`` inputs; the names of its tensors."""

    name: str           # e.g. "layers.0.attn.i_proj", "lm_head"
    K: int
    N: int
    n: str              # pre-norm weight vector (18-bit mantissas in int32 [K])
    nw: str             # pre-norm weight * own norm weight (18-bit mantissas in int32 [K])
    w: str              # packed ternary matrix (uint8 [N, row_bytes(K)])


@dataclass(frozen=True)
class Dims:
    vocab: int
    d: int
    inter: int
    layers: int

    @classmethod
    def of(cls, cfg) -> Dims:
        return cls(cfg.vocab_size, cfg.hidden_size, cfg.intermediate, cfg.num_hidden_layers)


#: BitLinears whose output is added to the residual stream (output format res_frac); all others use act_frac.
RESIDUAL_OUTPUTS = ("attn.o_proj", "mlp.down_proj")


def output_format(name: str) -> str:
    """"res" or "act": the fixed-point format of a BitLinear's output."""
    return "res" if name.endswith(RESIDUAL_OUTPUTS) else "act"


def bitlinears(dims: Dims) -> list[BitLinearSpec]:
    """Every BitLinear in execution order."""
    d, I = dims.d, dims.inter
    out = []
    for i in range(dims.layers):
        p = f"layers.{i}."
        for proj in ("i_proj", "f_proj", "g_proj"):
            out.append(BitLinearSpec(p + f"attn.{proj}", d, d, p + "attn_norm.n", p + f"attn.{proj}.nw", p + f"attn.{proj}.w"))
        out.append(BitLinearSpec(p + "attn.o_proj", d, d, p + "attn.g_norm.n", p + "attn.o_proj.nw", p + "attn.o_proj.w"))
        out.append(BitLinearSpec(p + "mlp.gate_proj", d, 2 * I, p + "mlp_norm.n", p + "mlp.gate_proj.nw", p + "mlp.gate_proj.w"))
        out.append(BitLinearSpec(p + "mlp.down_proj", I, d, p + "mlp.down_proj.n", p + "mlp.down_proj.nw", p + "mlp.down_proj.w"))
    out.append(BitLinearSpec("lm_head", d, dims.vocab, "norm.n", "lm_head.nw", "lm_head.w"))
    return out


def tensors(dims: Dims, row_align_bytes: int = N.ROW_ALIGN_BYTES) -> list[TensorSpec]:
    """Every tensor of the image in layout order."""
    d, I, V = dims.d, dims.inter, dims.vocab

    def packed(name, n, k):
        return TensorSpec(name, "uint8", (n, N.row_bytes(k, row_align_bytes)))

    ts = [TensorSpec("embed", "int32", (V, d))]
    for i in range(dims.layers):
        p = f"layers.{i}."
        ts += [TensorSpec(p + "attn_norm.n", "int32", (d,))]
        ts += [TensorSpec(p + f"attn.{proj}.nw", "int32", (d,)) for proj in ("i_proj", "f_proj", "g_proj")]
        ts += [packed(p + f"attn.{proj}.w", d, d) for proj in ("i_proj", "f_proj", "g_proj")]
        ts += [TensorSpec(p + "attn.one_minus_lb", "uint32", (d,)),
               TensorSpec(p + "attn.g_norm.n", "int32", (d,)),
               TensorSpec(p + "attn.o_proj.nw", "int32", (d,)),
               packed(p + "attn.o_proj.w", d, d),
               TensorSpec(p + "mlp_norm.n", "int32", (d,)),
               TensorSpec(p + "mlp.gate_proj.nw", "int32", (d,)),
               packed(p + "mlp.gate_proj.w", 2 * I, d),
               TensorSpec(p + "mlp.down_proj.n", "int32", (I,)),
               TensorSpec(p + "mlp.down_proj.nw", "int32", (I,)),
               packed(p + "mlp.down_proj.w", d, I)]
    ts += [TensorSpec("norm.n", "int32", (d,)), TensorSpec("lm_head.nw", "int32", (d,)), packed("lm_head.w", V, d)]
    ts += [TensorSpec("lut.sigmoid_tail", "uint32", (N.SIG_ENTRIES,)),
           TensorSpec("lut.rsqrt", "uint32", (N.RSQRT_ENTRIES,))]
    return ts


def offsets(specs: list[TensorSpec]) -> tuple[dict[str, int], int]:
    """Byte offset of each tensor (64-byte aligned) and the total size of weights.bin."""
    off, pos = {}, 0
    for t in specs:
        pos = round_up(pos)
        off[t.name] = pos
        pos += t.nbytes
    return off, round_up(pos)


def weight_bytes_per_token(dims: Dims, row_align_bytes: int = N.ROW_ALIGN_BYTES, padded: bool = True) -> int:
    """Bytes of packed ternary weights one decode step reads (padded rows, or the 5-trits/byte minimum)."""
    total = 0
    for b in bitlinears(dims):
        total += b.N * (N.row_bytes(b.K, row_align_bytes) if padded else -(-b.K // N.TRITS_PER_BYTE))
    return total
