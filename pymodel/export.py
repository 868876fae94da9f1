"""``mmfree export``: a float checkpoint -> the hardware image (see :mod:`mmfree.pymodel.layout`).

The ternary codes are computed with exactly the float model's own operations (torch, float32), so the
image holds the weights the float model uses. Norm weights become int16 vectors, RMSNorm pairs fold into
one per-BitLinear constant, the embedding becomes int16 rows with a power-of-two shift, and the forget
gate lower bounds become Q0.31 ``1 - lb`` vectors (all formats: :mod:`mmfree.pymodel.numerics`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.atomic import check_output_dir, output_dir
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise MmfreeError(f"tensor {name} contains NaN or inf; the checkpoint is corrupt or training diverged")
    return a


def ternarize(weight) -> tuple[np.ndarray, float]:
    """(ternary int8 ``[N, K]``, alpha) exactly as the float model's ``weight_quant`` computes them."""
    import torch

    w = weight.detach().to(torch.float32).cpu()
    mean = w.abs().mean()
    sw = 1.0 / mean.clamp(min=1e-5)
    t = (w * sw).round().clamp(-1, 1).to(torch.int8).numpy()
    return t, float(1.0 / sw)


FORMATS_KEY = "mmfree_formats"


def calibrate(model, n_tokens: int = 512, seed: int = 0) -> dict[str, int]:
    """Fixed-point formats for a model: ``{"res_frac", "act_frac"}`` from the largest magnitudes the float
    model produces on ``n_tokens`` seeded random tokens (plus the whole embedding table), with
    ``numerics.CALIBRATION_MARGIN_BITS`` of headroom. Deterministic: a function of the weights only."""
    import torch

    from mmfree.pymodel.model import BitLinear

    cfg = model.config
    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, n_tokens)).view(1, -1)
    seen = {"res": float(model.model.embeddings.weight.detach().abs().max()), "act": 0.0}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, BitLinear):
            kind = LY.output_format(name)

            def hook(m, i, o, kind=kind):
                seen[kind] = max(seen[kind], float(o.detach().abs().max()))

            hooks.append(mod.register_forward_hook(hook))
    for layer in model.model.layers:
        def res_hook(m, i, o):
            seen["res"] = max(seen["res"], float(o[0].detach().abs().max()))

        hooks.append(layer.register_forward_hook(res_hook))
    numerics, model.numerics = model.numerics, "fake"
    try:
        with torch.no_grad():
            model(ids.to(model.model.embeddings.weight.device))
    finally:
        model.numerics = numerics
        for h in hooks:
            h.remove()
    return {"res_frac": N.frac_for(seen["res"]), "act_frac": N.frac_for(seen["act"])}


def formats_of(model) -> dict[str, int]:
    """The model's fixed-point formats: stored in its config (``config.extra["mmfree_formats"]``, saved with
    the checkpoint) or calibrated once and stored there, so export and hardware-exact training agree."""
    fm = model.config.extra.get(FORMATS_KEY)
    if fm is None:
        fm = calibrate(model)
        model.config.extra[FORMATS_KEY] = fm
    for key in ("res_frac", "act_frac"):
        if not isinstance(fm.get(key), int) or not N.FRAC_MIN <= fm[key] <= N.FRAC_MAX:
            raise MmfreeError(f"config key {FORMATS_KEY}.{key} must be an integer in [{N.FRAC_MIN}, {N.FRAC_MAX}], "
                              f"got {fm.get(key)!r}; delete it to recalibrate")
    return {"res_frac": fm["res_frac"], "act_frac": fm["act_frac"]}


