"""Shared plumbing of the Triton kernels: where they may run, launch shapes, small jit helpers.

Triton runs on CUDA GPUs. On a CPU it runs only under its interpreter (``TRITON_INTERPRET=1``, which
Triton reads when a kernel module is imported, so it must be set before that); the tests use it.
Importing this module imports triton: only kernel modules and :func:`mmfree.pymodel.kernels.install`
(after it checked that triton imports) do.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mmfree import MmfreeError

#: Largest row the single-tile row kernels hold (RMSNorm/quantizer forward and backward). The released
#: models need at most 6912 (the 2.7B GLU width); the numerics spec allows MAX_K = 32768.
MAX_ROW = 1 << 15


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: torch.Tensor) -> None:
    """Refuse tensors a Triton kernel cannot read: CPU tensors outside the interpreter, mixed devices."""
    devs = {t.device for t in tensors if t is not None}
    if len(devs) > 1:
        raise MmfreeError(f"kernel inputs are on different devices ({', '.join(map(str, sorted(devs, key=str)))}); "
                          "move the model and the batch to one device")
    for d in devs:
        if d.type == "cpu" and not interpreting():
            raise MmfreeError("Triton kernels run on CUDA tensors; on a CPU use --kernels naive, or set "
                              "TRITON_INTERPRET=1 before anything imports triton (slow; meant for tests)")
        if d.type not in ("cpu", "cuda"):
            raise MmfreeError(f"Triton kernels run on CUDA tensors, got a tensor on {d}; use --kernels naive")


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def row_block(k: int) -> tuple[int, int]:
    """(rows per program, columns per tile) of the single-tile row kernels for rows of length ``k``."""
    if k > MAX_ROW:
        raise MmfreeError(f"rows of {k} elements exceed the Triton row kernels' limit ({MAX_ROW}); "
                          "use --kernels naive")
    bk = triton.next_power_of_2(max(k, 16))
    return max(1, min(16, 4096 // bk)), bk


def gemm_blocks(device: torch.device, int8: bool, size: int = 0) -> dict:
    """Tile shape of the GEMM kernels in the interpreter: 32-wide tiles for small problems (so the tests
    cross tile borders), 256-wide ones when the largest dimension ``size`` is big (fewer Python steps).
    On a GPU the GEMMs are autotuned (:func:`autotune_gemm`) and this returns nothing."""
    if device.type == "cuda" and not interpreting():
        return {}
    b = 32 if size <= 1024 else 256
    return dict(BLOCK_M=32, BLOCK_N=b, BLOCK_K=b, GROUP_M=4, num_warps=4, num_stages=1)


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps,
                         num_stages=stages)


#: Autotuning candidates (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of the tensor-core GEMMs (Ampere and
#: Hopper). "int8": the forward, reduction over BLOCK_K; "dy": reduction over BLOCK_N (the outputs);
#: "dw": reduction over BLOCK_M (the tokens).
GEMM_CONFIGS = {
    "int8": [_cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 4),
             _cfg(64, 128, 128, 4, 4), _cfg(128, 64, 128, 4, 4)],
    "dy": [_cfg(128, 64, 128, 8, 3), _cfg(128, 64, 256, 8, 3), _cfg(64, 64, 128, 4, 4),
           _cfg(128, 64, 64, 4, 4), _cfg(64, 64, 64, 4, 4)],
    "dw": [_cfg(64, 128, 128, 8, 3), _cfg(64, 128, 256, 8, 3), _cfg(64, 256, 128, 8, 3), _cfg(32, 64, 128, 4, 4),
           _cfg(64, 64, 64, 4, 4)],
}


def autotune_gemm(kind: str):
    """Autotune a GEMM kernel over :data:`GEMM_CONFIGS` keyed on (M, N, K) on a GPU; in the interpreter the
    launcher passes the tiles itself (:func:`gemm_blocks`)."""
    def deco(kernel):
        if interpreting():
            return kernel
        return triton.autotune(configs=GEMM_CONFIGS[kind], key=["M", "N", "K"])(kernel)
    return deco


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of fp32 dots: IEEE unless torch itself allows TF32 for matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def out_dtype_of(x: torch.Tensor) -> torch.dtype:
    """Output dtype of a projection: the autocast dtype when autocast is on for x's device, else x's dtype."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


@triton.jit
def rint(v):
    """Round half to even (``torch.round``) for |v| < 2**22, exact in fp32: add and remove 1.5 * 2**23."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def span64(pid, BLOCK: tl.constexpr):
    """int64 indices ``pid * BLOCK .. pid * BLOCK + BLOCK - 1``: row offsets ``index * stride`` made from them
    stay exact past 2**31 elements (a 32k-vocab head's output overflows int32 at >= 67,109 tokens per call)."""
    return pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Tile coordinates of program ``pid`` with GROUP_M row tiles sharing column tiles (L2 reuse)."""
    in_group = GROUP_M * num_n
    group = pid // in_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n


@triton.jit
def round_bf16(v):
    """fp32 -> the fp32 value of the nearest bf16 (ties to even); the interpreter's own cast truncates."""
    b = v.to(tl.int32, bitcast=True)
    b = (b + (((b >> 16) & 1) + 0x7FFF)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def cast(v, dtype: tl.constexpr, EMU: tl.constexpr):
    """``v.to(dtype)`` rounding to nearest even also in the interpreter (``EMU``), where bf16 casts truncate."""
    if EMU:
        if dtype == tl.bfloat16:
            v = round_bf16(v.to(tl.float32))
    return v.to(dtype)


@triton.jit
def dot_operand(v, dtype: tl.constexpr, EMU: tl.constexpr):
    """A dot operand in ``dtype``; fp32 in the interpreter (``EMU``), whose bf16 dots and int->bf16 casts are wrong."""
    if EMU:
        return v.to(tl.float32)
    return v.to(dtype)
