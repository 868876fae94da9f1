"""``mmfree export``: a float checkpoint -> the hardware image (see :mod:`mmfree.pymodel.layout`).

The ternary codes are computed with exactly the float model's own operations (torch, float32), so the
image holds the weights the float model uses. Norm weights become 31-bit mantissa vectors, RMSNorm pairs
fold into one per-BitLinear constant, the embedding becomes int32 fixed point, and the forget gate lower
bounds become Q0.31 ``1 - lb`` vectors (all formats: :mod:`mmfree.pymodel.numerics`).

Streaming: a checkpoint directory is read one tensor at a time from its memory-mapped safetensors files
(calibration runs one layer at a time), and every image tensor is converted in blocks of rows and
written as soon as it is made, so the working memory is about one layer, not the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.atomic import check_output_dir, output_dir
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N

FORMATS_KEY = "mmfree_formats"
#: tokenizer files copied next to tokenizer.json into the image (they decide whether prompts get BOS)
TOKENIZER_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
#: rows per block when the embedding or a ternary matrix is converted (bounds the export's working memory)
ROW_BLOCK = 4096


@contextmanager
def one_torch_thread():
    """Run the block with one torch CPU thread (restored afterwards). torch's multi-threaded reductions
    (``mean|w|`` over a matrix) group their partial sums by thread count, so a scale can move by an ulp;
    with one thread every derived quantity (absmean scale, ternary codes, calibration maxima, c_m/c_e) is
    a function of the weights alone, whatever thread count the caller runs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---- where the float tensors come from ----------------------------------------------------------------
class StateDictSource:
    """Float tensors by official name from an in-memory state dict (a loaded model), one at a time."""

    def __init__(self, sd, cfg):
        self.sd, self.cfg = sd, cfg

    def get(self, name: str):
        """Tensor ``name`` on the CPU as float32 (float64 stays float64); MmfreeError if it holds NaN or inf."""
        import torch

        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            name = "model.embeddings.weight"
        t = self.sd[name].detach()
        t = t.to("cpu", torch.float64 if t.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(t).all():
            raise MmfreeError(f"tensor {name} contains NaN or inf; the checkpoint is corrupt or training diverged")
        return t


class SafetensorsSource(StateDictSource):
    """Float tensors of a checkpoint directory, read one at a time from memory-mapped safetensors files.

    Opening checks every name, shape and dtype against the config from the file headers alone (one
    MmfreeError listing every problem); a truncated or damaged file is an MmfreeError naming it.
    """

    def __init__(self, d: Path, cfg):
        from mmfree.pymodel.checkpoint import header_problems, open_safetensors, raise_problems, safetensor_files

        self.cfg, self.sd, self._where = cfg, self, {}
        shapes, floating = {}, {}
        for f in safetensor_files(d):
            h = open_safetensors(f)
            for k in h.keys():
                sl = h.get_slice(k)
                self._where[k] = f
                shapes[k] = tuple(sl.get_shape())
                floating[k] = sl.get_dtype() in ("F64", "F32", "BF16", "F16")
            del h
        raise_problems(header_problems(shapes, floating, cfg), cfg, str(d))

    def __getitem__(self, name: str):
        # a fresh mapping per tensor: pages of the file read so far are unmapped (and leave the RSS) with it
        from mmfree.pymodel.checkpoint import open_safetensors

        f = self._where[name]
        h = open_safetensors(f)
        try:
            return h.get_tensor(name).clone()
        except Exception as exc:   # safetensors' own error types
            raise MmfreeError(f"{f}: reading {name} failed ({exc}); the file may be damaged: download it again") from exc
        finally:
            del h


# ---- calibration -----------------------------------------------------------------------------------------
def calibrate(model, n_tokens: int = 512, seed: int = 0) -> dict[str, int]:
    """Fixed-point formats of a loaded model (see :func:`calibrate_source`)."""
    return calibrate_source(StateDictSource(model.state_dict(), model.config), model.config, n_tokens, seed)


def calibrate_source(src, cfg, n_tokens: int = 512, seed: int = 0) -> dict[str, int]:
    """Fixed-point formats ``{"res_frac", "act_frac"}`` from the largest magnitudes the float model (official
    fake quantization, float32 CPU) produces on ``n_tokens`` seeded random tokens (plus the whole embedding
    table), with ``numerics.CALIBRATION_MARGIN_BITS`` of headroom. Runs one layer at a time, each loaded from
    ``src`` and dropped after use. Deterministic: a function of the weights only."""
    import torch

    from mmfree.pymodel.model import BitLinear, Block, RMSNorm, lower_bound_table

    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, n_tokens)).view(1, -1)
    emb = src.get("model.embeddings.weight")
    seen = {"res": float(emb.abs().max()), "act": 0.0}
    x = emb[ids]
    del emb
    L = cfg.num_hidden_layers
    lbs = lower_bound_table(src.get("model.lower_bounds")) if cfg.use_lower_bound else [None] * L

    def run(mod, prefix, *inputs):
        mod.load_state_dict({k: src.get(prefix + k) for k in mod.state_dict()}, assign=True)
        mod.eval()
        hooks = [m.register_forward_hook(lambda m, i, o, kind=LY.output_format(name):  # noqa: B008 (binds the loop's name)
                                         seen.__setitem__(kind, max(seen[kind], float(o.detach().abs().max()))))
                 for name, m in mod.named_modules() if isinstance(m, BitLinear)]
        try:
            with torch.no_grad():
                return mod(*inputs)
        finally:
            for h in hooks:
                h.remove()

    for i in range(L):
        x, _ = run(Block(cfg, i), f"model.layers.{i}.", x, lbs[i], None)
        seen["res"] = max(seen["res"], float(x.abs().max()))
    x = run(RMSNorm(cfg.hidden_size, cfg.rms_norm_eps), "model.norm.", x)
    run(BitLinear(cfg.hidden_size, cfg.vocab_size, cfg.bitlinear_norm_eps), "lm_head.", x)   # the head: "act"
    return {"res_frac": N.frac_for(seen["res"]), "act_frac": N.frac_for(seen["act"])}


