"""Hardware-exact mode of the float model: the forward pass computes exactly what the integer reference
(and so the hardware) computes, the backward pass flows through the float model's operations.

Every value is carried twice: as the exact integer of the pipeline (torch int64, produced by the very
primitives of :mod:`mmfree.pymodel.numerics`) and as a float surrogate computed by the float model's
own modules. After each operation the surrogate's forward value is replaced by the integer result
(``s + (int_value - s).detach()``), a straight-through estimator per operation. So the forward pass
equals :class:`mmfree.pymodel.intmodel.IntModel` bit for bit, and gradients are those of the float
model evaluated at the hardware's values.

The integer parameters are re-derived from the current float weights at every call by the export's own
conversion on the model's device (:func:`device_int_params`), whose results do not depend on device or
thread count, so training in this mode trains exactly the weights the hardware will run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N


def _ste(surrogate: torch.Tensor, exact_int: torch.Tensor, frac: int) -> torch.Tensor:
    """Forward value ``exact_int / 2**frac`` (in float64, exact), gradient of ``surrogate``."""
    exact = exact_int.to(torch.float64) / float(1 << frac)
    if not surrogate.requires_grad:
        return exact
    return surrogate + (exact - surrogate.to(torch.float64)).detach().to(surrogate.dtype)


class _Params:
    """Integer parameters of the current weights, as torch tensors on the model's device (see
    :func:`device_int_params`): ternary codes as float32 under ``t`` (for the exact GEMM), the rest int64."""

    def __init__(self, model):
        from mmfree.pymodel.export import formats_of

        fm = formats_of(model)
        self.res_frac, self.act_frac = fm["res_frac"], fm["act_frac"]
        arrays, self.consts = device_int_params(model, fm)
        self.t = {n: a.to(torch.float32) for n, a in arrays.items() if n.endswith(".w")}
        self.v = {n: a.to(torch.int64) for n, a in arrays.items() if not n.endswith(".w")}


def _luts(device) -> dict[str, torch.Tensor]:
    """The pipeline's lookup tables (constants, not weights), made once per device."""
    from mmfree.pymodel.export import _lut

    return {name: _lut(name, device) for name in ("lut.sigmoid_tail", "lut.rsqrt")}


