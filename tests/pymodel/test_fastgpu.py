"""The GPU decode path (mmfree.pymodel.fastgpu) on the CPU: logits, state and greedy tokens EQUAL to the
integer reference; its errors; the energy CLI's gpu row through it with an injected NVML counter."""

from __future__ import annotations

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.pymodel.fastgpu import TorchIntBackend, TorchIntModel
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend, IntModel, open_int_model


def _same(im, tm, tokens):
    s1, s2 = im.initial_state(), tm.initial_state()
    for t in tokens:
        s1, l1 = im.step(s1, int(t))
        s2, l2 = tm.step(s2, int(t))
        assert np.array_equal(l1, l2) and np.array_equal(s1.h, s2.h)


def test_default_model_exact_and_greedy_equal():
    im, _ = open_int_model("default")
    tm = TorchIntModel(im, device="cpu")
    assert tm.graphs is False
    _same(im, tm, [1, 4095, 0, 77])
    assert generate(TorchIntBackend(tm), [10, 20, 30], 8).tokens == generate(IntBackend(im), [10, 20, 30], 8).tokens


def test_random_image_exact():
    from mmfree.hls.fastcpu import random_image
    from mmfree.pymodel import layout as LY

    im = IntModel(*random_image(LY.Dims(vocab=61, d=72, inter=136, layers=2), seed=2))
    _same(im, TorchIntModel(im), [5, 60, 0])


def test_errors():
    im, _ = open_int_model("default")
    with pytest.raises(MmfreeError, match="CUDA graphs need a CUDA device"):
        TorchIntModel(im, device="cpu", graphs=True)
    with pytest.raises(MmfreeError, match="not usable"):
        TorchIntModel(im, device="nosuchdevice")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TorchIntModel(im).step(im.initial_state(), -1)


def test_gpu_row_through_the_decode_path_with_a_counter():
    """The energy CLI's gpu row, run on the CPU with an NVML-like counter (the lowest layer: no GPU here)."""
    import itertools

    from mmfree.boards.cli_energy import gpu_fast_row

    mj = itertools.count(1_000_000, 40_000)                 # +40 J per read
    row = gpu_fast_row("default", None, 12, counter=lambda: next(mj), device="cpu")
    if row["method"] == "unavailable":                      # the run was shorter than NVML's 1 s minimum window
        assert "shorter than" in row["reason"]
    else:
        assert row["method"] == "measured" and row["joules_per_token"] == pytest.approx(40.0 / 48, rel=1e-9)
    assert "fastgpu" in row["detail"]