def _checked_formats(fm) -> dict[str, int]:
    for key in ("res_frac", "act_frac"):
        if not isinstance(fm, dict) or not isinstance(fm.get(key), int) or not N.FRAC_MIN <= fm[key] <= N.FRAC_MAX:
            got = fm.get(key) if isinstance(fm, dict) else fm
            raise MmfreeError(f"config key {FORMATS_KEY}.{key} must be an integer in [{N.FRAC_MIN}, {N.FRAC_MAX}], "
                              f"got {got!r}; delete it to recalibrate")
    return {"res_frac": fm["res_frac"], "act_frac": fm["act_frac"]}


def formats_of(model) -> dict[str, int]:
    """The model's fixed-point formats: stored in its config (``config.extra["mmfree_formats"]``, saved with
    the checkpoint) or calibrated once and stored there, so export and hardware-exact training agree."""
    fm = model.config.extra.get(FORMATS_KEY)
    if fm is None:
        with one_torch_thread():
            fm = calibrate(model)
        model.config.extra[FORMATS_KEY] = fm
    return _checked_formats(fm)


def _source_formats(src, cfg) -> dict[str, int]:
    """Formats stored in the config, else calibrated from ``src`` and stored into ``cfg.extra``."""
    if cfg.extra.get(FORMATS_KEY) is None:
        cfg.extra[FORMATS_KEY] = calibrate_source(src, cfg)
    return _checked_formats(cfg.extra[FORMATS_KEY])


# ---- the integer tensors, one at a time -------------------------------------------------------------------
def ternarize(weight) -> tuple[np.ndarray, float]:
    """(ternary int8 ``[N, K]``, alpha) exactly as the float model's ``weight_codes`` computes them."""
    t, alpha, _ = _ternary_blocks(weight.detach().float().cpu())
    return np.concatenate(list(t)) if t else np.zeros(tuple(weight.shape), np.int8), alpha