def int_params(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every integer parameter the pipeline uses, by layout name, with ternary matrices unpacked
    (int8 ``[N, K]`` under the ``.w`` names), and the per-BitLinear constants. Used by the export and by
    the hardware-exact training mode (which re-derives them from the current float weights each step)."""
    import torch

    cfg = model.config
    dims = LY.Dims.of(cfg)
    sd = {k: v.detach().to(torch.float64).cpu().numpy() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        _finite(k, v)
    arrays: dict[str, np.ndarray] = {}
    consts: dict[str, dict] = {}
    exps: dict[str, int] = {}

    def vec(name, v):
        m, F = N.vector_from_float(v)
        arrays[name] = m
        exps[name] = F

    formats = formats_of(model)
    arrays["embed"] = N.fixed_from_float(sd["model.embeddings.weight"], formats["res_frac"])
    if cfg.use_lower_bound:
        lbw = torch.from_numpy(sd["model.lower_bounds"]).softmax(0)
        lb = (lbw.cumsum(0) - lbw[0]).numpy()
    else:
        lb = np.zeros((cfg.num_hidden_layers, cfg.hidden_size))
    pre = {}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = f"layers.{i}."
        # the released code applies no lower bound in layer 0 (its lb[0] is 0 anyway)
        one_minus_lb = np.ones(cfg.hidden_size) if i == 0 else 1.0 - lb[i]
        arrays[q + "attn.one_minus_lb"] = N.q31_from_float(one_minus_lb).astype(np.uint32)
        vec(q + "attn_norm.n", sd[p + "attn_norm.weight"])
        vec(q + "attn.g_norm.n", sd[p + "attn.g_norm.weight"])
        vec(q + "mlp_norm.n", sd[p + "mlp_norm.weight"])
        vec(q + "mlp.down_proj.n", np.ones(cfg.intermediate))
        for proj in ("i_proj", "f_proj", "g_proj"):
            pre[q + f"attn.{proj}"] = sd[p + "attn_norm.weight"]
        pre[q + "attn.o_proj"] = sd[p + "attn.g_norm.weight"]
        pre[q + "mlp.gate_proj"] = sd[p + "mlp_norm.weight"]
        pre[q + "mlp.down_proj"] = np.ones(cfg.intermediate)
    vec("norm.n", sd["model.norm.weight"])
    pre["lm_head"] = sd["model.norm.weight"]
    modules = model.bitlinears()
    for bl in LY.bitlinears(dims):
        torch_name = "lm_head" if bl.name == "lm_head" else "model." + bl.name
        mod = modules[torch_name]
        if float(mod.weight.detach().abs().mean()) == 0.0:
            raise MmfreeError(f"tensor {torch_name}.weight is all zeros: its ternary scale is zero, nothing to export")
        t, alpha = ternarize(mod.weight)
        arrays[bl.w] = t
        own = sd[torch_name + ".norm.weight"]
        vec(bl.nw, pre[bl.name] * own)
        F_n, F_nw = exps[bl.n], exps[bl.nw]
        F_out = formats[LY.output_format(bl.name) + "_frac"]
        C = alpha * math.sqrt(bl.K) / N.CODE_MAX * 2.0 ** (F_n - F_nw + F_out - 16)
        c_m, c_e = N.constant_from_float(C)
        consts[bl.name] = {"K": bl.K, "N": bl.N, "alpha": alpha, "F_n": F_n, "F_nw": F_nw, "F_out": F_out,
                           "c_m": c_m, "c_e": c_e,
                           "nonzero_fraction": float(np.count_nonzero(t)) / t.size}
    arrays["lut.sigmoid_tail"] = N.sigmoid_tail_table()
    arrays["lut.rsqrt"] = N.rsqrt_table()
    return arrays, consts


def image_arrays(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """All tensors of the image (by layout name, ternary matrices packed) and the per-BitLinear constants."""
    arrays, consts = int_params(model)
    for bl in LY.bitlinears(LY.Dims.of(model.config)):
        arrays[bl.w] = N.pack_ternary(arrays[bl.w])
    return arrays, consts


def check_export_out(out: str | os.PathLike, inputs=(), force: bool = False) -> Path:
    """The ``--out`` checks of ``mmfree export`` (before any work): :func:`mmfree.atomic.check_output_dir`."""
    return check_output_dir(out, "export", inputs=inputs, force=force)


def export_model(model, out: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
                 source: str | None = None, progress: bool = False, force: bool = False) -> Path:
    """Write the image directory ``out`` atomically; returns its path.

    ``out`` must be new, empty, or (with ``force``) an earlier export; never the model's own directory."""
    check_export_out(out, [getattr(model, "source_dir", None), tokenizer_file], force)
    cfg = model.config
    dims = LY.Dims.of(cfg)
    if cfg.hidden_size > N.MAX_K_FLOAT32_EXACT or cfg.intermediate > N.MAX_K_FLOAT32_EXACT:
        raise MmfreeError(f"projection width above {N.MAX_K_FLOAT32_EXACT} is outside the spec (accumulator bound)")
    arrays, consts = image_arrays(model)
    specs = LY.tensors(dims)
    offs, total = LY.offsets(specs)
    blob = bytearray(total)
    table = {}
    for t in specs:
        a = np.ascontiguousarray(arrays[t.name], dtype=t.dtype)
        if tuple(a.shape) != t.shape:
            raise AssertionError(f"{t.name}: layout says {t.shape}, export made {a.shape}")
        raw = a.tobytes()
        blob[offs[t.name]:offs[t.name] + len(raw)] = raw
        table[t.name] = {"offset": offs[t.name], "dtype": t.dtype, "shape": list(t.shape), "nbytes": len(raw),
                         "sha256": hashlib.sha256(raw).hexdigest()}
    manifest = {
        "format": LY.FORMAT, "format_version": LY.FORMAT_VERSION, "spec_version": N.SPEC_VERSION,
        "row_align_bytes": N.ROW_ALIGN_BYTES, "source": source,
        "config": cfg.to_dict(),
        "formats": formats_of(model),
        "dims": {"vocab": dims.vocab, "d": dims.d, "inter": dims.inter, "layers": dims.layers},
        "bitlinears": consts, "tensors": table, "weights_bytes": total,
        "weights_sha256": hashlib.sha256(bytes(blob)).hexdigest(),
        "packed_weight_bytes": LY.weight_bytes_per_token(dims),
        "bits_per_weight": 8.0 / N.TRITS_PER_BYTE,
    }
    seal_manifest(manifest)
    out = Path(out)
    with output_dir(out, "export") as tmp:
        (tmp / "weights.bin").write_bytes(bytes(blob))
        if tokenizer_file is not None and Path(tokenizer_file).exists():
            (tmp / "tokenizer.json").write_bytes(Path(tokenizer_file).read_bytes())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def seal_manifest(manifest: dict) -> dict:
    """Refuse constants the hardware cannot hold, then add the digest that covers the manifest (and through
    ``weights_sha256`` the weights): :mod:`mmfree.pymodel.imagecheck`."""
    from mmfree.pymodel import imagecheck as IC

    for name, c in manifest["bitlinears"].items():
        if not N.CE_MIN <= c["c_e"] <= N.CE_MAX:
            raise MmfreeError(f"BitLinear {name}: its scale constant's exponent c_e = {c['c_e']} is outside the "
                              f"hardware's [{N.CE_MIN}, {N.CE_MAX}] (docs/numerics.md); the weights or norm "
                              "weights are extreme: check the checkpoint")
    manifest[IC.DIGEST_KEY] = IC.manifest_digest(manifest)
    return manifest


def export_checkpoint(model_path: str, out: str | os.PathLike, force: bool = False) -> Path:
    """``mmfree export``: checks ``out`` (see :func:`export_model`) before loading ``model_path``."""
    from mmfree.pymodel.checkpoint import load_model, resolve

    d = resolve(model_path)
    check_export_out(out, [d], force)
    model = load_model(model_path)
    return export_model(model, out, tokenizer_file=d / "tokenizer.json", source=str(model_path), force=force)
