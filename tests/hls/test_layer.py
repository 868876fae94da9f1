"""Whole decoder layers (and the lm_head BitLinear) under C-simulation against IntModel.forward, tap by
tap: random models of several shapes, saturating residuals and recurrent states, and the default model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from mmfree.hls import spec as SP
from mmfree.hls.harness import ModelRunner, layer_image
from mmfree.pymodel import numerics as N


def _compare_forward(sim, model, tokens, h0=None):
    h0 = model.initial_state().h if h0 is None else h0
    taps: dict = {}
    hs, logits = model.forward(h0, tokens, taps=taps)
    got, ghs = ModelRunner(sim, model).run_tokens(tokens, h0)
    assert set(got) == set(taps)
    for name, want in taps.items():
        assert_array_equal(got[name], want, err_msg=name)
    assert_array_equal(ghs, hs)
    assert_array_equal(got["logits"], logits)
    return taps


@pytest.mark.parametrize("cfg", [
    dict(),                                                      # d=60, inter=84
    dict(hidden_size=63, intermediate_size=1000, num_hidden_layers=1),
    dict(hidden_size=5, intermediate_size=7, vocab_size=3),
    dict(hidden_size=80, intermediate_size=81, num_hidden_layers=3),
], ids=["60x84", "63x1000", "5x7", "80x81x3"])
def test_random_model_layers_bit_identical(sim, random_int_model, cfg):
    model = random_int_model(1, **cfg)
    tokens = [t % model.vocab_size for t in (0, 5, 2, 5)]
    _compare_forward(sim, model, tokens)


def test_state_carried_from_any_h0(sim, random_int_model, rng):
    model = random_int_model(2)
    h0 = rng.integers(N.INT32_MIN, N.INT32_MAX, size=model.initial_state().h.shape, endpoint=True)
    h0[:, :4] = [N.INT32_MIN, N.INT32_MAX, 0, -1]
    _compare_forward(sim, model, [1, 2, 3], h0)


def _patched_export(src: Path, dst: Path, rows: dict[int, np.ndarray]) -> Path:
    """A copy of an export whose embedding rows ``rows`` are replaced (checksums are not updated)."""
    dst.mkdir()
    mf = json.loads((src / "manifest.json").read_text())
    blob = np.fromfile(src / "weights.bin", dtype=np.uint8)
    t = mf["tensors"]["embed"]
    table = blob[t["offset"]:t["offset"] + t["nbytes"]].view(t["dtype"]).reshape(t["shape"])
    for tok, row in rows.items():
        table[tok] = row
    blob.tofile(dst / "weights.bin")
    (dst / "manifest.json").write_text(json.dumps(mf))
    return dst


def test_saturating_residual_and_state(sim, random_export, tmp_path, rng):
    """Embeddings at the int32 ends drive the residual adds, the BitLinear outputs and h into saturation."""
    from mmfree.pymodel.intmodel import IntModel

    src = random_export(3)
    d = IntModel.load(src).dims.d
    lo, hi = N.INT32_MIN, N.INT32_MAX
    rows = {0: np.where(np.arange(d) % 2, hi, lo), 1: np.full(d, hi), 2: np.full(d, lo),
            3: rng.choice([lo, hi, 0, 1, -1], size=d)}
    model = IntModel.load(_patched_export(src, tmp_path / "sat", rows), verify_checksums=False)
    h0 = np.where(rng.random(model.initial_state().h.shape) < 0.5, lo, hi)
    taps = _compare_forward(sim, model, [0, 1, 2, 3, 0], h0)
    outs = np.concatenate([taps[f"layers.{i}.out"].ravel() for i in range(model.dims.layers)])
    assert (outs == hi).any() and (outs == lo).any(), "the residual stream never saturated"


def test_layer_taps_without_tap_buffer(sim, random_int_model):
    model = random_int_model(4)
    img = layer_image(model, 1)
    x = model.embed(np.array([3]))[0]
    h = model.initial_state().h[1]
    x1, h1, taps = sim.layer(img.image, img.offsets, img.consts, x, h, model.act_frac, img.d, img.inter)
    x2, h2, none = sim.layer(img.image, img.offsets, img.consts, x, h, model.act_frac, img.d, img.inter, taps=False)
    assert none is None and set(taps) == {n for n, _ in SP.LAYER_TAPS}
    assert_array_equal(x1, x2)
    assert_array_equal(h1, h2)


def test_default_model_bit_identical(sim):
    """The embedded default model: four tokens through every layer and the lm_head."""
    from mmfree.pymodel.intmodel import open_int_model

    model, _ = open_int_model("default")
    tokens = [1, 100 % model.vocab_size, 7, 1]
    _compare_forward(sim, model, tokens)
