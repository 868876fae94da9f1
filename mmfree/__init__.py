"""mmfree: hardware/software co-design for ternary MatMul-free language models.

The import namespace is one package assembled from the repository's top-level folders:
``mmfree.pymodel`` (float model, integer reference, export), ``mmfree.rtl`` (Amaranth gateware),
``mmfree.host`` (the transport-agnostic host driver), ``mmfree.sim`` (cocotb/Verilator benches, emulator,
performance model), ``mmfree.boards`` (PYNQ boards, Vivado build, PYNQ glue), ``mmfree.hls`` (C++ HLS kernels).
"""

__version__ = "0.1.0"


class MmfreeError(Exception):
    """A user-facing error: the message names the problem and the fix. The CLI prints it without a traceback."""


class MmfreeWarning(UserWarning):
    """Warnings issued by mmfree itself (the test suite turns them into errors)."""


__all__ = ["__version__", "MmfreeError", "MmfreeWarning"]
