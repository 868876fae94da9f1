"""Fused kernels behind the float model's modules, each with a plain-torch ``naive`` twin.

=====================================  ==========================================  =====================================
kernel (Triton)                        naive twin (plain torch)                    hook it serves
=====================================  ==========================================  =====================================
``bitlinear.bitlinear``                ``bitlinear.bitlinear_naive``               ``BitLinear.kernel`` (fake quant)
``bitlinear.bitlinear_auto``           ``bitlinear.bitlinear_naive``               the above, backward GEMMs per shape class
``bitlinear.act_quant``                ``bitlinear.act_quant_naive``               (inside the above)
``ifg.ifg`` (i/f/g, one input pass)    ``ifg.ifg_naive``                           ``MLGRU.ifg``
``bitlinear.ternarize``                ``bitlinear.ternarize_naive``               (inside the above)
``hgrn.hgrn`` (seq / chunk scan)       ``hgrn.hgrn_naive``                         ``MLGRU.recurrence``
``hgrn.hgrn_gated`` (seq / chunk)      ``hgrn.hgrn_gated_naive``                   ``MLGRU.mixer`` (when the model has it)
``bitlinear_hw.hw_bitlinear_int``      ``bitlinear_hw.hw_bitlinear_int_naive``     hardware-exact BitLinear (integers)
``bitlinear_hw.hw_quantize``           ``bitlinear_hw.hw_quantize_naive``          (inside the above)
``bitlinear_hw.hw_bitlinear``          ``bitlinear_hw.hw_bitlinear_naive``         ``model.hw_kernels`` (hwexact)
``hgrn.hgrn_hw_int``                   ``hgrn.hgrn_hw_int_naive``                  ``model.hw_kernels`` (hwexact)
=====================================  ==========================================  =====================================

:func:`install` picks the implementation for a device: the Triton kernels on CUDA (when Triton imports),
the model's own torch path elsewhere. The installed BitLinear is ``bitlinear_auto``: its two backward GEMMs
run on cuBLAS or Triton as ``bitlinear.BWD_GEMM_TABLE`` says for the weight's shape class (measured).
This module imports neither torch nor triton at import time, and
``install(..., "auto")`` on a CPU never imports triton.
"""

from __future__ import annotations

from mmfree import MmfreeError

CHOICES = ("auto", "naive", "triton")


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable(device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    import torch

    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install -e '.[gpu]')"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreting():
            return None
        return ("Triton kernels run on CUDA GPUs; on a CPU only in the interpreter (TRITON_INTERPRET=1 set before "
                "triton is imported; slow, meant for tests)")
    return f"no Triton kernels for {device.type} devices"


class HardwareKernels:
    """The hardware-exact kernels for :mod:`mmfree.pymodel.hwexact` (installed as ``model.hw_kernels``).

    ``bitlinear(u_int, n, nw, t, c_m, c_e, surrogate_in, module, frac) -> (out_int, out)``: the integer
    output of one BitLinear (exactly numerics) and its float value ``out_int / 2**frac`` carrying the
    gradient of ``module(surrogate_in)`` (the fused fake-quant BitLinear's backward; its forward product is
    never computed). ``hgrn(s_int, rate_int, h0_int) -> h_int``: the integer MLGRU scan.
    """

    def bitlinear(self, u_int, n, nw, t, c_m, c_e, surrogate_in, module, frac):
        from mmfree.pymodel.kernels.bitlinear_hw import hw_bitlinear

        return hw_bitlinear(u_int, n, nw, t, c_m, c_e, surrogate_in, module.norm.weight, module.weight,
                            module.norm.eps, frac)

    def hgrn(self, s_int, rate_int, h0_int=None):
        from mmfree.pymodel.kernels.hgrn import hgrn_hw_int

        return hgrn_hw_int(s_int, rate_int, h0_int)


def install(model, which: str = "auto", device=None) -> str:
    """Install kernels into ``model``; returns a short note of what was chosen.

    ``which``: ``"triton"`` (an error when Triton cannot run on the device), ``"naive"`` (the model's plain
    torch path), ``"auto"`` (Triton on CUDA when it imports, else naive). Sets every ``BitLinear.kernel``,
    every ``MLGRU.recurrence``, ``MLGRU.mixer`` and ``MLGRU.ifg`` where the model has those hooks, and ``model.hw_kernels``
    (read by the hardware-exact mode where it has that hook). ``device`` defaults to the model's.
    """
    import torch

    if which not in CHOICES:
        raise MmfreeError(f"--kernels must be auto, naive or triton, got {which!r}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    reason = None
    if which == "triton" or (which == "auto" and dev.type == "cuda"):
        reason = triton_unavailable(dev)
        if which == "triton" and reason:
            raise MmfreeError(f"--kernels triton: {reason}; use --kernels naive (or auto)")
    use = reason is None and (which == "triton" or (which == "auto" and dev.type == "cuda"))
    from mmfree.pymodel.model import hgrn_recurrence

    if use:
        from mmfree.pymodel.kernels.bitlinear import bitlinear_auto
        from mmfree.pymodel.kernels.hgrn import hgrn, hgrn_gated
        from mmfree.pymodel.kernels.ifg import ifg
    for m in model.bitlinears().values():
        m.kernel = bitlinear_auto if use else None   # backward GEMMs per shape class
    fused_gates = False
    for layer in model.model.layers:
        attn = layer.attn
        attn.recurrence = hgrn if use else hgrn_recurrence
        if hasattr(attn, "ifg"):
            attn.ifg = ifg if use else None
        if hasattr(attn, "mixer"):
            attn.mixer = hgrn_gated if use else None
            fused_gates = use
    model.hw_kernels = HardwareKernels() if use else None
    if use:
        where = "interpreter" if dev.type == "cpu" else str(dev)
        return (f"triton on {where} (fused BitLinear, MLGRU {'gates + ' if fused_gates else ''}scan)")
    if which == "auto" and reason:
        return f"naive torch (triton unavailable: {reason})"
    return "naive torch"
