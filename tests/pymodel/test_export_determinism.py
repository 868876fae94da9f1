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
from .test_export_stream import DEFAULT_IMAGE_SHA256, DEFAULT_MANIFEST_SHA256


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
    """The conversion itself (not pinned to one thread any more) gives the same tensors with 1 and 4 threads,
    on matrices whose torch float32 mean|w| moves with the thread count on this machine class."""
    model = random_model(11, hidden_size=1024, intermediate_size=2816, num_hidden_layers=1, vocab_size=300)
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
    for name, src in (("default", "default"), ("ck", sys.argv[2]))[1 - int(sys.argv[5]):]:
        d = export_checkpoint(src, f"{sys.argv[3]}/{name}-{det}")
        m = json.loads((d / "manifest.json").read_text())
        out[name] = out.get(name, []) + [[hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest(),
                                          m["image_sha256"]]]
print(json.dumps(out))
"""


def _exports(tmp_path, runs, default: bool) -> dict[str, list]:
    """Digests (weights.bin sha256, image_sha256) of the default model and of a d = 1024 model in whose
    matrices torch's float32 mean|w| differs between 1, 2 and 4 threads (5 of its 7 matrices on this
    machine class: the old derivation depended on the thread count there), exported in fresh processes,
    one per (threads, deterministic modes) in ``runs``; the default model only if ``default``."""
    ck = random_checkpoint(tmp_path / "ck", seed=11, hidden_size=1024, intermediate_size=2816, num_hidden_layers=1,
                           vocab_size=300)
    digests: dict[str, list] = {"default": [], "ck": []}
    for n, modes in runs:
        r = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(n), str(ck), str(tmp_path / f"t{n}"), modes,
                            str(int(default))],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
            digests[k] += v
    return digests


def _assert_identical(digests) -> None:
    assert len(digests["ck"]) >= 2 and all(d == digests["ck"][0] for d in digests["ck"])
    assert all(d == [DEFAULT_IMAGE_SHA256, DEFAULT_MANIFEST_SHA256] for d in digests["default"])


def test_image_bytes_independent_of_threads_and_deterministic_mode(tmp_path):
    """This process with 1 thread and deterministic algorithms off, and a fresh one with 4 threads and them
    on, give byte-identical images (the default model's digests: in-process in test_export_stream.py, across
    processes in the @slow test)."""
    import hashlib

    from mmfree.pymodel.export import export_checkpoint

    digests = _exports(tmp_path, [(4, "1")], default=False)
    before = _threads(1)
    try:
        d = export_checkpoint(str(tmp_path / "ck"), tmp_path / "here")
    finally:
        torch.set_num_threads(before)
    m = json.loads((d / "manifest.json").read_text())
    digests["ck"].append([hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest(), m["image_sha256"]])
    _assert_identical(digests)


@pytest.mark.slow
def test_image_bytes_independent_of_threads_and_deterministic_mode_all(tmp_path):
    """torch 1, 2 and 4 threads, each with deterministic algorithms off and on: byte-identical images."""
    digests = _exports(tmp_path, [(1, "01"), (2, "01"), (4, "01")], default=True)
    assert len(digests["default"]) == 6
    _assert_identical(digests)