def device_int_params(model, formats: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every integer parameter of the pipeline as torch tensors on the model's device, by layout name: int8
    ternary codes ``[N, K]`` under the ``.w`` names, int32 vectors, int64 Q0.31 lower bounds, the int32
    embedding, and the per-BitLinear constants. It is the export's own conversion
    (:func:`mmfree.pymodel.export.converted`, one implementation) run on the device: exact integer sums,
    elementwise IEEE operations and fixed-order float64 sums, so the bits equal the CPU export's on any device
    and thread count. No tensor is copied to the host; a few scalars are (each matrix's max|w| and exact
    |w| sum, each vector's max). ``formats`` must be the model's stored formats. MmfreeError for an all-zero
    matrix or a non-finite weight, as the export."""
    from mmfree.pymodel.export import converted, formats_of

    if formats != formats_of(model):
        raise ValueError(f"formats {formats} are not the model's stored formats {formats_of(model)}")
    return converted(model, model.model.embeddings.weight.device)


def params_of(model) -> _Params:
    """The integer parameters of the model's current weights (re-derived only after the weights change)."""
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = getattr(model, "_hw_params_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, _Params(model))
        model._hw_params_cache = cached
    return cached[1]


def hardware_forward(model, input_ids: torch.Tensor, state=None):
    """Logits ``[B, T, V]`` (float64 values equal to the integer logits / 2**act_frac) and the new state.

    ``state.h`` holds the integer h / 2**act_frac (float64, exact). Token ids out of range raise ``ValueError``.
    """
    from mmfree.pymodel.model import MMFreeState

    model.check_ids(input_ids)
    cfg = model.config
    dims = LY.Dims.of(cfg)
    P = params_of(model)
    specs = {b.name: b for b in LY.bitlinears(dims)}
    B, T = input_ids.shape
    I = dims.inter
    layers = model.model.layers
    lbs = model.lower_bounds()
    RF, AF = P.res_frac, P.act_frac
    hk = getattr(model, "hw_kernels", None)   # fused integer kernels (mmfree.pymodel.kernels), same results

    def bitlinear(name, module, u_int, surrogate_in):
        spec = specs[name]
        c = P.consts[name]
        frac = RF if LY.output_format(name) == "res" else AF
        if hk is not None:
            return hk.bitlinear(u_int, P.v[spec.n], P.v[spec.nw], P.t[spec.w], c["c_m"], c["c_e"], surrogate_in,
                                module, frac)
        codes, Pm, S, sz = N.quantize(u_int, P.v[spec.n], P.v[spec.nw])
        with torch.autocast(device_type=codes.device.type, enabled=False):
            acc = (codes.to(torch.float32) @ P.t[spec.w].T).to(torch.int64)     # exact: |acc| < 2**24
        M, shift = N.output_multiplier(Pm, S, sz, c["c_m"], c["c_e"])
        out_int = N.dequantize(acc, M, shift)
        return out_int, _ste(module(surrogate_in), out_int, frac)

    # embedding (int codes; the surrogate is the float embedding)
    ids = input_ids
    x_int = P.v["embed"][ids]                                               # [B, T, d], Q(res_frac)
    x = _ste(model.model.embeddings(ids), x_int, RF)
    new_h = []
    for li, (layer, lb) in enumerate(zip(layers, lbs)):
        p = f"layers.{li}."
        attn = layer.attn
        a_sur = layer.attn_norm(x)
        outs = {}
        for proj in ("i_proj", "f_proj", "g_proj"):
            outs[proj] = bitlinear(p + f"attn.{proj}", getattr(attn, proj), x_int, a_sur)
        (i_int, i_f), (f_int, f_f), (g_int, g_f) = outs["i_proj"], outs["f_proj"], outs["g_proj"]
        # gates: g_rate = 1 - f (Q0.31), s = SiLU(i) (ACT)
        rate_int = N.forget_rate(f_int, P.v[p + "attn.one_minus_lb"], AF)
        s_int = N.silu(i_int, AF)
        f_sur = torch.sigmoid(f_f)
        if lb is not None:
            f_sur = lb + (1 - lb) * f_sur
        rate_sur = 1 - f_sur
        rate = rate_sur + (rate_int.to(torch.float64) / N.ONE_Q31 - rate_sur.to(torch.float64)).detach().to(rate_sur.dtype) \
            if rate_sur.requires_grad else rate_int.to(torch.float64) / N.ONE_Q31
        s = _ste(F.silu(i_f), s_int, AF)
        # recurrence, integer: h <- h + g (s - h), sequentially in time
        h0_int = None if state is None else torch.round(state.h[li].to(torch.float64) * float(1 << AF)).to(torch.int64)
        if hk is not None:
            h_int = hk.hgrn(s_int, rate_int, h0_int)
        else:
            h_int = torch.empty_like(s_int)
            h = torch.zeros_like(s_int[:, 0]) if h0_int is None else h0_int
            for t in range(T):
                h = N.hgrn_update(h, s_int[:, t], rate_int[:, t])
                h_int[:, t] = h
        h0_sur = None if state is None else state.h[li].to(s.dtype)
        h_sur, _ = attn.recurrence((1 - rate).to(s.dtype), (rate * s).to(s.dtype), h0_sur)
        hh = _ste(h_sur, h_int, AF)
        new_h.append(h_int[:, -1].to(torch.float64) / float(1 << AF))
        # output gate and o_proj: u = g * SiLU(h) (Q32 product), pre-norm g_norm
        sh_int = N.silu(h_int, AF)
        u_int = N.mul_act(g_int, sh_int)
        o_sur_in = attn.g_norm(g_f) * F.silu(hh)
        o_int, o = bitlinear(p + "attn.o_proj", attn.o_proj, u_int, o_sur_in)
        x_int = N.saturate(x_int + o_int)
        x = _ste(x + o, x_int, RF)
        # channel mixer
        gu_int, gu = bitlinear(p + "mlp.gate_proj", layer.mlp.gate_proj, x_int, layer.mlp_norm(x))
        gate_int, up_int = gu_int[..., :I], gu_int[..., I:]
        dn_in_int = N.mul_act(N.silu(gate_int, AF), up_int)
        dn_int, dn = bitlinear(p + "mlp.down_proj", layer.mlp.down_proj, dn_in_int, F.silu(gu[..., :I]) * gu[..., I:])
        x_int = N.saturate(x_int + dn_int)
        x = _ste(x + dn, x_int, RF)
    logits_int, logits = bitlinear("lm_head", model.lm_head, x_int, model.model.norm(x))
    return logits, MMFreeState(new_h)
