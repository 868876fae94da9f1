"""The MatMul-free LM (HGRNBit) in plain PyTorch, computing what the released code computes.

One file, readable top to bottom::

    lb = softmax(lower_bounds, 0); lb = cumsum(lb, 0) - lb[0]      # [L, d], lb[0] = 0
    x = embeddings[ids]                                            # [B, T, d]
    for layer i:
        a = RMSNorm(x; attn_norm)
        f = lb[i] + (1 - lb[i]) * sigmoid(BitLinear_f(a))         # forget gate, lower-bounded
        c = SiLU(BitLinear_i(a)) * (1 - f)
        h_t = f_t * h_{t-1} + c_t                                  # MLGRU, elementwise in time
        x = x + BitLinear_o(RMSNorm(BitLinear_g(a); g_norm) * SiLU(h))
        gate, up = split(BitLinear_gate(RMSNorm(x; mlp_norm)), 2)
        x = x + BitLinear_down(SiLU(gate) * up)
    logits = BitLinear_head(RMSNorm(x; norm))

``BitLinear(x) = quant8(RMSNorm(x; own weight)) @ ternary(W).T`` with straight-through estimators
(the official "fake quantization"). Parameter names follow the official state dict, so official
checkpoints load as they are.

Numerics modes (``model.numerics``): ``"fake"`` is the official training/inference arithmetic;
``"hardware"`` runs the forward pass with the integer reference's arithmetic (see
:mod:`mmfree.pymodel.hwexact`), for quantization-aware training on exactly what the hardware computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmfree.pymodel.config import MMFreeConfig

NUMERICS_MODES = ("fake", "hardware")


# ---------------------------------------------------------------------------------------------
# the quantized linear (the official fake quantization, straight-through):
#   activation_quant(y) = round(y * s).clamp(-128, 127) / s with s = 127 / max|y| per token (int8 absmax),
#   weight_quant(w) = round(w / a).clamp(-1, 1) * a with a = mean|w| per tensor (ternary)
# ---------------------------------------------------------------------------------------------
class TernaryLinearSTE(torch.autograd.Function):
    """``activation_quant(y) @ weight_quant(w).T`` computed on the integer codes, straight-through backward.

    Forward: ``(q @ t.T) * (alpha / s)`` with int8 codes ``q = round(y * s)`` and ternary ``t``. The code
    product is exact in float32 (|sum| <= 128 * K < 2**24 for K < 131072), so the result does not depend
    on how the batch is shaped: parallel and token-by-token decoding quantize identically.
    Backward: the gradients of ``F.linear(yq, wq)`` with respect to ``y`` and ``w`` (STE on both rounds).
    """

    @staticmethod
    def forward(ctx, y, w):
        cdt = _compute_dtype(y)
        q, s = activation_codes(y, cdt)
        t, sw = weight_codes(w, cdt)
        out = (q.to(y.dtype) @ t.to(y.dtype).T).to(cdt) / (s * sw)
        ctx.save_for_backward(q, s, t, sw)
        ctx.dtypes = (y.dtype, w.dtype)
        return out.to(y.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, s, t, sw = ctx.saved_tensors
        ydt, wdt = ctx.dtypes
        g = grad.to(ydt)
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_y = g @ (t / sw).to(ydt)
        if ctx.needs_input_grad[1]:
            grad_w = (g.reshape(-1, g.shape[-1]).T @ (q / s).to(ydt).reshape(-1, q.shape[-1])).to(wdt)
        return grad_y, grad_w


def activation_codes(y: torch.Tensor, cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, s): int8 codes ``round(y * s).clamp(-128, 127)`` (as ``cdt``, ``[..., K]``) and s = 127 / max|y| ``[..., 1]``."""
    s = 127.0 / y.detach().abs().amax(dim=-1, keepdim=True).to(cdt).clamp(min=1e-5)
    return (y.detach().to(cdt) * s).round().clamp(-128, 127), s


