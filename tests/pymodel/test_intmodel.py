"""Export + the integer reference: bit-exact against the hardware-exact float mode, verify == steps,
and every bad image refused with its reason."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmfree import MmfreeError
from mmfree.pymodel import numerics as N
from mmfree.pymodel.export import export_model
from mmfree.pymodel.generate import TorchBackend, generate
from mmfree.pymodel.intmodel import ImageError, IntBackend, IntModel

from .helpers import random_model

CONFIGS = [
    dict(hidden_size=60, num_hidden_layers=1, vocab_size=97, intermediate_size=84),
    dict(hidden_size=64, num_hidden_layers=3, vocab_size=131, intermediate_size=100, use_lower_bound=False),
    dict(hidden_size=100, num_hidden_layers=2, vocab_size=61, intermediate_size=None, hidden_ratio=2),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for i, cfg in enumerate(CONFIGS):
        m = random_model(10 + i, **cfg)
        d = export_model(m, tmp_path_factory.mktemp("img") / f"m{i}")
        out[i] = (m, d)
    return out


@pytest.mark.parametrize("which", range(len(CONFIGS)))
def test_hardware_float_mode_equals_int_reference(exported, which):
    model, d = exported[which]
    im = IntModel.load(d)
    ids = np.random.default_rng(which).integers(0, model.config.vocab_size, 23)
    _, logits = im.forward(im.initial_state().h, ids)
    model.numerics = "hardware"
    try:
        with torch.no_grad():
            hw = model(torch.tensor(ids)[None])[0].numpy()
    finally:
        model.numerics = "fake"
    np.testing.assert_array_equal(np.round(hw * 2**im.act_frac).astype(np.int64), logits)
    assert np.all(hw * 2**im.act_frac == np.round(hw * 2**im.act_frac))  # the float values are exactly the integers


@pytest.mark.parametrize("which", range(len(CONFIGS)))
def test_greedy_generation_int_equals_hardware_float(exported, which):
    model, d = exported[which]
    im = IntModel.load(d)
    prompt = [1, 5, 7, 3]
    a = generate(IntBackend(im), prompt, 20).tokens
    model.numerics = "hardware"
    try:
        b = generate(TorchBackend(model), prompt, 20).tokens
    finally:
        model.numerics = "fake"
    assert a == b


def test_verify_equals_sequential_steps(exported):
    model, d = exported[1]
    im = IntModel.load(d)
    st = im.initial_state()
    st, _ = im.prefill(st, [3, 4, 5])
    toks = [7, 1, 9, 2, 2, 8]
    states, logits = im.verify(st, toks)
    cur = st
    for j, t in enumerate(toks):
        cur, lg = im.step(cur, t)
        np.testing.assert_array_equal(lg, logits[j])
        np.testing.assert_array_equal(cur.h, states[j].h)


def test_tree_verify_equals_each_path(exported):
    model, d = exported[0]
    im = IntModel.load(d)
    st = im.initial_state()
    #        0
    #       / \
    #      1   2
    #      |
    #      3
    toks, parents = [5, 6, 7, 8], [-1, 0, 0, 1]
    states, logits = im.verify(st, toks, parents=parents)
    for path in ([0, 1, 3], [0, 2]):
        s2, lg = im.verify(st, [toks[j] for j in path])
        for pos, j in enumerate(path):
            np.testing.assert_array_equal(lg[pos], logits[j])
            np.testing.assert_array_equal(s2[pos].h, states[j].h)
    with pytest.raises(ValueError, match="parents"):
        im.verify(st, toks, parents=[-1, 1, 0, 1])


def test_int_reference_is_close_to_float_model(exported):
    model, d = exported[2]
    im = IntModel.load(d)
    ids = np.random.default_rng(5).integers(0, model.config.vocab_size, 40)
    _, logits = im.forward(im.initial_state().h, ids)
    with torch.no_grad():
        fl = model(torch.tensor(ids)[None])[0].numpy()
    assert np.mean(np.argmax(logits, -1) == np.argmax(fl, -1)) >= 0.9


def test_intmodel_does_not_import_torch(exported):
    _, d = exported[0]
    code = ("import sys; from mmfree.pymodel.intmodel import IntModel; m = IntModel.load(sys.argv[1]); "
            "m.step(m.initial_state(), 3); assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_export_packs_at_1_6_bits(exported):
    _, d = exported[0]
    m = json.loads((d / "manifest.json").read_text())
    assert m["bits_per_weight"] <= 1.6
    im = IntModel.load(d)
    # d = 60 is a multiple of 5: every byte of a row's payload holds five trits (1.6 bits/weight);
    # the rest of the row is alignment padding to 16 bytes
    w = im.tensor("layers.0.attn.i_proj.w")
    assert w.shape == (60, 16)
    np.testing.assert_array_equal(N.unpack_ternary(w[:, :12], 60), N.unpack_ternary(w, 60))
    assert np.all(w[:, 12:] == 121)  # five zero trits


# ---- bad input --------------------------------------------------------------------------------------
def _copy(d, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(d, dst)
    return dst


def test_corrupted_weights_refused(exported, tmp_path):
    d = _copy(exported[0][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    raw = bytearray((d / "weights.bin").read_bytes())
    raw[m["tensors"]["layers.0.attn.f_proj.w"]["offset"] + 3] ^= 1
    (d / "weights.bin").write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="checksum.*layers.0.attn.f_proj.w"):
        IntModel.load(d)


@pytest.mark.parametrize("field,value,needle", [
    ("spec_version", 999, "numerics spec version 999"),
    ("format_version", 0, "image format version 0"),
    ("format", "something-else", "format"),
])
def test_version_mismatch_refused(exported, tmp_path, field, value, needle):
    d = _copy(exported[0][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m[field] = value
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match=needle):
        IntModel.load(d)


def test_shape_mismatch_refused(exported, tmp_path):
    d = _copy(exported[0][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["tensors"]["norm.n"]["shape"] = [7]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match="norm.n: expected int32\\[60\\]"):
        IntModel.load(d)


def test_truncated_weights_refused(exported, tmp_path):
    d = _copy(exported[0][1], tmp_path)
    (d / "weights.bin").write_bytes((d / "weights.bin").read_bytes()[:-64])
    with pytest.raises(ImageError, match="incomplete"):
        IntModel.load(d)


def test_not_an_export_refused(tmp_path):
    with pytest.raises(ImageError, match="mmfree export"):
        IntModel.load(tmp_path)


def test_nan_weights_refused_at_export(tmp_path):
    m = random_model(3, **CONFIGS[0])
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight[2, 3] = float("nan")
    with pytest.raises(MmfreeError, match="model.layers.0.mlp.down_proj.weight contains NaN"):
        export_model(m, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_zero_scale_refused_at_export(tmp_path):
    m = random_model(3, **CONFIGS[0])
    with torch.no_grad():
        m.model.layers[0].attn.g_proj.weight.zero_()
    with pytest.raises(MmfreeError, match="model.layers.0.attn.g_proj.weight is all zeros"):
        export_model(m, tmp_path / "x")


def test_out_of_range_tokens_refused(exported):
    im = IntModel.load(exported[0][1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        im.step(im.initial_state(), 97)


def test_export_cli_json(exported, tmp_path, capsys):
    from mmfree.cli import main
    from mmfree.pymodel.checkpoint import save_model

    model, _ = exported[0]
    save_model(model, tmp_path / "ckpt")
    assert main(["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "img"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bits_per_weight"] == 1.6 and s["spec_version"] == N.SPEC_VERSION
    assert IntModel.load(tmp_path / "img").vocab_size == 97
