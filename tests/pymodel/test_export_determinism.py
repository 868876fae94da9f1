"""Export is a pure function of the checkpoint (issue 27, item 1): every derived quantity is computed with
operations whose result does not depend on torch's thread count, deterministic mode, BLAS or device, and the
hardware-exact training mode runs the very same conversion."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmfree.pymodel import export as EX
from mmfree.pymodel import numerics as N

from .helpers import random_checkpoint, random_model
from .test_export_stream import DEFAULT_IMAGE_SHA256

#: ``image_sha256`` of the default model's manifest (covers weights_sha256 and every c_m/c_e). It moved when
#: mean|w| became exact: torch's float32 mean had rounded 12 of the 25 matrices' scales one ulp away from the
#: exact mean, so their c_m moved by 1 LSB (weights.bin, i.e. every ternary code, stayed the same).
DEFAULT_MANIFEST_SHA256 = "2222ddae7e86d8f468b644a559f834323955bd5d9f1ece88c009cfebbb9054c6"


def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def test_absmean_is_exact_and_order_free():
    """absmean is mean|w| to ~2**-30 relative (so it rounds to the float32 of math.fsum's mean here), and the
    same bits for a permuted matrix and for 1 and 4 torch threads."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5632, 256, generator=g) * 0.02
    exact = math.fsum(np.abs(w.double().numpy()).ravel().tolist()) / w.numel()
    before = _threads(1)
    try:
        one = EX.absmean(w)
        torch.set_num_threads(4)
        four = EX.absmean(w)
    finally:
        torch.set_num_threads(before)
    assert one == four == EX.absmean(w.flatten()[torch.randperm(w.numel(), generator=g)])
    assert abs(one - exact) <= exact * 2.0 ** -30
    assert np.float32(one) == np.float32(exact)
    assert EX.absmean(torch.zeros(3, 4)) == 0.0 and EX.absmean(torch.zeros(0)) == 0.0


def test_exp_from_basic_operations():
    x = torch.cat([-torch.logspace(-12, 2.85, 4000, dtype=torch.float64), torch.tensor([0.0, -1e-300])])
    got = EX._exp_nonpositive(x).tolist()
    for xi, gi in zip(x.tolist(), got):
        assert gi == pytest.approx(math.exp(xi), rel=2 ** -50, abs=0), xi
    assert EX._exp_nonpositive(torch.tensor([-800.0, -1e6], dtype=torch.float64)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("seed", range(3))
def test_lower_bound_codes_equal_the_float_models_softmax(seed):
    """The fixed-order Q0.31 ``1 - lb`` codes equal those of the float model's own torch softmax/cumsum."""
    from mmfree.pymodel.model import lower_bound_table

    lb = torch.randn(6, 300, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * (seed + 1)
    got = EX.one_minus_lb_codes(lb)
    ref = lower_bound_table(lb)
    assert got[0].tolist() == [N.ONE_Q31] * 300
    for i in range(1, 6):
        np.testing.assert_array_equal(got[i].numpy(), N.q31_from_float(1.0 - ref[i].numpy()))


def test_conversion_is_thread_count_free():
    """The conversion itself (not pinned to one thread any more) gives the same tensors with 1 and 4 threads."""
    model = random_model(5, hidden_size=256, intermediate_size=2816, num_hidden_layers=1, vocab_size=300)
    EX.formats_of(model)
    before = _threads(1)
    try:
        a, ca = EX.converted(model)
        torch.set_num_threads(4)
        b, cb = EX.converted(model)
    finally:
        torch.set_num_threads(before)
    assert ca == cb and list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


_EXPORT_SCRIPT = r"""
import hashlib, json, sys, torch
from mmfree.pymodel.export import export_checkpoint
torch.set_num_threads(int(sys.argv[1]))
out = {}
for det in [bool(int(c)) for c in sys.argv[4]]:
    torch.use_deterministic_algorithms(det)
    for name, src in (("default", "default"), ("ck", sys.argv[2])):
        d = export_checkpoint(src, f"{sys.argv[3]}/{name}-{det}")
        m = json.loads((d / "manifest.json").read_text())
        out[name] = out.get(name, []) + [[hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest(),
                                          m["image_sha256"]]]
print(json.dumps(out))
"""


def _exports(tmp_path, runs) -> dict[str, list]:
    """Digests (weights.bin sha256, image_sha256) of the default model and of a model whose torch float32
    mean|w| differs between thread counts ([5632, 256] gate_proj), exported in fresh processes, one per
    (threads, deterministic modes) in ``runs``."""
    ck = random_checkpoint(tmp_path / "ck", seed=11, hidden_size=256, intermediate_size=2816, num_hidden_layers=1,
                           vocab_size=300)
    digests: dict[str, list] = {"default": [], "ck": []}
    for n, modes in runs:
        r = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(n), str(ck), str(tmp_path / f"t{n}"), modes],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
            digests[k] += v
    return digests


def _assert_identical(digests) -> None:
    assert all(d == digests["ck"][0] for d in digests["ck"])
    assert all(d == [DEFAULT_IMAGE_SHA256, DEFAULT_MANIFEST_SHA256] for d in digests["default"])


def test_image_bytes_independent_of_threads_and_deterministic_mode(tmp_path):
    """1 thread with deterministic algorithms off and 4 threads with them on give byte-identical images."""
    _assert_identical(_exports(tmp_path, [(1, "0"), (4, "1")]))


@pytest.mark.slow
def test_image_bytes_independent_of_threads_and_deterministic_mode_all(tmp_path):
    """torch 1, 2 and 4 threads, each with deterministic algorithms off and on: byte-identical images."""
    _assert_identical(_exports(tmp_path, [(1, "01"), (2, "01"), (4, "01")]))
