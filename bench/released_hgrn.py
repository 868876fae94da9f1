"""The released ``HGRNBitForCausalLM`` (``ridgerchu/matmulfreellm``, ``mmfreelm``) restated for the training
benchmark: the baseline ``bench/gpu_train.py`` runs side by side with mmfree's step.

``mmfreelm`` is not on PyPI and does not install from this project's package sources, so this is an exact
re-statement of its training forward pass, op for op, from its source (``mmfreelm/layers/hgrn_bit.py``,
``mmfreelm/ops/bitnet.py``, ``mmfreelm/models/hgrn_bit/modeling_hgrn_bit.py``; see
/work/shared/official-model.md), with the same parameter names (a mmfree checkpoint loads as is):

* ``FusedBitLinear`` (``mmfreelm.ops.fusedbitnet.FusedBitLinear``, what ``HGRNBitAttention`` and the MLP
  build): RMSNorm with eps 1e-6 (its forward calls ``layer_norm_linear_quant_fn`` without ``eps``, so the
  kernel's default 1e-6 applies; the module's declared ``RMSNorm(eps=1e-8)`` is only used by the plain
  ``BitLinear``: /work/shared/official-model.md), ``activation_quant`` (per token, ``127 / max|x|``, round,
  clamp [-128, 127], dequantised)
  and ``weight_quant`` (``1 / mean|w|``, round, clamp [-1, 1], dequantised), both straight-through, then
  ``F.linear`` in the autocast dtype: the float GEMM, no integer kernel;
* ``HGRNBitAttention``: ``i, f = i_proj(x), sigmoid(f_proj(x))``, ``f = lb + (1 - lb) f`` after layer 0,
  ``i = silu(i) (1 - f)``, ``h_t = f_t h_{t-1} + i_t`` (``fused_recurrent_hgrn``), ``o_proj(RMSNorm(g_proj(x))
  * silu(h))`` (``FusedRMSNormSwishGate``);
* the block (pre-norm RMSNorms, residuals), the GLU MLP (``gate_proj`` to ``2I``, ``silu(gate) * up``,
  ``down_proj``), the final RMSNorm and the ternary ``lm_head``.

Ops (:func:`released_ops`): on a GPU with ``fla-core`` importable, fla's Triton kernels (``fla.modules.RMSNorm``,
``fla.ops.hgrn.fused_recurrent_hgrn`` with ``g = log f`` as fla's own HGRN layer calls it), as the released
code runs its (older, vendored) fla kernels; elsewhere plain torch (the same arithmetic; the CPU check in
``tests/pymodel/test_bench_gpu_train.py`` compares it with mmfree's float model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def released_ops(device) -> dict:
    """{"name", "rmsnorm": (x, weight, eps) -> y, "hgrn": (x, f) -> h}: fla's kernels on a CUDA device
    where fla-core imports, else plain torch."""
    if torch.device(device).type == "cuda":
        try:
            from fla.modules.layernorm import rms_norm as fla_rms_norm
            from fla.ops.hgrn import fused_recurrent_hgrn

            return {"name": "fla kernels (fla-core)",
                    "rmsnorm": lambda x, w, eps: fla_rms_norm(x, w, None, eps=eps),
                    "hgrn": lambda x, f: fused_recurrent_hgrn(x, f.log())[0]}
        except Exception as exc:                     # not installed, or an API change: say so, run torch
            reason = f"{type(exc).__name__}: {exc}"
            return dict(_TORCH_OPS, name=f"plain torch (fla unavailable: {reason[:120]})")
    return dict(_TORCH_OPS)


def _rms_norm(x, w, eps):
    x32 = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w.to(x32.dtype)).to(x.dtype)


def _hgrn(x, f):
    h, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = f[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, 1)


_TORCH_OPS = {"name": "plain torch", "rmsnorm": _rms_norm, "hgrn": _hgrn}


def activation_quant(x):
    scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


def weight_quant(w):
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * scale).round().clamp(-1, 1) / scale


#: The eps the released fused BitLinear kernel actually uses (``layer_norm_linear_quant_fn``'s default).
FUSED_NORM_EPS = 1e-6


class _Norm(nn.Module):
    def __init__(self, d: int, eps: float, ops: dict):
        super().__init__()
        self.weight, self.eps, self.ops = nn.Parameter(torch.ones(d)), eps, ops

    def forward(self, x):
        return self.ops["rmsnorm"](x, self.weight, self.eps)


class BitLinear(nn.Linear):
    """``mmfreelm.ops.fusedbitnet.FusedBitLinear``: RMSNorm (eps 1e-6, the fused kernel's default), straight-through
    activation and weight quantisation, F.linear."""

    def __init__(self, k: int, n: int, ops: dict):
        super().__init__(k, n, bias=False)
        self.norm = _Norm(k, FUSED_NORM_EPS, ops)

    def forward(self, x):
        x = self.norm(x)
        xq = x + (activation_quant(x) - x).detach()
        wq = self.weight + (weight_quant(self.weight) - self.weight).detach()
        return F.linear(xq, wq)


class Attention(nn.Module):
    def __init__(self, d: int, eps: float, idx: int, ops: dict):
        super().__init__()
        self.i_proj, self.f_proj, self.g_proj, self.o_proj = (BitLinear(d, d, ops) for _ in range(4))
        self.g_norm, self.idx, self.ops = _Norm(d, eps, ops), idx, ops

    def forward(self, x, lb):
        i, f = self.i_proj(x), self.f_proj(x).sigmoid()
        if lb is not None and self.idx > 0:
            f = lb + (1 - lb) * f
        h = self.ops["hgrn"](F.silu(i) * (1 - f), f)
        return self.o_proj(self.g_norm(self.g_proj(x)) * F.silu(h))


class MLP(nn.Module):
    def __init__(self, d: int, inter: int, ops: dict):
        super().__init__()
        self.gate_proj, self.down_proj = BitLinear(d, 2 * inter, ops), BitLinear(inter, d, ops)

    def forward(self, x):
        gate, up = self.gate_proj(x).chunk(2, -1)
        return self.down_proj(F.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, cfg, idx: int, ops: dict):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.attn_norm, self.mlp_norm = _Norm(d, eps, ops), _Norm(d, eps, ops)
        self.attn, self.mlp = Attention(d, eps, idx, ops), MLP(d, cfg.intermediate, ops)

    def forward(self, x, lb):
        x = x + self.attn(self.attn_norm(x), lb)
        return x + self.mlp(self.mlp_norm(x))


class _Backbone(nn.Module):
    def __init__(self, cfg, ops: dict):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, i, ops) for i in range(cfg.num_hidden_layers))
        self.norm = _Norm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.lower_bounds = nn.Parameter(torch.zeros(cfg.num_hidden_layers, cfg.hidden_size))


class ReleasedHGRNBitForCausalLM(nn.Module):
    """``forward(ids [B, T]) -> logits [B, T, V]`` as the released model trains (config: an ``MMFreeConfig``;
    ``use_lower_bound`` true, no short convolution, one head: the released checkpoints' settings)."""

    def __init__(self, cfg, device=None):
        super().__init__()
        self.config, self.ops = cfg, released_ops(device or "cpu")
        self.model = _Backbone(cfg, self.ops)
        self.lm_head = BitLinear(cfg.hidden_size, cfg.vocab_size, self.ops)

    def forward(self, ids):
        m = self.model
        lb = m.lower_bounds.softmax(0)
        lb = lb.cumsum(0) - lb[0]
        x = m.embeddings(ids)
        for i, layer in enumerate(m.layers):
            x = layer(x, lb[i] if i > 0 else None)
        return self.lm_head(m.norm(x))
