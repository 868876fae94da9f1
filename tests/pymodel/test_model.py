"""The float model computes what the released code computes (issue: float model)."""

import json

import pytest
import torch
import torch.nn.functional as F

from mmfree import MmfreeError
from mmfree.pymodel.checkpoint import load_model, save_model
from mmfree.pymodel.model import hgrn_recurrence, hgrn_recurrence_naive

from .helpers import random_checkpoint, random_model

CONFIGS = [
    dict(hidden_size=60, num_hidden_layers=1, vocab_size=97, intermediate_size=84),
    dict(hidden_size=60, num_hidden_layers=3, vocab_size=97, intermediate_size=84, use_lower_bound=False),
    dict(hidden_size=100, num_hidden_layers=3, vocab_size=131, intermediate_size=None, hidden_ratio=2),
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=64, intermediate_size=80),
]


def naive_reference(sd: dict, cfg: dict, ids: list[int]) -> torch.Tensor:
    """Independent per-token implementation written from the equations (official-model.md), in float64."""
    d = cfg["hidden_size"]
    L = cfg["num_hidden_layers"]
    eps, beps = 1e-6, 1e-6   # the fused BitLinear of the released code uses its kernel's default 1e-6

    sd = {k: v.double() for k, v in sd.items()}

    def rms(x, w, e):
        return x / torch.sqrt((x * x).mean() + e) * w

    def bitlinear(x, prefix):
        w = sd[prefix + ".weight"]
        y = rms(x, sd[prefix + ".norm.weight"], beps)
        s = 127.0 / max(float(y.abs().max()), 1e-5)
        yq = torch.clamp(torch.round(y * s), -128, 127) / s
        a = max(float(w.abs().mean()), 1e-5)
        wq = torch.clamp(torch.round(w / a), -1, 1) * a
        return wq @ yq

    lb = None
    if cfg.get("use_lower_bound", True):
        lb = torch.softmax(sd["model.lower_bounds"], 0)
        lb = torch.cumsum(lb, 0) - lb[0]
    h = [torch.zeros(d, dtype=torch.float64) for _ in range(L)]
    out = []
    for tok in ids:
        x = sd["model.embeddings.weight"][tok]
        for i in range(L):
            p = f"model.layers.{i}."
            a = rms(x, sd[p + "attn_norm.weight"], eps)
            f = torch.sigmoid(bitlinear(a, p + "attn.f_proj"))
            if lb is not None and i > 0:
                f = lb[i] + (1 - lb[i]) * f
            c = F.silu(bitlinear(a, p + "attn.i_proj")) * (1 - f)
            h[i] = f * h[i] + c
            g = bitlinear(a, p + "attn.g_proj")
            o = rms(g, sd[p + "attn.g_norm.weight"], eps) * F.silu(h[i])
            x = x + bitlinear(o, p + "attn.o_proj")
            m = rms(x, sd[p + "mlp_norm.weight"], eps)
            gu = bitlinear(m, p + "mlp.gate_proj")
            gate, up = gu[: len(gu) // 2], gu[len(gu) // 2:]
            x = x + bitlinear(F.silu(gate) * up, p + "mlp.down_proj")
        x = rms(x, sd["model.norm.weight"], eps)
        out.append(bitlinear(x, "lm_head"))
    return torch.stack(out)


@pytest.mark.parametrize("cfg", CONFIGS,
                         ids=lambda c: f"d{c['hidden_size']}-L{c['num_hidden_layers']}-lb{int(c.get('use_lower_bound', True))}")
def test_parallel_step_and_naive_agree(tmp_path, cfg):
    ckpt = random_checkpoint(tmp_path / "m", seed=1, **cfg)
    model = load_model(ckpt)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (2, 37), generator=g)
    with torch.no_grad():
        par = model(ids)
        state = model.initial_state(2)
        steps = []
        for t in range(ids.shape[1]):
            logit, state = model.step(state, ids[:, t])
            steps.append(logit)
        steps = torch.stack(steps, 1)
    assert par.shape == (2, 37, cfg["vocab_size"])
    assert (par - steps).abs().max() <= 1e-4
    # An independent implementation rounds differently in the last ulp, and a quantizer turns a
    # last-ulp difference at a rounding boundary into a 1/127 step. Compared in float64 such flips
    # practically never happen, so the equations are checked tightly; fp32 parallel vs step above
    # is bit-identical by construction.
    sd = {k: v for k, v in model.state_dict().items()}
    naive = naive_reference(sd, cfg, ids[0].tolist())
    with torch.no_grad():
        par64 = model.double()(ids[:1])[0]
    assert (par64 - naive).abs().max() <= 1e-4
    assert (par[0].double() - naive).abs().max() <= 5e-2  # fp32 vs fp64: same logits up to rare flips


