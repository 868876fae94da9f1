"""Named tolerances for float-vs-float kernel comparisons, per tensor and dtype.

The error measure is ``max |got - ref| / max |ref|`` (a relative error at the tensor's scale), so one
number per tensor reads the same for inputs of any magnitude.
"""

from __future__ import annotations

import torch

FP32 = {
    "out": 1e-5, "dx": 1e-5, "dnorm_w": 2e-5, "dw": 2e-5,                  # fused BitLinear
    "h": 1e-5, "df": 1e-5, "dc": 1e-5, "dh0": 1e-5, "dlb": 2e-5,           # MLGRU scan
    "di": 1e-5,
}
BF16 = {
    "out": 8e-3, "dx": 1.6e-2, "dnorm_w": 1.6e-2, "dw": 1.6e-2,
    "h": 8e-3, "df": 1.6e-2, "dc": 1.6e-2, "dh0": 1.6e-2, "dlb": 1.6e-2, "di": 1.6e-2,
}


def tol(name: str, dtype: torch.dtype) -> float:
    return (BF16 if dtype in (torch.bfloat16, torch.float16) else FP32)[name]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item()
    return (got - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, extra: float = 0.0) -> None:
    """``rel_err(got, ref) <= tol(name, dtype) + extra``; the message names the tensor and both numbers."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got.detach().float()).all(), f"{name}: non-finite values"
    e = rel_err(got, ref)
    t = tol(name, dtype) + extra
    assert e <= t, f"{name} ({dtype}): relative error {e:.3e} > tolerance {t:.3e}"
