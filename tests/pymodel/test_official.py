"""The float model against an independent re-statement of the released code's computation (issue 18).

``released_forward`` restates, in plain float32 torch and without any mmfree code, what
``HGRNBitForCausalLM`` computes on a GPU: every projection is a ``FusedBitLinear`` whose fused
RMSNorm + int8 quantizer runs with the kernel's default ``eps = 1e-6`` (``rstd = 1 / sqrt(mean(x^2) + eps)``,
``y = x * rstd * w``, ``scale = 127 / max(max|y|, 1e-5)``, ``round(y * scale).clamp(-128, 127) / scale``),
then ``F.linear`` with ``round(W / mean|W|).clamp(-1, 1) * mean|W|``. The checkpoints are written the way
the released code writes them: ``config.json`` has no mmfree keys.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from mmfree.pymodel.checkpoint import load_model

from .helpers import random_checkpoint

RELEASED_BITLINEAR_EPS = 1e-6   # layer_norm_linear_quant_fn(..., eps=1e-6) in mmfreelm/ops/fusedbitnet.py


def released_forward(sd: dict, cfg: dict, ids: torch.Tensor, beps: float = RELEASED_BITLINEAR_EPS) -> torch.Tensor:
    """Logits ``[T, V]`` for ``ids [T]``, float32, parallel over time (the released code's arithmetic)."""
    L, eps = cfg["num_hidden_layers"], cfg.get("rms_norm_eps", 1e-6)
    sd = {k: v.float() for k, v in sd.items()}

    def rms(x, w, e):
        return x * (1 / torch.sqrt((x * x).mean(-1, keepdim=True) + e)) * w

    def fused_bitlinear(x, prefix):
        y = rms(x, sd[prefix + ".norm.weight"], beps)
        scale = 127.0 / y.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        y = (y * scale).round().clamp(-128, 127) / scale
        w = sd[prefix + ".weight"]
        ws = 1.0 / w.abs().mean().clamp(min=1e-5)
        return F.linear(y, (w * ws).round().clamp(-1, 1) / ws)

    lb = torch.softmax(sd["model.lower_bounds"], 0)
    lb = torch.cumsum(lb, 0) - lb[0]
    x = sd["model.embeddings.weight"][ids]
    for i in range(L):
        p = f"model.layers.{i}."
        a = rms(x, sd[p + "attn_norm.weight"], eps)
        f = torch.sigmoid(fused_bitlinear(a, p + "attn.f_proj"))
        if i > 0:
            f = lb[i] + (1 - lb[i]) * f
        c = F.silu(fused_bitlinear(a, p + "attn.i_proj")) * (1 - f)
        h, hs = torch.zeros_like(c[0]), []
        for t in range(len(ids)):
            h = f[t] * h + c[t]
            hs.append(h)
        o = rms(fused_bitlinear(a, p + "attn.g_proj"), sd[p + "attn.g_norm.weight"], eps) * F.silu(torch.stack(hs))
        x = x + fused_bitlinear(o, p + "attn.o_proj")
        gate, up = fused_bitlinear(rms(x, sd[p + "mlp_norm.weight"], eps), p + "mlp.gate_proj").chunk(2, -1)
        x = x + fused_bitlinear(F.silu(gate) * up, p + "mlp.down_proj")
    return fused_bitlinear(rms(x, sd["model.norm.weight"], eps), "lm_head")


def official_checkpoint(path, layers: int, seed: int):
    """A random checkpoint whose config.json carries only the released HGRNBitConfig keys."""
    random_checkpoint(path, seed=seed, hidden_size=128, num_hidden_layers=layers, vocab_size=256,
                      intermediate_size=352)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("bitlinear_norm_eps")
    cfg.pop("mmfree_formats", None)
    (path / "config.json").write_text(json.dumps(cfg))
    return cfg


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_float_model_matches_released_computation(tmp_path, layers):
    cfg = official_checkpoint(tmp_path / "m", layers, seed=10 + layers)
    model = load_model(tmp_path / "m")
    assert model.config.bitlinear_norm_eps == RELEASED_BITLINEAR_EPS
    ids = torch.randint(0, cfg["vocab_size"], (96,), generator=torch.Generator().manual_seed(layers))
    sd = model.state_dict()
    with torch.no_grad():
        ours = model(ids[None])[0]
        released = released_forward(sd, cfg, ids)
        released_1e8 = released_forward(sd, cfg, ids, beps=1e-8)
    assert (ours - released).abs().median() <= 1e-4
    # the test tells the two eps apart: the old 1e-8 is measurably further from the released computation
    assert (ours - released_1e8).abs().median() > 10 * (ours - released).abs().median()


def test_stated_bitlinear_eps_is_kept(tmp_path):
    """A checkpoint that states its BitLinear eps (the embedded default model: 1e-8) keeps it."""
    official_checkpoint(tmp_path / "m", 1, seed=0)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["bitlinear_norm_eps"] = 1e-8
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    model = load_model(tmp_path / "m")
    assert {m.norm.eps for m in model.bitlinears().values()} == {1e-8}
    assert load_model("default").config.bitlinear_norm_eps == 1e-8
