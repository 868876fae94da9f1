"""Kernel tests run the Triton kernels on the CPU interpreter when no GPU is present.

Triton reads TRITON_INTERPRET when a kernel is decorated (when a kernel module is imported), so it is set
here, before the test modules of this folder import them. On a CUDA machine the kernels run natively.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
