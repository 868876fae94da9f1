"""mmfree.pymodel: the numbers.

The float model (PyTorch), the numerics spec and the bit-exact integer reference (numpy; the oracle
every other layer is compared to), weight export/packing, the trigram drafter, training, and the
Triton kernels. Nothing in this package imports from rtl/hls/sim/boards.

Heavy modules (torch) are imported lazily: ``from mmfree.pymodel import IntModel`` never imports torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MMFreeConfig": "mmfree.pymodel.config",
    "MMFreeForCausalLM": "mmfree.pymodel.model",
    "load_model": "mmfree.pymodel.checkpoint",
    "save_model": "mmfree.pymodel.checkpoint",
    "load_tokenizer": "mmfree.pymodel.tokenizer",
    "IntModel": "mmfree.pymodel.intmodel",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmfree.pymodel' has no attribute {name!r}")


__all__ = list(_LAZY)
