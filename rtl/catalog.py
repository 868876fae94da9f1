"""Every compute unit by name, with the parameters the accelerator uses: one list for the Verilog
writer, the resource estimate, the simulation harness and the tests.

Importing this module imports Amaranth (it is not imported by ``mmfree --help``).
"""

from __future__ import annotations

from collections.abc import Callable

from mmfree.rtl import activation as A
from mmfree.rtl import quantize as Q
from mmfree.rtl.matvec import TernaryMatVec

#: name -> (factory, one-line role). Stream units have ports ``i``/``o``.
VECTOR_UNITS: dict[str, tuple[Callable, str]] = {
    "max_abs": (Q.MaxAbs, "quantizer pass 1: max|u| and the normalising shift (one result per vector)"),
    "quant_stats": (Q.QuantStats, "quantizer passes 2 and 3: p, z per element; P, max|z|, sz (pass 2) and S (pass 3) per vector"),
    "codes_from_p": (Q.CodesFromP, "quantizer pass 3: int8 codes from p reduced to 32 bits "
                                  "(reciprocal once per vector, then 1/cycle)"),
    "reciprocal": (Q.Reciprocal, "code reciprocal R, k, sp of a vector's P "
                                "(serial division; one per slot and token in the datapath)"),
    "codes": (Q.Codes, "quantizer pass 3 per element given the reciprocal: int8 codes (one per token in the datapath)"),
    "output_multiplier": (Q.OutputMultiplier, "per-token (M, shift) from P, S, sz and the BitLinear constant "
                                              "(rsqrt: table + Newton step)"),
    "dequantize": (Q.Dequantize, "BitLinear output: sat(round(acc * M >> shift))"),
    "sigmoid": (A.Sigmoid, "sigmoid in Q0.31 (tail table + interpolation)"),
    "silu": (A.Silu, "SiLU in ACT"),
    "forget_rate": (A.ForgetRate, "MLGRU gate (1 - lb) * sigmoid(-f) in Q0.31"),
    "hgrn_update": (A.HgrnUpdate, "MLGRU step h + g * (s - h), saturating"),
    "mlgru_update": (A.MlgruUpdate, "the whole recurrence: hgrn_update(h, silu(i), forget_rate(f))"),
    "gated_product": (A.GatedProduct, "a * silu(b) at full precision (o_proj / down_proj input)"),
    "residual_add": (A.ResidualAdd, "residual add, int32 saturating"),
    "argmax": (A.Argmax, "greedy token: argmax, lowest index on ties (one result per vector)"),
}

#: The pipelined variants (``pipelined=True``: shorter register-to-register paths, more latency; see
#: docs/rtl.md "Timing"): name -> (factory, the unit it is a variant of). Same ports and numbers as that
#: unit; the datapath instantiates the defaults, whose latencies the cycle model (sim/perf.py) is fitted to.
PIPELINED: dict[str, tuple[Callable, str]] = {
    f"{base}_p": ((lambda f=f: f(pipelined=True)), base)
    for base, (f, _) in VECTOR_UNITS.items()
    if base in ("sigmoid", "silu", "forget_rate", "hgrn_update", "mlgru_update", "gated_product",
                "output_multiplier", "dequantize", "codes", "codes_from_p", "reciprocal")
}
#: name -> zero-argument factory of every pipelined variant.
PIPELINED_VARIANTS: dict[str, Callable] = {name: f for name, (f, _) in PIPELINED.items()}


def matvec(lanes: int = 80, tokens: int = 1, **kw) -> TernaryMatVec:
    return TernaryMatVec(lanes=lanes, tokens=tokens, **kw)


def matvec_name(lanes: int, tokens: int) -> str:
    return f"matvec_l{lanes}_k{tokens}"


def all_units(lanes: int = 80, tokens: int = 1, **matvec_kw) -> dict[str, Callable]:
    """name -> zero-argument factory for every unit, the matvec engine with the given parameters first."""
    units = {matvec_name(lanes, tokens): lambda: matvec(lanes, tokens, **matvec_kw)}
    units.update({name: f for name, (f, _) in VECTOR_UNITS.items()})
    return units
