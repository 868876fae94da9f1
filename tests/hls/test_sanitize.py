"""The kernels under UndefinedBehaviorSanitizer: no signed overflow, no shift out of range, no table read
out of bounds on the check vectors and on whole layers (the ranges the C++ comments claim)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import ctypes
    import numpy as np
    from mmfree.hls import checks
    from mmfree.hls.csim import CSim
    from mmfree.pymodel.intmodel import IntModel

    sim = CSim(sanitize=True)
    if sys.argv[1] == "control":
        x = np.array([2**62], dtype=np.int64)
        out = np.zeros(1, np.int64)
        P = ctypes.POINTER(ctypes.c_int64)
        sim.lib.mmfree_csim_silu(x.ctypes.data_as(P), out.ctypes.data_as(P), 1, 16)   # bypasses the range check
    else:
        cs = checks.kernel_checks(sim, seed=7, n=20000)
        model = IntModel.load(sys.argv[1])
        cs += checks.model_checks(sim, model, [1, 2, 3])
        assert all(c.ok for c in cs), [c.name for c in cs if not c.ok]
    print("finished")
""")


def _run(arg):
    return subprocess.run([sys.executable, "-c", SCRIPT, arg], capture_output=True, text=True, timeout=600)


def test_no_undefined_behaviour(random_export):
    res = _run(str(random_export(0, hidden_size=63, intermediate_size=1000)))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "finished" in res.stdout
    assert "runtime error" not in res.stderr, res.stderr[-4000:]


def test_sanitizer_is_active():
    """Positive control: an input outside the checked ranges overflows, and UBSan says so."""
    res = _run("control")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "runtime error: signed integer overflow" in res.stderr