def _ternary_blocks(w):
    """(list of int8 row blocks, alpha, nonzero count) of float32 ``w [N, K]`` with the float model's scale."""
    import torch

    from mmfree.pymodel.model import ternary_rows, weight_scale

    sw = weight_scale(w, torch.float32)
    blocks = [ternary_rows(w[r:r + ROW_BLOCK], sw).to(torch.int8).numpy() for r in range(0, w.shape[0], ROW_BLOCK)]
    return blocks, float(1.0 / sw), sum(int(np.count_nonzero(b)) for b in blocks)


class _Converter:
    """Makes the image tensors of one model from a source, by layout name, in layout order.

    The small vectors (norm weights, lower bounds) are read up front; each matrix is read when its image
    tensor is made. ``consts`` collects the per-BitLinear constants as the matrices go by.
    """

    def __init__(self, src, cfg, formats: dict[str, int]):
        self.src, self.cfg, self.formats = src, cfg, formats
        self.dims = LY.Dims.of(cfg)
        self.bls = {bl.w: bl for bl in LY.bitlinears(self.dims)}
        self.consts: dict[str, dict] = {}
        self.small: dict[str, np.ndarray] = {}
        self.exps: dict[str, int] = {}
        self.pre: dict[str, np.ndarray] = {}
        self._vectors()

    def _f64(self, name: str) -> np.ndarray:
        import torch

        return self.src.get(name).to(torch.float64).numpy()

    def _vec(self, name: str, v: np.ndarray) -> None:
        self.small[name], self.exps[name] = N.vector_from_float(v)

    def _vectors(self) -> None:
        import torch

        from mmfree.pymodel.model import lower_bound_table

        cfg = self.cfg
        lbs = (lower_bound_table(torch.from_numpy(self._f64("model.lower_bounds"))) if cfg.use_lower_bound
               else [None] * cfg.num_hidden_layers)
        for i in range(cfg.num_hidden_layers):
            p, q = f"model.layers.{i}.", f"layers.{i}."
            # the released code applies no lower bound in layer 0 (its lb[0] is 0 anyway)
            one_minus_lb = np.ones(cfg.hidden_size) if lbs[i] is None else 1.0 - lbs[i].numpy()
            self.small[q + "attn.one_minus_lb"] = N.q31_from_float(one_minus_lb).astype(np.uint32)
            attn_norm, g_norm, mlp_norm = (self._f64(p + k) for k in ("attn_norm.weight", "attn.g_norm.weight",
                                                                      "mlp_norm.weight"))
            self._vec(q + "attn_norm.n", attn_norm)
            self._vec(q + "attn.g_norm.n", g_norm)
            self._vec(q + "mlp_norm.n", mlp_norm)
            self._vec(q + "mlp.down_proj.n", np.ones(cfg.intermediate))
            for proj in ("i_proj", "f_proj", "g_proj"):
                self.pre[q + f"attn.{proj}"] = attn_norm
            self.pre[q + "attn.o_proj"] = g_norm
            self.pre[q + "mlp.gate_proj"] = mlp_norm
            self.pre[q + "mlp.down_proj"] = np.ones(cfg.intermediate)
        self.pre["lm_head"] = self._f64("model.norm.weight")
        self._vec("norm.n", self.pre["lm_head"])
        for bl in self.bls.values():
            self._vec(bl.nw, self.pre[bl.name] * self._f64(self._torch_name(bl) + ".norm.weight"))
        self.small["lut.sigmoid_tail"] = N.sigmoid_tail_table()
        self.small["lut.rsqrt"] = N.rsqrt_table()

    @staticmethod
    def _torch_name(bl) -> str:
        return "lm_head" if bl.name == "lm_head" else "model." + bl.name

    def blocks(self, name: str, pack: bool):
        """The image tensor ``name`` as a list of row blocks (numpy; ternary matrices packed if ``pack``)."""
        if name == "embed":
            emb = self.src.get("model.embeddings.weight")
            return [N.fixed_from_float(emb[r:r + ROW_BLOCK].double().numpy(), self.formats["res_frac"])
                    for r in range(0, emb.shape[0], ROW_BLOCK)]
        if name in self.bls:
            return self._ternary(self.bls[name], pack)
        return [self.small[name]]

    def _ternary(self, bl, pack: bool) -> list[np.ndarray]:
        tname = self._torch_name(bl)
        w = self.src.get(tname + ".weight").float()
        if float(w.abs().mean()) == 0.0:
            raise MmfreeError(f"tensor {tname}.weight is all zeros: its ternary scale is zero, nothing to export")
        t, alpha, nonzero = _ternary_blocks(w)
        del w
        F_n, F_nw = self.exps[bl.n], self.exps[bl.nw]
        F_out = self.formats[LY.output_format(bl.name) + "_frac"]
        C = alpha * math.sqrt(bl.K) / N.CODE_MAX * 2.0 ** (F_n - F_nw + F_out - 16)
        c_m, c_e = N.constant_from_float(C)
        self.consts[bl.name] = {"K": bl.K, "N": bl.N, "alpha": alpha, "F_n": F_n, "F_nw": F_nw, "F_out": F_out,
                                "c_m": c_m, "c_e": c_e, "nonzero_fraction": nonzero / (bl.N * bl.K)}
        return [N.pack_ternary(b) for b in t] if pack else t


