"""Fused BitLinear (fake-quant numerics): Triton kernels vs their naive twins, outputs and gradients by name."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mmfree.pymodel.kernels import bitlinear as FB  # noqa: E402
from mmfree.pymodel.model import TernaryLinearSTE, rms_norm  # noqa: E402
from tests.kernels._tol import assert_close  # noqa: E402

# (batch, time, K, N): odd sizes, a single decode token, K over several 32-wide tiles
SHAPES = [(2, 63, 60, 84), (1, 1, 60, 37), (3, 5, 100, 33)]


def _inputs(shape, dtype, device, seed=0, zero_row=False):
    B, T, K, N = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=g)
    if zero_row:
        x[0, 0] = 0                                    # an all-zero token: s = 127 / 1e-5, codes 0, output 0
    nw = 1 + 0.3 * torch.randn(K, generator=g)
    w = 0.05 * torch.randn(N, K, generator=g)
    return (x.to(device, dtype).requires_grad_(), nw.to(device).requires_grad_(), w.to(device).requires_grad_())


def _flip_allowance(x, nw, w, eps):
    """Extra output tolerance for codes that differ between kernel and twin.

    The codes are an exact function of rstd: the kernel's codes and s equal the twin's computed at the
    kernel's rstd (checked here, exactly), and rstd, a float reduction in another summation order, agrees
    with the twin's to fp32 rounding. So a code can differ only at a rounding tie that rstd's last bit
    decides: y * s at a half-integer (checked with the y the twin quantizes: rounded to x's dtype) or, for
    bf16 x, y itself at a bf16 rounding midpoint (the two rstds give different bf16 y, or a different
    max|y| and so s). Allowance: one code step, 1 / (s * sw), per differing code in a row, relative to
    the output's scale."""
    x2 = x.detach().reshape(-1, x.shape[-1])
    q, rstd, s = FB.act_quant(x2, nw.detach(), eps)
    qk, _, sk = FB.act_quant_naive(x2, nw, eps, rstd=rstd)
    assert torch.equal(q, qk), "codes differ from the twin's at the kernel's own rstd"
    assert torch.equal(s, sk), "s differs from the twin's at the kernel's own rstd"
    qn, rstdn, sn = FB.act_quant_naive(x2, nw, eps)
    assert_close("out", rstd, rstdn, torch.float32)
    flips = (q != qn)
    if not flips.any():
        return 0.0
    x32, nwf = x2.float(), nw.detach().float()
    yn = ((x32 * rstdn[:, None]) * nwf).to(x.dtype).float()      # what the twin quantizes
    v = yn * sn[:, None]
    tie = (v - v.floor() - 0.5).abs() < 1e-3
    if x.dtype != torch.float32:
        yk = ((x32 * rstd[:, None]) * nwf).to(x.dtype).float()   # what the kernel quantizes
        tie |= (yk != yn) | (s != sn)[:, None]
    assert tie[flips].all(), "codes differ away from a rounding tie"
    _, sw = FB.ternarize_naive(w)
    ref = FB.bitlinear_naive(x.detach(), nw.detach(), w.detach(), eps)
    per_row = flips.sum(-1).float() / (sn * sw)
    return per_row.max().item() / ref.abs().max().item()


def _run(fn, x, nw, w, g, eps=1e-8):
    out = fn(x, nw, w, eps)
    dx, dnw, dw = torch.autograd.grad(out, (x, nw, w), g)
    return {"out": out, "dx": dx, "dnorm_w": dnw, "dw": dw}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}K{}N{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_matches_naive(shape, dtype, device):
    x, nw, w = _inputs(shape, dtype, device, zero_row=shape[0] > 1)
    g = torch.randn(*shape[:2], shape[3], generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = _run(FB.bitlinear, x, nw, w, g)
    ref = _run(FB.bitlinear_naive, x, nw, w, g)
    assert got["out"].dtype == dtype
    extra = _flip_allowance(x, nw, w, 1e-8)
    for name in ("out", "dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], dtype, extra=extra if name == "out" else 0.0)
    if shape[0] > 1:
        assert torch.equal(got["out"][0, 0], torch.zeros_like(got["out"][0, 0]))


def test_torch_backward_gemms_match(device):
    """bwd_gemm="torch" (cuBLAS on a GPU) computes the same gradients as the Triton GEMMs."""
    x, nw, w = _inputs(SHAPES[0], torch.float32, device)
    g = torch.randn(*SHAPES[0][:2], SHAPES[0][3]).to(device)
    got = _run(FB.bitlinear_torch_bwd, x, nw, w, g)
    ref = _run(FB.bitlinear, x, nw, w, g)
    for name in ("out", "dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], torch.float32)


def test_matches_the_model_path(device):
    """The kernel's contract is the float model's BitLinear: rms_norm then TernaryLinearSTE (fp32)."""
    x, nw, w = _inputs(SHAPES[0], torch.float32, device, seed=3)
    g = torch.randn(*SHAPES[0][:2], SHAPES[0][3]).to(device)
    got = _run(FB.bitlinear, x, nw, w, g)
    ref = _run(lambda x, nw, w, eps: TernaryLinearSTE.apply(rms_norm(x, nw, eps), w), x, nw, w, g)
    extra = _flip_allowance(x, nw, w, 1e-8)
    for name in ("out", "dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], torch.float32, extra=extra if name == "out" else 0.0)


def test_codes_and_scales(device):
    """The quantizer kernel's codes equal the twin's; rstd agrees to fp32 rounding, s exactly at that rstd."""
    x, nw, w = _inputs((2, 63, 60, 84), torch.float32, device, seed=5)
    x2 = x.detach().reshape(-1, 60)
    q, rstd, s = FB.act_quant(x2, nw.detach(), 1e-8)
    qn, rstdn, sn = FB.act_quant_naive(x2, nw, 1e-8)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.equal(q.cpu(), qn.cpu())
    assert_close("out", rstd, rstdn, torch.float32)
    assert_close("out", s, sn, torch.float32)
    qk, _, sk = FB.act_quant_naive(x2, nw, 1e-8, rstd=rstd)
    assert torch.equal(q, qk) and torch.equal(s, sk)
    sw = FB.weight_scale(w)
    t = FB.ternarize(w, sw)
    tn, swn = FB.ternarize_naive(w)
    assert torch.equal(t.cpu(), tn.cpu())
    assert abs(sw.item() - swn.item()) <= 1e-6 * swn.item()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}K{}N{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_codes_are_exact_at_the_kernels_rstd(shape, dtype, device):
    """Given rstd, codes and s are defined bit for bit (the contract in the module docstring): the kernel's
    equal the twin's computed at the kernel's rstd, exact rounding ties included (bf16 y and max|y| have
    8-bit mantissas, so y * s lands on a half-integer exactly: 21 such codes in the first bf16 case). On a
    GPU this needs the kernel's 1 / max|y| to be an IEEE division like torch's, not Triton's approximate '/'."""
    x, nw, _ = _inputs(shape, dtype, device, zero_row=shape[0] > 1)
    x2 = x.detach().reshape(-1, shape[2])
    q, rstd, s = FB.act_quant(x2, nw.detach(), 1e-8)
    qk, rstdk, sk = FB.act_quant_naive(x2, nw, 1e-8, rstd=rstd)
    assert torch.equal(rstdk, rstd)
    assert torch.equal(s, sk), f"s differs in {int((s != sk).sum())} of {s.numel()} rows"
    assert torch.equal(q, qk), f"{int((q != qk).sum())} codes differ"
    if dtype == torch.bfloat16 and shape == SHAPES[0]:
        y = ((x2.float() * rstd[:, None]) * nw.detach().float()).to(dtype).double()
        v = y * 127 / y.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        assert ((v - v.floor()) == 0.5).sum() > 0, "the case no longer holds an exact tie"


def test_autocast_bf16_output(device):
    """Under autocast the output comes in the autocast dtype, computed from the exact integer product."""
    x, nw, w = _inputs((1, 9, 60, 84), torch.float32, device)
    g = torch.randn(1, 9, 84).to(device, torch.bfloat16)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got = _run(FB.bitlinear, x, nw, w, g)
        ref = _run(FB.bitlinear_naive, x, nw, w, g)
    assert got["out"].dtype == torch.bfloat16 and got["dx"].dtype == torch.float32
    for name in ("out", "dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], torch.bfloat16)


def test_shape_mismatch_is_a_clear_error(device):
    x, nw, w = _inputs((1, 3, 60, 84), torch.float32, device)
    with pytest.raises(ValueError, match="expected \\[N, 60\\]"):
        FB.bitlinear(x, nw, w[:, :50], 1e-8)


# ---- the default backward backend per shape class (issue 24) ------------------------------------------------------
def test_shape_classes_and_the_measured_table():
    assert FB.shape_class(1024, 1024) == ("square", "small") and FB.shape_class(2048, 2048) == ("square", "large")
    assert FB.shape_class(11264, 2048) == ("wide", "large") and FB.shape_class(1024, 2816) == ("narrow", "small")
    assert FB.bwd_backend(1024, 2816) == "triton" and FB.bwd_backend(2048, 5632) == "torch"
    assert FB.bwd_backend(84, 60) == "torch"                   # ("wide", "small"): not measured -> cuBLAS
    assert set(FB.BWD_GEMM_TABLE.values()) <= {"triton", "torch"}


@pytest.mark.parametrize("N,K", [(84, 60), (37, 60)], ids=["wide-small-cublas", "narrow-small-triton"])
def test_auto_backend_matches_naive(N, K, device):
    """bitlinear_auto (what install() sets) on a cuBLAS-class and a Triton-class shape: outputs and gradients
    equal the naive twin's, and the same as the explicitly chosen backend's."""
    x, nw, w = _inputs((2, 7, K, N), torch.float32, device, seed=9)
    g = torch.randn(2, 7, N, generator=torch.Generator().manual_seed(2)).to(device)
    got = _run(FB.bitlinear_auto, x, nw, w, g)
    ref = _run(FB.bitlinear_naive, x, nw, w, g)
    same = _run(lambda *a: FB.bitlinear(*a, bwd_gemm=FB.bwd_backend(N, K)), x, nw, w, g)
    extra = _flip_allowance(x, nw, w, 1e-8)
    for name in ("out", "dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], torch.float32, extra=extra if name == "out" else 0.0)
        assert torch.equal(got[name], same[name]), name


def test_bench_prints_the_table_from_its_rows():
    """bench/gpu_bitlinear.py turns its ours / ours-cublas rows into BWD_GEMM_TABLE lines (GPU run: the bench)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "gpu_bitlinear.py"
    spec = importlib.util.spec_from_file_location("gpu_bitlinear", path)
    gb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gb)
    res = {"bitlinear": {"a": {"ours": {"ms": 1.0}, "ours-cublas": {"ms": 2.0}},
                         "b": {"ours": {"ms": 3.0}, "ours-cublas": {"ms": 2.0}},
                         "c": {"ours": {"ms": 1.0}, "ours-cublas": {"ms": 1.5}}},
           "shapes": {"a": [1024, 2816], "b": [2048, 2048], "c": [1024, 1024]}}
    lines = gb.bwd_gemm_table(res)
    assert lines[0].startswith("    ('narrow', 'small'): 'triton',")
    assert lines[1].startswith("    ('square', 'large'): 'torch',") and "Triton 3.000, cuBLAS 2.000" in lines[1]
    assert lines[2].startswith("    ('square', 'small'): 'triton',")