@pytest.mark.parametrize("with_h0", [False, True])
def test_recurrence_backward_matches_autograd(with_h0):
    g = torch.Generator().manual_seed(3)
    f = (torch.rand(3, 63, 60, generator=g, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    c = torch.randn(3, 63, 60, generator=g, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(3, 60, generator=g, dtype=torch.float64).requires_grad_(True) if with_h0 else None
    w = torch.randn(3, 63, 60, generator=g, dtype=torch.float64)
    a, a_last = hgrn_recurrence_naive(f, c, h0)
    b, b_last = hgrn_recurrence(f, c, h0)
    assert torch.equal(a, b) and torch.equal(a_last, b_last)
    inputs = (f, c) + ((h0,) if with_h0 else ())
    ga = torch.autograd.grad((a * w).sum(), inputs)
    gb = torch.autograd.grad((b * w).sum(), inputs)
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() < 1e-10


def test_round_trip_identical_logits(tmp_path):
    model = random_model(2)
    save_model(model, tmp_path / "a")
    again = load_model(tmp_path / "a")
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load(tmp_path, dtype):
    model = random_model(4)
    save_model(model, tmp_path / "h", dtype=dtype)
    again = load_model(tmp_path / "h")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v.to(dtype).float())


def test_training_gradients_flow_through_ste():
    model = random_model(5).train()
    ids = torch.randint(0, 97, (2, 16))
    _, loss = model(ids, labels=ids)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.lm_head.weight.grad.abs().sum() > 0


# ---- bad input ------------------------------------------------------------------------------
def test_mismatched_tensors_listed_in_one_error(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = random_checkpoint(tmp_path / "m", **CONFIGS[0])
    sd = load_file(str(ckpt / "model.safetensors"))
    del sd["model.layers.0.attn.i_proj.weight"]
    sd["model.layers.0.attn.f_proj.weight"] = torch.zeros(3, 3)
    sd["model.layers.9.extra"] = torch.zeros(2)
    save_file(sd, str(ckpt / "model.safetensors"))
    with pytest.raises(MmfreeError) as exc:
        load_model(ckpt)
    msg = str(exc.value)
    assert "missing model.layers.0.attn.i_proj.weight" in msg
    assert "model.layers.0.attn.f_proj.weight: expected shape [60, 60], found [3, 3]" in msg
    assert "unexpected model.layers.9.extra" in msg


@pytest.mark.parametrize("change,needle", [
    ({"model_type": "llama"}, "unknown model_type"),
    ({"use_short_conv": True}, "not supported yet"),
    ({"num_heads": 4}, "not supported yet"),
])
def test_unsupported_configs_refused(tmp_path, change, needle):
    ckpt = random_checkpoint(tmp_path / "m", **CONFIGS[0])
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(change)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MmfreeError, match=needle):
        load_model(ckpt)


def test_pickle_weights_refused(tmp_path):
    ckpt = random_checkpoint(tmp_path / "m", **CONFIGS[0])
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(MmfreeError, match="pickle"):
        load_model(ckpt)


def test_missing_path_is_not_downloaded(tmp_path):
    with pytest.raises(MmfreeError, match="never downloads"):
        load_model(tmp_path / "nope")


def test_out_of_range_ids_raise():
    model = random_model(0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 97]]))


def test_sharded_checkpoint_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = random_checkpoint(tmp_path / "m", **CONFIGS[0])
    sd = load_file(str(ckpt / "model.safetensors"))
    names = sorted(sd)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in parts.items():
        save_file({k: sd[k] for k in keys}, str(ckpt / fname))
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in parts.items() for k in ks}}))
    model = load_model(ckpt)
    assert torch.equal(model.state_dict()["lm_head.weight"], sd["lm_head.weight"])
