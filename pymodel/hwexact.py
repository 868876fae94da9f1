"""Hardware-exact mode of the float model: the forward pass computes exactly what the integer reference
(and so the hardware) computes, the backward pass flows through the float model's operations.

Every value is carried twice: as the exact integer of the pipeline (torch int64, produced by the very
primitives of :mod:`mmfree.pymodel.numerics`) and as a float surrogate computed by the float model's
own modules. After each operation the surrogate's forward value is replaced by the integer result
(``s + (int_value - s).detach()``), a straight-through estimator per operation. So the forward pass
equals :class:`mmfree.pymodel.intmodel.IntModel` bit for bit, and gradients are those of the float
model evaluated at the hardware's values.

The integer parameters are re-derived from the current float weights at every call (as ``mmfree export``
would derive them), so training in this mode trains exactly the weights the hardware will run.
"""

from __future__ import annotations

import math

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


def _vector(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """:func:`mmfree.pymodel.numerics.vector_from_float` on a float64 device tensor (int32 mantissas, F);
    the same float64 operations (max, log2 of a scalar, exact ldexp, round half to even)."""
    mx = float(v.abs().max()) if v.numel() else 0.0                  # a scalar, not a tensor copy
    if mx == 0.0:
        return torch.zeros(v.shape, dtype=torch.int32, device=v.device), 0
    F = (N.VEC_BITS - 2) - math.floor(math.log2(mx))
    m = torch.round(torch.ldexp(v, torch.tensor(float(F), dtype=torch.float64, device=v.device)))
    if float(m.abs().max()) >= 2 ** (N.VEC_BITS - 1):                 # log2 rounding at an exact power of two
        F -= 1
        m = torch.round(torch.ldexp(v, torch.tensor(float(F), dtype=torch.float64, device=v.device)))
    return m.to(torch.int32), F


def _f64(t: torch.Tensor) -> torch.Tensor:
    """As :class:`mmfree.pymodel.export.StateDictSource` reads a tensor (float32, float64 kept), then float64."""
    t = t.detach()
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32).to(torch.float64)


def _small_vectors(model, cfg, dims) -> tuple[dict, dict, dict]:
    """(int vectors by layout name, their exponents, the pre-norm float64 vector of each BitLinear): the
    vector part of the export's ``_Converter`` with torch ops on the model's device."""
    from mmfree.pymodel.model import lower_bound_table

    m, small, exps, pre = model.model, {}, {}, {}
    lbs = lower_bound_table(_f64(m.lower_bounds)) if cfg.use_lower_bound else [None] * cfg.num_hidden_layers
    for i, layer in enumerate(m.layers):
        q = f"layers.{i}."
        ones_d = torch.ones(cfg.hidden_size, dtype=torch.float64, device=m.embeddings.weight.device)
        one_minus_lb = ones_d if lbs[i] is None else 1.0 - lbs[i]
        small[q + "attn.one_minus_lb"] = torch.clamp(torch.round(one_minus_lb * N.ONE_Q31), 0, N.ONE_Q31).to(torch.int64)
        norms = {"attn_norm": _f64(layer.attn_norm.weight), "attn.g_norm": _f64(layer.attn.g_norm.weight),
                 "mlp_norm": _f64(layer.mlp_norm.weight), "mlp.down_proj": ones_d.new_ones(cfg.intermediate)}
        for k, v in norms.items():
            small[q + k + ".n"], exps[q + k + ".n"] = _vector(v)
        for proj in ("i_proj", "f_proj", "g_proj"):
            pre[q + f"attn.{proj}"] = norms["attn_norm"]
        pre[q + "attn.o_proj"], pre[q + "mlp.gate_proj"] = norms["attn.g_norm"], norms["mlp_norm"]
        pre[q + "mlp.down_proj"] = norms["mlp.down_proj"]
    pre["lm_head"] = _f64(m.norm.weight)
    small["norm.n"], exps["norm.n"] = _vector(pre["lm_head"])
    for bl in LY.bitlinears(dims):
        module = model.lm_head if bl.name == "lm_head" else model.model.get_submodule(bl.name)
        small[bl.nw], exps[bl.nw] = _vector(pre[bl.name] * _f64(module.norm.weight))
    return small, exps, pre


_LUTS: dict = {}


def _luts(device) -> dict[str, torch.Tensor]:
    """The pipeline's lookup tables (constants, not weights), made once per device."""
    if str(device) not in _LUTS:
        _LUTS[str(device)] = {"lut.sigmoid_tail": torch.tensor(N.sigmoid_tail_table(), device=device),
                              "lut.rsqrt": torch.tensor(N.rsqrt_table(), device=device)}
    return _LUTS[str(device)]


def device_int_params(model, formats: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every integer parameter of the pipeline (as :func:`mmfree.pymodel.export.int_params`, bit for bit) as
    torch tensors on the model's device: int8 ternary codes ``[N, K]`` under the ``.w`` names, int32 vectors,
    int64 Q0.31 lower bounds, the int32 embedding, and the per-BitLinear constants. No tensor is copied to the
    host; a few scalars are (each matrix's alpha and each vector's max, for the exponents).

    On CUDA the per-matrix mean |w| is a float32 reduction whose order may differ from the CPU's, so equality
    with a CPU export holds where that mean rounds alike (checked on CPU here; on a GPU, see docs/training.md).
    MmfreeError for an all-zero matrix, as the export."""
    from mmfree import MmfreeError
    from mmfree.pymodel.model import ternary_rows, weight_scale

    cfg, dims = model.config, LY.Dims.of(model.config)
    small, exps, _ = _small_vectors(model, cfg, dims)
    small.update(_luts(model.model.embeddings.weight.device))
    emb = _f64(model.model.embeddings.weight)
    out = {"embed": torch.clamp(torch.round(emb * 2.0 ** formats["res_frac"]), N.INT32_MIN, N.INT32_MAX).to(torch.int32)}
    consts = {}
    for bl in LY.bitlinears(dims):
        module = model.lm_head if bl.name == "lm_head" else model.model.get_submodule(bl.name)
        w = module.weight.detach().float()
        mean = float(w.abs().mean())
        if not math.isfinite(mean):
            raise MmfreeError(f"tensor {bl.name}.weight contains NaN or inf; training diverged: lower --lr")
        if mean == 0.0:
            raise MmfreeError(f"tensor {bl.name}.weight is all zeros: its ternary scale is zero, nothing to export")
        sw = weight_scale(w, torch.float32)
        t = ternary_rows(w, sw).to(torch.int8)
        alpha = float(1.0 / sw)
        F_n, F_nw = exps[bl.n], exps[bl.nw]
        F_out = formats[LY.output_format(bl.name) + "_frac"]
        c_m, c_e = N.constant_from_float(alpha * math.sqrt(bl.K) / N.CODE_MAX * 2.0 ** (F_n - F_nw + F_out - 16))
        consts[bl.name] = {"K": bl.K, "N": bl.N, "alpha": alpha, "F_n": F_n, "F_nw": F_nw, "F_out": F_out,
                           "c_m": c_m, "c_e": c_e, "nonzero_fraction": int(t.count_nonzero()) / (bl.N * bl.K)}
        out[bl.w] = t
    dev = emb.device
    out.update({k: v.to(dev) for k, v in small.items()})
    return {t.name: out[t.name] for t in LY.tensors(dims)}, consts


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
