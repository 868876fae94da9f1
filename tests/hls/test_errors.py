"""Bad input is refused before any C runs, with a ValueError that names the sizes or values; the C
kernels check sizes again and return a status code."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.hls import csim as C
from mmfree.hls.harness import ModelRunner, layer_image
from mmfree.pymodel import numerics as N


def test_matvec_row_length_must_match_k(sim):
    packed = N.pack_ternary(np.ones((4, 60), np.int8))              # 16 bytes per row
    with pytest.raises(ValueError, match=r"packed rows have 16 bytes, but K=100 codes need row_bytes\(100\) = 32"):
        sim.ternary_matvec(packed, np.zeros(100, np.int64))
    with pytest.raises(ValueError, match="2-D uint8"):
        sim.ternary_matvec(packed.astype(np.int16), np.zeros(60, np.int64))


def test_codes_out_of_range(sim):
    packed = N.pack_ternary(np.ones((1, 5), np.int8))
    with pytest.raises(ValueError, match=r"codes has values in \[0, 128\], outside the allowed \[-127, 127\]"):
        sim.ternary_matvec(packed, np.array([0, 1, 2, 3, 128]))


def test_quantize_sizes_must_match(sim):
    with pytest.raises(ValueError, match="n has 63 values but len\\(u\\) is 60"):
        sim.quantize(np.ones(60, np.int64), np.ones(63, np.int64), np.ones(60, np.int64))
    with pytest.raises(ValueError, match="nw has 1000 values but len\\(u\\) is 60"):
        sim.quantize(np.ones(60, np.int64), np.ones(60, np.int64), np.ones(1000, np.int64))
    with pytest.raises(ValueError, match="must hold integers"):
        sim.quantize(np.ones(3), np.ones(3, np.int64), np.ones(3, np.int64))
    with pytest.raises(ValueError, match="K = len\\(u\\) must be positive"):
        sim.quantize(np.ones(0, np.int64), np.ones(0, np.int64), np.ones(0, np.int64))
    with pytest.raises(ValueError, match="exceeds the numerics spec's MAX_K"):
        k = N.MAX_K + 1
        sim.quantize(np.ones(k, np.int64), np.ones(k, np.int64), np.ones(k, np.int64))


def test_mlgru_sizes_must_match(sim):
    d = np.zeros(60, np.int64)
    with pytest.raises(ValueError, match=r"sizes do not match: .*f has shape \(63,\)"):
        sim.mlgru(d, np.zeros(63, np.int64), d, d, d, 16)
    with pytest.raises(ValueError, match=r"one_minus_lb has values in \[2147483649, 2147483649\], outside the "
                                         r"allowed \[0, 2147483648\]"):
        sim.mlgru(d, d, d, np.full(60, N.ONE_Q31 + 1), d, 16)
    with pytest.raises(ValueError, match="fractional bits must be an integer in"):
        sim.mlgru(d, d, d, d, d, N.FRAC_MAX + 1)


def test_elementwise_shapes_and_ranges(sim):
    with pytest.raises(ValueError, match=r"f has shape \(3,\), one_minus_lb has shape \(4,\)"):
        sim.forget_rate(np.zeros(3, np.int64), np.zeros(4, np.int64), 16)
    with pytest.raises(ValueError, match=r"x has values in \[0, 2147483648\]"):
        sim.silu(np.array([0, 2**31]), 16)
    with pytest.raises(ValueError, match="c_m has values"):
        sim.output_multiplier(1, 1, 0, 5, 0)
    with pytest.raises(ValueError, match=r"sz has values in \[39, 39\], outside the allowed \[0, 38\]"):
        sim.output_multiplier(1, 1, C.SZ_MAX + 1, C.CM_LO, 0)
    with pytest.raises(ValueError, match=r"z has values"):
        sim.sum_squares(np.array([0, C.P_MAX + 1]))
    with pytest.raises(ValueError, match=r"len\(z\) must be positive"):
        sim.sum_squares(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"P=-1 is outside \[0, "):
        sim.codes_from(np.array([5, 6]), -1)
    with pytest.raises(ValueError, match=r"p has values in \[5, 6\], outside the allowed \[-5, 5\]"):
        sim.codes_from(np.array([5, 6]), 5)


def test_dequantize_rows_checks(sim):
    with pytest.raises(ValueError, match="no accumulators"):
        sim.dequantize_rows(np.zeros(0, np.int64), 1, 1, 0, C.CM_LO, 0)
    with pytest.raises(ValueError, match="c_e=9999999"):
        sim.dequantize_rows(np.zeros(3, np.int64), 1, 1, 0, C.CM_LO, 9999999)
    with pytest.raises(ValueError, match="sz=-1"):
        sim.dequantize_rows(np.zeros(3, np.int64), 1, 1, -1, C.CM_LO, 0)


def test_bitlinear_image_spans(sim, rng):
    from mmfree.hls import vectors as V

    image, (on, onw, ow, cm, ce), _ = V.bitlinear_case(rng, 60, 7)
    u = np.ones(60, np.int64)
    with pytest.raises(ValueError, match=r"w needs bytes \[\d+, \d+\) but the image has \d+ bytes"):
        sim.bitlinear(image, on, onw, ow, cm, ce, u, 700)
    with pytest.raises(ValueError, match="image must be a 1-D uint8"):
        sim.bitlinear(image.astype(np.int8), on, onw, ow, cm, ce, u, 7)


def test_layer_checks_sizes(sim, random_int_model):
    model = random_int_model(0)
    img = layer_image(model, 0)
    x = np.zeros(model.dims.d, np.int64)
    with pytest.raises(ValueError, match=f"x has 61 values but d is {model.dims.d}"):
        sim.layer(img.image, img.offsets, img.consts, np.zeros(61, np.int64), x, model.act_frac, img.d, img.inter)
    with pytest.raises(ValueError, match="16 tensor offsets given, the layer has 17 tensors"):
        sim.layer(img.image, img.offsets[:16], img.consts, x, x, model.act_frac, img.d, img.inter)
    with pytest.raises(ValueError, match=r"needs bytes .* but the image has"):
        sim.layer(img.image[:100], img.offsets, img.consts, x, x, model.act_frac, img.d, img.inter)
    with pytest.raises(ValueError, match="h0 must have shape"):
        ModelRunner(sim, model).run_tokens([1], np.zeros((1, 1)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ModelRunner(sim, model).run_tokens([model.vocab_size])


def test_kernels_check_sizes_themselves(sim):
    """Called directly (no Python checks), the C kernels return their status codes."""
    lib = sim.lib
    w = np.zeros(16, np.uint8)
    codes = np.zeros(8, np.int8)
    acc = np.zeros(4, np.int32)
    P = ctypes.POINTER
    args = (w.ctypes.data_as(P(ctypes.c_uint8)), codes.ctypes.data_as(P(ctypes.c_int8)),
            acc.ctypes.data_as(P(ctypes.c_int32)))
    assert lib.mmfree_csim_ternary_matvec(*args, 0, 5) == 1
    assert lib.mmfree_csim_ternary_matvec(*args, 1, N.MAX_K + 1) == 3
    h = np.zeros(4, np.int32)
    u = np.zeros(4, np.int64)
    olb = np.zeros(4, np.uint32)
    ptr32 = h.ctypes.data_as(P(ctypes.c_int32))
    assert lib.mmfree_csim_mlgru(ptr32, ptr32, ptr32, olb.ctypes.data_as(P(ctypes.c_uint32)), ptr32,
                                 u.ctypes.data_as(P(ctypes.c_int64)), N.SIG_STEPS_LOG2, 4) == 4
    with pytest.raises(MmfreeError, match="status 3"):
        sim._status("mmfree_x", 3)


def test_small_buffers_are_refused(tmp_path):
    """A library sized for d <= 64, inter <= 128 (as `mmfree hls synth` sizes BRAM) refuses larger layers."""
    path, built = C.build_library(max_d=64, max_i=128, cache=tmp_path)
    small = C.CSim(path)
    assert (small.max_d, small.max_i, small.max_kbuf) == (64, 128, 128)
    with pytest.raises(ValueError, match=r"len\(u\)=129 exceeds the library's on-chip buffers \(128\)"):
        small.normalize_input(np.ones(129, np.int64))
    n = np.zeros(200, np.int64)
    rc = small.lib.mmfree_csim_normalize_input(n.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), 200,
                                               n.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                                               n.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))
    assert rc == 2


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(MmfreeError, match="no C\\+\\+ compiler found.*apt-get install g\\+\\+"):
        C.find_compiler()


def test_compile_errors_are_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "CXXFLAGS", C.CXXFLAGS + ["-DMMFREE_SPEC_H"])   # hides the generated header
    with pytest.raises(MmfreeError, match="compiling the HLS kernels for C-simulation failed"):
        C.build_library(max_d=64, max_i=64, cache=tmp_path)