def int_params(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every integer parameter the pipeline uses, by layout name, with ternary matrices unpacked
    (int8 ``[N, K]`` under the ``.w`` names), and the per-BitLinear constants. Used by the hardware-exact
    training mode (which re-derives them from the current float weights each step); the same conversion
    as the export."""
    with one_torch_thread():     # the same numbers as the export, whatever the training's thread count
        conv = _Converter(StateDictSource(model.state_dict(), model.config), model.config, formats_of(model))
        arrays = {t.name: np.concatenate(conv.blocks(t.name, pack=False)) for t in LY.tensors(conv.dims)}
    return arrays, conv.consts


def image_arrays(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """All tensors of the image (by layout name, ternary matrices packed) and the per-BitLinear constants."""
    conv = _Converter(StateDictSource(model.state_dict(), model.config), model.config, formats_of(model))
    arrays = {t.name: np.concatenate(conv.blocks(t.name, pack=True)) for t in LY.tensors(conv.dims)}
    return arrays, conv.consts


# ---- writing ---------------------------------------------------------------------------------------------
def _write_weights(f, conv: _Converter, progress: bool) -> tuple[dict, int, str]:
    """Write weights.bin to the open file ``f`` tensor by tensor; returns (tensor table, size, sha256)."""
    from tqdm import tqdm

    specs = LY.tensors(conv.dims)
    offs, total = LY.offsets(specs)
    whole, pos, table = hashlib.sha256(), 0, {}
    bar = tqdm(specs, desc="export", unit="tensor", file=sys.stderr, disable=not progress, leave=False)
    for t in bar:
        bar.set_postfix_str(t.name, refresh=False)
        pad = bytes(offs[t.name] - pos)
        f.write(pad)
        whole.update(pad)
        own, n, rows = hashlib.sha256(), 0, 0
        for b in conv.blocks(t.name, pack=True):
            b = np.ascontiguousarray(b, dtype=t.dtype)
            rows += b.shape[0]
            raw = memoryview(b).cast("B")
            f.write(raw)
            whole.update(raw)
            own.update(raw)
            n += len(raw)
        if n != t.nbytes or (len(t.shape) > 1 and rows != t.shape[0]):
            raise AssertionError(f"{t.name}: layout says {t.shape} ({t.nbytes} bytes), export made {n} bytes")
        table[t.name] = {"offset": offs[t.name], "dtype": t.dtype, "shape": list(t.shape), "nbytes": n,
                         "sha256": own.hexdigest()}
        pos = offs[t.name] + n
    tail = bytes(total - pos)
    f.write(tail)
    whole.update(tail)
    return table, total, whole.hexdigest()


def _tokenizer_files(tokenizer_file) -> dict[str, Path]:
    """``tokenizer.json`` and the tokenizer config files beside it, by their name in the image."""
    if tokenizer_file is None or not Path(tokenizer_file).exists():
        return {}
    files = {"tokenizer.json": Path(tokenizer_file)}
    for name in TOKENIZER_CONFIG_FILES:
        if (Path(tokenizer_file).parent / name).exists():
            files[name] = Path(tokenizer_file).parent / name
    return files


def check_export_out(out: str | os.PathLike, inputs=(), force: bool = False) -> Path:
    """The ``--out`` checks of ``mmfree export`` (before any work): :func:`mmfree.atomic.check_output_dir`."""
    return check_output_dir(out, "export", inputs=inputs, force=force)


def _export(src, cfg, out, tokenizer: dict[str, Path], source: str | None, progress: bool) -> Path:
    dims = LY.Dims.of(cfg)
    if cfg.hidden_size > N.MAX_K_FLOAT32_EXACT or cfg.intermediate > N.MAX_K_FLOAT32_EXACT:
        raise MmfreeError(f"projection width above {N.MAX_K_FLOAT32_EXACT} is outside the spec (accumulator bound)")
    with one_torch_thread():
        formats = _source_formats(src, cfg)
        conv = _Converter(src, cfg, formats)
    out = Path(out)
    with output_dir(out, "export") as tmp:
        with open(tmp / "weights.bin", "wb") as f, one_torch_thread():
            table, total, digest = _write_weights(f, conv, progress)
        for name, path in tokenizer.items():
            (tmp / name).write_bytes(path.read_bytes())
        manifest = {
            "format": LY.FORMAT, "format_version": LY.FORMAT_VERSION, "spec_version": N.SPEC_VERSION,
            "row_align_bytes": N.ROW_ALIGN_BYTES, "source": source,
            "config": cfg.to_dict(), "formats": formats,
            "dims": {"vocab": dims.vocab, "d": dims.d, "inter": dims.inter, "layers": dims.layers},
            "bitlinears": conv.consts, "tensors": table, "weights_bytes": total, "weights_sha256": digest,
            "packed_weight_bytes": LY.weight_bytes_per_token(dims),
            "bits_per_weight": 8.0 / N.TRITS_PER_BYTE,
        }
        seal_manifest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def export_model(model, out: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
                 source: str | None = None, progress: bool = False, force: bool = False) -> Path:
    """Write the image directory ``out`` of a loaded model atomically; returns its path. The model's
    formats are calibrated (and stored in its config) on first use. ``out`` must be new, empty, or (with
    ``force``) an earlier export; never the model's own directory."""
    check_export_out(out, [getattr(model, "source_dir", None), tokenizer_file], force)
    formats_of(model)
    return _export(StateDictSource(model.state_dict(), model.config), model.config, out,
                   _tokenizer_files(tokenizer_file), source, progress)


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


def export_checkpoint(model_path: str, out: str | os.PathLike, progress: bool = False, force: bool = False) -> Path:
    """Stream a checkpoint directory (or "default") into the image ``out``: tensors are read one at a time
    from the memory-mapped safetensors files, converted and written, so memory stays near one layer.
    ``out`` is checked (see :func:`export_model`) before anything is read."""
    from mmfree.pymodel.checkpoint import resolve
    from mmfree.pymodel.config import MMFreeConfig

    d = resolve(model_path)
    check_export_out(out, [d], force)
    if not (d / "config.json").exists():
        raise MmfreeError(f"no config.json in {d}; is this a MatMul-free LM checkpoint directory?")
    cfg = MMFreeConfig.from_json(d / "config.json")
    return _export(SafetensorsSource(d, cfg), cfg, out, _tokenizer_files(d / "tokenizer.json"), str(model_path), progress)
