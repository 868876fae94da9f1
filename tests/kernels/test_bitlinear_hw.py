"""Hardware-exact BitLinear: the Triton integer pipeline equals the numerics primitives and the integer
reference (IntModel) exactly; its training gradient is the fake-quant BitLinear's at the surrogate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from mmfree.pymodel import numerics as N  # noqa: E402
from mmfree.pymodel.kernels import HardwareKernels  # noqa: E402
from mmfree.pymodel.kernels import bitlinear_hw as HW  # noqa: E402
from tests.kernels._tol import assert_close  # noqa: E402
from tests.pymodel.helpers import random_model  # noqa: E402

M, K, NOUT = 126, 60, 84


def _vectors(gen, k=K):
    """Pre-norm and folded norm mantissas at the spec's width (max |m| in [2**(VEC_BITS-2), 2**(VEC_BITS-1)))."""
    top = 2 ** (N.VEC_BITS - 1)
    n = torch.randint(top // 2, top, (k,), generator=gen) * torch.where(torch.rand(k, generator=gen) < 0.1, -1, 1)
    nw = torch.randint(-top + 1, top, (k,), generator=gen)
    return n, nw


@pytest.mark.parametrize("scale_bits", [20, 31, 40, 62], ids=lambda b: f"u2^{b}")
def test_quantizer_is_exact(scale_bits, device):
    """codes, P, S, M and shift equal numerics.quantize + numerics.output_multiplier."""
    gen = torch.Generator().manual_seed(scale_bits)
    u = torch.randint(-2**scale_bits, 2**scale_bits, (M, K), generator=gen)
    u[3] = 0                                              # zero input: zero codes, M = shift = 0
    u[5] = 0
    u[5, 7] = -12345                                      # a single nonzero element
    u[9] = u[9] >> 40 if scale_bits > 40 else u[9]        # small magnitudes next to large ones
    n, nw = _vectors(gen)
    for c_m, c_e in ((40000, -30), (65535, 5), (32768, -60)):
        got = HW.hw_quantize(u.to(device), n.to(device), nw.to(device), c_m, c_e)
        ref = HW.hw_quantize_naive(u, n, nw, c_m, c_e)
        for name, a, b in zip(("codes", "P", "S", "M", "shift"), got, ref):
            assert torch.equal(a.cpu().to(torch.int64), b.to(torch.int64)), f"{name} differs (c_m={c_m}, c_e={c_e})"


@pytest.mark.parametrize("scale_bits", [24, 31, 62], ids=lambda b: f"u2^{b}")
def test_integer_output_is_exact(scale_bits, device):
    """dequantize(codes @ t.T, M, shift) including saturation and left shifts, vs the numerics pipeline."""
    gen = torch.Generator().manual_seed(100 + scale_bits)
    u = torch.randint(-2**scale_bits, 2**scale_bits, (2, 63, K), generator=gen)
    n, nw = _vectors(gen)
    t = torch.randint(-1, 2, (NOUT, K), generator=gen, dtype=torch.int8)
    for c_m, c_e in ((40000, -30), (65535, 5), (50000, -45)):
        got = HW.hw_bitlinear_int(u.to(device), n.to(device), nw.to(device), t.to(device), c_m, c_e).cpu()
        ref = HW.hw_bitlinear_int_naive(u, n, nw, t, c_m, c_e)
        assert got.shape == (2, 63, NOUT) and got.dtype == torch.int64
        assert torch.equal(got, ref), f"c_m={c_m}, c_e={c_e}"


def test_equals_the_integer_reference(tmp_path, device):
    """Every BitLinear of an exported model: the kernel's integers == IntModel.bitlinear's."""
    from mmfree.pymodel.export import export_model
    from mmfree.pymodel.intmodel import IntModel

    model = random_model(0, vocab_size=97, hidden_size=60, num_hidden_layers=1, intermediate_size=84)
    im = IntModel.load(export_model(model, tmp_path / "img"))
    gen = torch.Generator().manual_seed(4)
    for name, spec in im.bitlinear_specs.items():
        for bits in (28, 58):                              # residual-like inputs and Q32 products
            u = torch.randint(-2**bits, 2**bits, (7, spec.K), generator=gen)
            ref = im.bitlinear(name, u.numpy())
            t = torch.from_numpy(im.ternary(name))         # float32 -1/0/1, as hwexact keeps it
            c = im.consts[name]
            got = HW.hw_bitlinear_int(u.to(device), torch.from_numpy(im.vec(spec.n)).to(device),
                                      torch.from_numpy(im.vec(spec.nw)).to(device), t.to(device), c["c_m"], c["c_e"])
            np.testing.assert_array_equal(got.cpu().numpy(), ref, err_msg=name)


def test_training_gradient_is_the_surrogates(device):
    """hw_bitlinear: value = integer output / 2**frac, gradients = fake-quant BitLinear at the surrogate."""
    gen = torch.Generator().manual_seed(9)
    u = torch.randint(-2**31, 2**31, (2, 17, K), generator=gen)
    n, nw = _vectors(gen)
    t = torch.randint(-1, 2, (NOUT, K), generator=gen, dtype=torch.int8)
    frac = 20
    x = torch.randn(2, 17, K, generator=gen).to(device).requires_grad_()
    norm_w = (1 + 0.3 * torch.randn(K, generator=gen)).to(device).requires_grad_()
    w = (0.05 * torch.randn(NOUT, K, generator=gen)).to(device).requires_grad_()
    args = (u.to(device), n.to(device), nw.to(device), t.to(device), 40000, -30)
    out_int, out = HW.hw_bitlinear(*args, x, norm_w, w, 1e-8, frac)
    ref_int, ref = HW.hw_bitlinear_naive(*args, x, norm_w, w, 1e-8, frac)
    assert torch.equal(out_int, ref_int)
    assert torch.equal(out.double(), (out_int.double() / 2**frac).float().double())
    g = torch.randn(out.shape, generator=gen).to(device)
    for name, a, b in zip(("dx", "dnorm_w", "dw"), torch.autograd.grad(out, (x, norm_w, w), g),
                          torch.autograd.grad(ref, (x, norm_w, w), g)):
        assert_close(name, a, b, torch.float32)
    # the hook object hwexact calls
    module = torch.nn.Module()
    module.weight, module.norm = w, torch.nn.Module()
    module.norm.weight, module.norm.eps = norm_w, 1e-8
    hk_int, hk_out = HardwareKernels().bitlinear(*args, x, module, frac)
    assert torch.equal(hk_int, out_int) and torch.equal(hk_out, out)
    with torch.no_grad():                                 # no gradient: the exact float64 value
        _, exact = HW.hw_bitlinear(*args, x, norm_w, w, 1e-8, frac)
    assert exact.dtype == torch.float64 and torch.equal(exact, out_int.double() / 2**frac)


def test_width_beyond_the_spec_is_refused(device):
    from mmfree import MmfreeError

    with pytest.raises(MmfreeError, match="MAX_K"):
        HW.hw_quantize(torch.zeros(1, N.MAX_K + 1, dtype=torch.int64, device=device),
                       torch.ones(N.MAX_K + 1, device=device), torch.ones(N.MAX_K + 1, device=device), 40000, -30)
