"""The fast CPU decoder (mmfree.hls.fastcpu) against the integer reference: EXACT equality of the GEMV, of
logits and state on the default model and random models, and of greedy tokens; its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.hls import fastcpu as FC
from mmfree.pymodel import layout as LY
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend, IntModel, open_int_model


@pytest.fixture(scope="module", params=[False, True], ids=["simd", "scalar"])
def lib(request):
    return FC.Library(scalar=request.param)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 127), (5, 128), (33, 129), (64, 640), (300, 1030)])
def test_gemv_exact(lib, n, k):
    rng = np.random.default_rng(n * 1000 + k)
    t = rng.integers(-1, 2, (n, k))
    codes = rng.integers(-128, 128, (3, k))
    codes[0] = 127                                     # the largest sums: every product at the extreme
    codes[1] = -128
    for threads in (1, 2):
        assert np.array_equal(lib.gemv(FC.pack_2bit(t), codes, threads), codes @ t.T)
    if lib.simd:
        assert FC.Library(scalar=True).simd is False


def test_pack_2bit_refuses():
    with pytest.raises(ValueError, match="2-D"):
        FC.pack_2bit(np.zeros(5))
    with pytest.raises(ValueError, match="outside"):
        FC.pack_2bit(np.full((2, 3), 2))


def _same_decode(ref: IntModel, fast: FC.FastIntModel, tokens) -> None:
    s1, s2 = ref.initial_state(), fast.initial_state()
    for t in tokens:
        s1, l1 = ref.step(s1, int(t))
        s2, l2 = fast.step(s2, int(t))
        assert np.array_equal(l1, l2)
        assert np.array_equal(s1.h, s2.h)


def test_default_model_exact_and_greedy_equal():
    im, _ = open_int_model("default")
    fast = FC.FastIntModel(im)
    _same_decode(im, fast, [1, 5, 77, 300, 2, 9, 4095, 0])
    prompt = [10, 20, 30, 40]
    want = generate(IntBackend(im), prompt, 24).tokens      # what `mmfree generate --backend int` decodes
    got = generate(FC.FastBackend(fast), prompt, 24).tokens
    assert got == want


@pytest.mark.parametrize("cfg", [dict(), dict(hidden_size=130, intermediate_size=260, vocab_size=301)])
def test_random_models_exact(random_int_model, cfg):
    im = random_int_model(3, **cfg)
    _same_decode(im, FC.FastIntModel(im, threads=2), np.random.default_rng(1).integers(0, im.vocab_size, 12))
    _same_decode(im, FC.FastIntModel(im, scalar=True), [0, 1, 2])


def test_random_image_is_a_valid_image():
    dims = LY.Dims(vocab=50, d=70, inter=130, layers=2)
    im = IntModel(*FC.random_image(dims, seed=4))
    assert im.dims == dims
    _same_decode(im, FC.FastIntModel(im), [3, 49, 0, 7])
    t = np.concatenate([np.asarray(im.tensor(s.w)).reshape(-1) for s in im.bitlinear_specs.values()])
    assert t.max() < 243                                  # valid packed bytes only


def test_bad_inputs():
    im, _ = open_int_model("default")
    for bad in (0, -1, 1.5):
        with pytest.raises(MmfreeError, match="threads"):
            FC.FastIntModel(im, threads=bad)
    fast = FC.FastIntModel(im)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fast.step(fast.initial_state(), im.vocab_size)


def test_greedy_tokens_equal_mmfree_generate_backend_int():
    """The CLI users compare with: `mmfree generate --backend int` (greedy) decodes the same tokens."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mmfree", "generate", "--backend", "int", "--prompt", "def main(",
                          "--max-new-tokens", "16", "--json"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    want = json.loads(out.stdout)
    im, _ = open_int_model("default")
    got = generate(FC.FastBackend(FC.FastIntModel(im)), want["prompt_ids"], 16).tokens
    assert got == want["tokens"]