def weight_scale(w: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """sw = 1 / max(mean|w|, 1e-5) as a 0-d ``cdt`` tensor (one scale per matrix)."""
    return 1.0 / w.detach().abs().mean().to(cdt).clamp(min=1e-5)


def ternary_rows(w: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """Ternary codes ``round(w * sw).clamp(-1, 1)`` in sw's dtype; elementwise, so any block of rows may go alone."""
    return (w.detach().to(sw.dtype) * sw).round().clamp(-1, 1)


def weight_codes(w: torch.Tensor, cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, sw): ternary codes ``round(w * sw).clamp(-1, 1)`` (as ``cdt``, ``[N, K]``) and sw = 1 / mean|w| (0-d)."""
    sw = weight_scale(w, cdt)
    return ternary_rows(w, sw), sw


def ternary_linear_cached(y: torch.Tensor, t8: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """Inference-only :class:`TernaryLinearSTE` forward on cached int8 codes ``t8 [N, K]`` and scale ``sw``.

    Bit-identical to it for float32 and float64 ``y``: both compute the same integer accumulator exactly
    (here int8 x int8 -> int32 on CPU, ``torch._int_mm``), then the same ``acc / (s * sw)``. One pass over
    the int8 weights per call; no gradient.
    """
    cdt = _compute_dtype(y)
    q, s = activation_codes(y, cdt)
    if y.device.type == "cpu":
        q8 = q.to(torch.int8).reshape(-1, q.shape[-1])
        acc = torch._int_mm(q8, t8.T).reshape(*q.shape[:-1], t8.shape[0]).to(cdt)
    else:
        acc = (q.to(y.dtype) @ t8.to(y.dtype).T).to(cdt)
    return (acc / (s * sw)).to(y.dtype)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (used by exactness tests); every other dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32 (or float64)."""
    dtype = x.dtype
    x32 = x.to(_compute_dtype(x))
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(x32.dtype)).to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class BitLinear(nn.Module):
    """``y = activation_quant(RMSNorm(x)) @ weight_quant(W).T``; weight ``[out, in]``, no bias.

    ``kernel`` may hold a fused implementation with the same contract (``kernel(x, norm_w, w, eps)``),
    installed by :func:`mmfree.pymodel.kernels.install`; ``None`` uses the plain torch path.

    Inference cache: in eval mode with autograd off, the ternary codes (int8) and scale of the weight are
    computed once per weight version and every call is one pass over them (:func:`ternary_linear_cached`,
    bit-identical logits). The cache key is the weight's in-place version counter, storage, dtype and
    device, so ``load_state_dict``, an optimizer step, any in-place edit or ``.to()`` invalidates it;
    ``.train()`` drops it.
    """

    #: False re-ternarises the weight on every call (the path before the cache; bench/reference_speed.py)
    cache_codes = True

    def __init__(self, in_features: int, out_features: int, eps: float):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.norm = RMSNorm(in_features, eps)
        self.kernel = None
        self._codes = None    # (key, int8 codes [out, in], sw) of one weight version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x, self.norm.weight, self.weight, self.norm.eps)
        y = self.norm(x)
        if (self.cache_codes and not self.training and not torch.is_grad_enabled()
                and y.dtype in (torch.float32, torch.float64)):
            return ternary_linear_cached(y, *self.cached_codes(_compute_dtype(y)))
        return TernaryLinearSTE.apply(y, self.weight)

    def cached_codes(self, cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes ``[out, in]``, sw) of the current weight for compute dtype ``cdt``, computed once per version."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device, cdt)
        if self._codes is None or self._codes[0] != key:
            self._codes = None                   # free the old copy before making the new one
            with torch.no_grad():
                t, sw = weight_codes(w, cdt)
            self._codes = (key, t.to(torch.int8).contiguous(), sw)
        return self._codes[1], self._codes[2]

    def train(self, mode: bool = True):
        self._codes = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


# ---------------------------------------------------------------------------------------------
# the MLGRU recurrence h_t = f_t * h_{t-1} + c_t
# ---------------------------------------------------------------------------------------------
def hgrn_recurrence_naive(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None):
    """Sequential reference. f, c: ``[B, T, D]``; h0: ``[B, D]`` or None. Returns (h ``[B, T, D]``, h_T)."""
    B, T, D = f.shape
    h = f.new_zeros(B, D) if h0 is None else h0
    out = []
    for t in range(T):
        h = f[:, t] * h + c[:, t]
        out.append(h)
    return torch.stack(out, 1), h


class _HGRNRecurrence(torch.autograd.Function):
    """Sequential forward and a hand-written sequential backward (no per-step autograd nodes).

    Backward: with ``g_t = dL/dh_t`` accumulated from the end, ``g_t += f_{t+1} g_{t+1}``,
    ``dc_t = g_t``, ``df_t = g_t h_{t-1}``, ``dh_0 = f_1 g_1``.
    """

    @staticmethod
    def forward(ctx, f, c, h0):
        B, T, D = f.shape
        out = torch.empty_like(c)
        h = h0 if h0 is not None else c.new_zeros(B, D)
        for t in range(T):
            h = f[:, t] * h + c[:, t]
            out[:, t] = h
        ctx.save_for_backward(f, out, h0 if h0 is not None else c.new_zeros(B, D))
        ctx.has_h0 = h0 is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        f, out, h0 = ctx.saved_tensors
        T = f.shape[1]
        df = torch.empty_like(f)
        dc = torch.empty_like(f)
        g = torch.zeros_like(h0)
        for t in range(T - 1, -1, -1):
            g = grad_out[:, t] + g
            dc[:, t] = g
            df[:, t] = g * (out[:, t - 1] if t > 0 else h0)
            g = g * f[:, t]
        return df, dc, (g if ctx.has_h0 else None)


def hgrn_recurrence(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None):
    """Same values as :func:`hgrn_recurrence_naive`, with a fast hand-written backward."""
    out = _HGRNRecurrence.apply(f, c, h0)
    return out, out[:, -1]


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------
class MLGRU(nn.Module):
    """The token mixer (``attn`` in the official names)."""

    def __init__(self, cfg: MMFreeConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.bitlinear_norm_eps
        self.i_proj = BitLinear(d, d, eps)
        self.f_proj = BitLinear(d, d, eps)
        self.g_proj = BitLinear(d, d, eps)
        self.g_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.o_proj = BitLinear(d, d, eps)
        self.recurrence = hgrn_recurrence
        #: optional fused "gates + scan" kernel (i_pre, f_pre, lower_bound, h0) -> (h, h_last), set by
        #: mmfree.pymodel.kernels.install; None uses gates() and the recurrence
        self.mixer = None
        #: optional fused i/f/g projections (a, norm weights [3, d], weights [3, d, d], eps) -> [3, ..., d]
        #: (one pass over ``a``; mmfree.pymodel.kernels.ifg), set by install; None calls the three BitLinears
        self.ifg = None

    def gates(self, a: torch.Tensor, lower_bound: torch.Tensor | None, pre=None):
        """(f, c) from ``a``, or from the projections ``pre = (i_pre, f_pre, g_pre)`` when given."""
        f = torch.sigmoid(self.f_proj(a) if pre is None else pre[1])
        if lower_bound is not None:
            f = lower_bound + (1 - lower_bound) * f
        c = F.silu(self.i_proj(a) if pre is None else pre[0]) * (1 - f)
        return f, c

    def output(self, a: torch.Tensor, h: torch.Tensor, pre=None) -> torch.Tensor:
        return self.o_proj(self.g_norm(self.g_proj(a) if pre is None else pre[2]) * F.silu(h))

    def projections(self, a: torch.Tensor):
        """(i_pre, f_pre, g_pre) through the fused ``ifg`` kernel (one pass over ``a``), or None without it."""
        if self.ifg is None or a.shape[1] == 1:
            return None
        ps = (self.i_proj, self.f_proj, self.g_proj)
        return self.ifg(a, torch.stack([p.norm.weight for p in ps]), torch.stack([p.weight for p in ps]),
                        self.i_proj.norm.eps).unbind(0)

    def forward(self, a, lower_bound=None, h0=None):
        pre = self.projections(a)
        if self.mixer is not None and a.shape[1] > 1:
            i_pre, f_pre = (self.i_proj(a), self.f_proj(a)) if pre is None else pre[:2]
            h, h_last = self.mixer(i_pre, f_pre, lower_bound, h0)
            return self.output(a, h, pre), h_last
        f, c = self.gates(a, lower_bound, pre)
        if a.shape[1] == 1:                                   # decoding: one step of the recurrence
            cdt = _compute_dtype(c)
            h = c.to(cdt) if h0 is None else f.to(cdt) * h0.unsqueeze(1) + c.to(cdt)
            h = h.to(c.dtype)
            return self.output(a, h), h[:, -1]
        # the sequential update is bit-identical to `step`, so parallel and token-by-token decoding
        # quantize identically
        h, h_last = self.recurrence(f, c, h0)
        return self.output(a, h, pre), h_last


class GLU(nn.Module):
    """The channel mixer (``mlp``): ``down(SiLU(gate) * up)`` with ``gate_proj`` holding [gate; up]."""

    def __init__(self, cfg: MMFreeConfig):
        super().__init__()
        d, i, eps = cfg.hidden_size, cfg.intermediate, cfg.bitlinear_norm_eps
        self.gate_proj = BitLinear(d, 2 * i, eps)
        self.down_proj = BitLinear(i, d, eps)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(m).chunk(2, -1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: MMFreeConfig, idx: int):
        super().__init__()
        self.idx = idx
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = MLGRU(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GLU(cfg)

    def forward(self, x, lower_bound=None, h0=None):
        o, h_last = self.attn(self.attn_norm(x), lower_bound, h0)
        x = x + o
        x = x + self.mlp(self.mlp_norm(x))
        return x, h_last


class Backbone(nn.Module):
    """``model.*`` in the official names: embeddings, lower bounds, layers, final norm."""

    def __init__(self, cfg: MMFreeConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.use_lower_bound:
            self.lower_bounds = nn.Parameter(torch.zeros(cfg.num_hidden_layers, cfg.hidden_size))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def lower_bound_table(lower_bounds: torch.Tensor) -> list[torch.Tensor | None]:
    """``lb = softmax(lower_bounds, 0); lb = cumsum(lb) - lb[0]`` per layer (``[L, d]`` -> L x ``[d]``); layer 0: None."""
    lb = lower_bounds.to(_compute_dtype(lower_bounds)).softmax(0)
    lb = lb.cumsum(0) - lb[0]
    return [None if i == 0 else lb[i] for i in range(lower_bounds.shape[0])]


@dataclass
class MMFreeState:
    """Recurrent decoding state: one ``h`` of shape ``[B, d]`` per layer (float32)."""

    h: list[torch.Tensor]

    def clone(self) -> MMFreeState:
        return MMFreeState([t.clone() for t in self.h])


class MMFreeForCausalLM(nn.Module):
    """The whole model. ``forward(input_ids [B, T]) -> logits [B, T, V]``; ``step`` decodes one token."""

    def __init__(self, cfg: MMFreeConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = BitLinear(cfg.hidden_size, cfg.vocab_size, cfg.bitlinear_norm_eps)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embeddings.weight
        self.numerics = "fake"
        self.reset_parameters()

    # -- initialisation as in the released code --------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        std = cfg.initializer_range
        nn.init.normal_(self.model.embeddings.weight, 0.0, std)
        for layer in self.model.layers:
            for proj in (layer.attn.i_proj, layer.attn.f_proj, layer.attn.g_proj, layer.attn.o_proj):
                nn.init.xavier_uniform_(proj.weight, gain=2 ** -2.5)
            nn.init.normal_(layer.mlp.gate_proj.weight, 0.0, std)
            nn.init.normal_(layer.mlp.down_proj.weight, 0.0, std / math.sqrt(2 * cfg.num_hidden_layers))
        if not cfg.tie_word_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        for mod in self.modules():
            if isinstance(mod, RMSNorm):
                nn.init.ones_(mod.weight)
        if cfg.use_lower_bound:
            nn.init.zeros_(self.model.lower_bounds)

    # -- helpers -----------------------------------------------------------------------------------
    def lower_bounds(self) -> list[torch.Tensor | None]:
        """Per-layer forget-gate lower bound ``[d]`` (``None`` where the layer has none)."""
        if not self.config.use_lower_bound:
            return [None] * self.config.num_hidden_layers
        return lower_bound_table(self.model.lower_bounds)

    def check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= self.config.vocab_size)].unique()[:8].tolist()
            raise ValueError(f"token ids {bad} are outside the vocabulary [0, {self.config.vocab_size}); "
                             "was the prompt encoded with this model's tokenizer?")

    def initial_state(self, batch_size: int = 1) -> MMFreeState:
        p = self.model.embeddings.weight
        return MMFreeState([p.new_zeros(batch_size, self.config.hidden_size, dtype=_compute_dtype(p))
                            for _ in range(self.config.num_hidden_layers)])

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                state: MMFreeState | None = None, return_state: bool = False):
        """Logits ``[B, T, V]`` for ``input_ids [B, T]``.

        With ``labels [B, T]`` returns ``(logits, loss)`` where loss is the mean next-token cross entropy
        (position t predicts ``labels[:, t + 1]``; label -100 is ignored). With ``state`` the recurrence
        starts from it; ``return_state=True`` also returns the state after the last position.
        """
        if self.numerics == "hardware":
            from mmfree.pymodel.hwexact import hardware_forward

            logits, new_state = hardware_forward(self, input_ids, state)
        else:
            self.check_ids(input_ids)
            x = self.model.embeddings(input_ids)                        # [B, T, d]
            hs = []
            for layer, lb in zip(self.model.layers, self.lower_bounds()):
                h0 = None if state is None else state.h[layer.idx]
                x, h_last = layer(x, lb, h0)
                hs.append(h_last.to(_compute_dtype(h_last)))
            logits = self.lm_head(self.model.norm(x))                 # [B, T, V]
            new_state = MMFreeState(hs)
        out = (logits,)
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
            out += (loss,)
        if return_state:
            out += (new_state,)
        return out[0] if len(out) == 1 else out

    @torch.no_grad()
    def step(self, state: MMFreeState, token_ids: torch.Tensor) -> tuple[torch.Tensor, MMFreeState]:
        """Decode one token per sequence: ``token_ids [B]`` -> (logits ``[B, V]``, new state)."""
        logits, new_state = self.forward(token_ids.view(-1, 1), state=state, return_state=True)
        return logits[:, 0], new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def bitlinears(self) -> dict[str, BitLinear]:
        """Every BitLinear by its state-dict prefix (``model.layers.0.attn.i_proj`` ... ``lm_head``)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, BitLinear)}
