"""``mmfree export``: a float checkpoint -> the hardware image (see :mod:`mmfree.pymodel.layout`).

The image is a pure function of the checkpoint: every quantity derived from the weights (absmean scale,
ternary codes, norm vectors, lower bounds, embedding, c_m/c_e) comes from :class:`_Converter`, written
with operations whose result does not depend on thread count, BLAS or device: exact integer sums,
elementwise IEEE operations (each correctly rounded on every device), fixed-order float64 sums, and
host scalar arithmetic. The hardware-exact training mode (:func:`mmfree.pymodel.hwexact.device_int_params`)
runs the same converter on the model's device: one implementation. The one float forward pass, the
calibration of the fixed-point formats, runs on the CPU with one torch thread (:func:`one_torch_thread`).

Ternary codes follow the float model's formula ``round(w * sw).clamp(-1, 1)``, ``sw = 1 / mean|w|``, with
``mean|w|`` computed exactly (:func:`absmean`) instead of by torch's float32 reduction, whose rounding moves
with thread count and device; the fake-quant float model keeps torch's mean, so its scale can differ from
the image's by one float32 ulp. Norm weights become 31-bit mantissa vectors, RMSNorm pairs
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
    """Run the block with one torch CPU thread (restored afterwards). Used only around the calibration's
    float forward pass (RMSNorm row sums, vectorised SiLU/sigmoid whose SIMD/scalar split follows the
    threads' chunking): with one thread its maxima are a function of the weights alone. Every other derived
    quantity is thread-independent by construction and needs no such pinning."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---- where the float tensors come from ----------------------------------------------------------------
class StateDictSource:
    """Float tensors by official name from an in-memory state dict (a loaded model), one at a time, on
    ``device`` (default: the CPU)."""

    def __init__(self, sd, cfg, device=None):
        import torch

        self.sd, self.cfg, self.device = sd, cfg, torch.device("cpu" if device is None else device)

    def get(self, name: str):
        """Tensor ``name`` on the source's device as float32 (float64 stays float64); MmfreeError if it holds
        NaN or inf."""
        import torch

        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            name = "model.embeddings.weight"
        t = self.sd[name].detach()
        t = t.to(self.device, torch.float64 if t.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(t).all():
            raise MmfreeError(f"tensor {name} contains NaN or inf; the checkpoint is corrupt or training diverged")
        return t


class SafetensorsSource(StateDictSource):
    """Float tensors of a checkpoint directory, read one at a time from memory-mapped safetensors files.

    Opening checks every name, shape and dtype against the config from the file headers alone (one
    MmfreeError listing every problem); a truncated or damaged file is an MmfreeError naming it.
    """

    def __init__(self, d: Path, cfg):
        import torch

        from mmfree.pymodel.checkpoint import header_problems, open_safetensors, raise_problems, safetensor_files

        self.cfg, self.sd, self._where, self.device = cfg, self, {}, torch.device("cpu")
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


# ---- the integer parameters: one implementation, the same bits on every device ------------------------------
#: elements per chunk of the exact |w| sum (bounds the int64 temporary on a GPU)
SUM_CHUNK = 1 << 22
#: fdlibm's split of ln 2: k * _LN2_HI is exact for |k| < 2**20
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10


def absmean(w) -> float:
    """``mean |w|`` of a float tensor (any shape, any device) as a Python float, the same bits for any thread
    count, BLAS or device: each ``|w|`` is cut to a fixed-point grid ``2**-S`` fixed by ``max|w|`` and the
    element count (elementwise, exact scaling), the integers are summed exactly in int64 (order-free), and the
    sum is divided on the host. ``S`` leaves the sum below 2**62, so the result is within 2**-30 relative of the
    true mean (1.3B-width matrices: ~2**-33). 0.0 for an all-zero or empty tensor."""
    import torch

    a = w.detach().reshape(-1)
    n = a.numel()
    mx = float(a.abs().max()) if n else 0.0
    if mx == 0.0:
        return 0.0
    S = 62 - math.frexp(mx)[1] - max(1, (n - 1).bit_length())     # max|w| < 2**E, n <= 2**ceil(log2 n)
    scale = torch.tensor(2.0 ** S, dtype=torch.float64, device=a.device)
    total = 0
    for r in range(0, n, SUM_CHUNK):
        part = a[r:r + SUM_CHUNK].to(torch.float64).abs()
        total += int(torch.floor(part * scale).to(torch.int64).sum())
    return math.ldexp(float(total), -S) / n


def ternary_scale(mean: float, device) -> tuple[object, float]:
    """(sw, alpha) of a weight matrix from its :func:`absmean`: the float model's ``sw = 1 / max(mean|w|, 1e-5)``
    in float32, as a 0-d float32 tensor on ``device``, and ``alpha = 1 / sw`` (a float32 value)."""
    import torch

    m32 = max(np.float32(mean), np.float32(1e-5))
    sw = np.float32(1.0) / m32
    return torch.tensor(float(sw), dtype=torch.float32, device=device), float(np.float32(1.0) / sw)


def _exp_nonpositive(x):
    """``exp(x)`` of a float64 tensor with ``x <= 0``, from IEEE basic operations only, each its own torch op
    (no fused multiply-add), so every device gives the same bits: ``x = k ln2 + r`` (Cody-Waite), a degree-13
    Taylor polynomial in ``|r| <= ln2 / 2`` (truncation < 2**-57), times ``2**k`` built from its bits.
    Results below 2**-1022 are 0."""
    import torch

    k = torch.round(x * (1.0 / math.log(2.0)))
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = torch.full_like(r, 1.0 / math.factorial(13))
    for j in range(12, -1, -1):
        p = p * r
        p = p + 1.0 / math.factorial(j)
    kc = torch.clamp(k, min=-1022).to(torch.int64)
    two_k = torch.bitwise_left_shift(kc + 1023, 52).view(torch.float64)
    return torch.where(k < -1022, torch.zeros_like(p), p * two_k)


def one_minus_lb_codes(lower_bounds) -> list:
    """Q0.31 ``1 - lb`` (int64 ``[d]`` per layer) of the lower-bound parameter ``[L, d]`` (float64, any device):
    ``lb = softmax(lower_bounds, 0); lb = cumsum(lb) - lb[0]`` as the float model, with :func:`_exp_nonpositive`
    and sums in layer order (fixed), so the codes do not depend on the device. Layer 0 has no lower bound: 2**31."""
    import torch

    x = lower_bounds.to(torch.float64)
    mx = x[0]
    for i in range(1, x.shape[0]):
        mx = torch.maximum(mx, x[i])
    e = [_exp_nonpositive(x[i] - mx) for i in range(x.shape[0])]
    total = e[0]
    for t in e[1:]:
        total = total + t
    lb = [t / total for t in e]
    out, c = [torch.full_like(x[0], N.ONE_Q31, dtype=torch.int64)], lb[0]
    for i in range(1, x.shape[0]):
        c = c + lb[i]
        out.append(torch.clamp(torch.round((1.0 - (c - lb[0])) * N.ONE_Q31), 0, N.ONE_Q31).to(torch.int64))
    return out


def int_vector(v) -> tuple[object, int]:
    """:func:`mmfree.pymodel.numerics.vector_from_float` on a float64 tensor on any device (int32 mantissas, F):
    max (exact), log2 of a host scalar, exact ldexp, round half to even."""
    import torch

    mx = float(v.abs().max()) if v.numel() else 0.0
    if mx == 0.0:
        return torch.zeros(v.shape, dtype=torch.int32, device=v.device), 0
    F = (N.VEC_BITS - 2) - math.floor(math.log2(mx))
    m = torch.round(v * 2.0 ** F)
    if float(m.abs().max()) >= 2 ** (N.VEC_BITS - 1):                 # log2 rounding at an exact power of two
        F -= 1
        m = torch.round(v * 2.0 ** F)
    return m.to(torch.int32), F


def embed_codes(emb, res_frac: int):
    """:func:`mmfree.pymodel.numerics.fixed_from_float` on a float64 tensor (any device): int32 Q(res_frac)."""
    import torch

    return torch.clamp(torch.round(emb * 2.0 ** res_frac), N.INT32_MIN, N.INT32_MAX).to(torch.int32)


def ternarize(weight) -> tuple[np.ndarray, float]:
    """(ternary int8 ``[N, K]``, alpha) of a weight matrix, as the image holds them."""
    import torch

    from mmfree.pymodel.model import ternary_rows

    w = weight.detach().float().cpu()
    sw, alpha = ternary_scale(absmean(w), w.device)
    return ternary_rows(w, sw).to(torch.int8).numpy(), alpha


class _Converter:
    """Makes the integer tensors of one model from a source, by layout name, in layout order, as torch tensors
    on the source's device (the export: CPU; hardware-exact training: the model's device).

    The small vectors (norm weights, lower bounds) are read up front; each matrix is read when its tensor is
    made. ``consts`` collects the per-BitLinear constants as the matrices go by.
    """

    def __init__(self, src, cfg, formats: dict[str, int]):
        self.src, self.cfg, self.formats = src, cfg, formats
        self.dims = LY.Dims.of(cfg)
        self.bls = {bl.w: bl for bl in LY.bitlinears(self.dims)}
        self.consts: dict[str, dict] = {}
        self.small: dict = {}
        self.exps: dict[str, int] = {}
        self.pre: dict = {}
        self._vectors()

    def _f64(self, name: str):
        import torch

        return self.src.get(name).to(torch.float64)

    def _vec(self, name: str, v) -> None:
        self.small[name], self.exps[name] = int_vector(v)

    def _vectors(self) -> None:
        cfg = self.cfg
        ones_d = self._f64("model.norm.weight").new_ones(cfg.hidden_size)
        lbs = (one_minus_lb_codes(self._f64("model.lower_bounds")) if cfg.use_lower_bound
               else [None] * cfg.num_hidden_layers)
        for i in range(cfg.num_hidden_layers):
            p, q = f"model.layers.{i}.", f"layers.{i}."
            # the released code applies no lower bound in layer 0 (its lb[0] is 0 anyway)
            self.small[q + "attn.one_minus_lb"] = (lbs[i] if lbs[i] is not None
                                                   else ones_d.new_full((cfg.hidden_size,), N.ONE_Q31).long())
            norms = {"attn_norm": self._f64(p + "attn_norm.weight"), "attn.g_norm": self._f64(p + "attn.g_norm.weight"),
                     "mlp_norm": self._f64(p + "mlp_norm.weight"), "mlp.down_proj": ones_d.new_ones(cfg.intermediate)}
            for k, v in norms.items():
                self._vec(q + k + ".n", v)
            for proj in ("i_proj", "f_proj", "g_proj"):
                self.pre[q + f"attn.{proj}"] = norms["attn_norm"]
            self.pre[q + "attn.o_proj"], self.pre[q + "mlp.gate_proj"] = norms["attn.g_norm"], norms["mlp_norm"]
            self.pre[q + "mlp.down_proj"] = norms["mlp.down_proj"]
        self.pre["lm_head"] = self._f64("model.norm.weight")
        self._vec("norm.n", self.pre["lm_head"])
        for bl in self.bls.values():
            self._vec(bl.nw, self.pre[bl.name] * self._f64(self._torch_name(bl) + ".norm.weight"))

    @staticmethod
    def _torch_name(bl) -> str:
        return "lm_head" if bl.name == "lm_head" else "model." + bl.name

    def blocks(self, name: str) -> list:
        """The integer tensor ``name`` as a list of row blocks (torch; ternary matrices as int8 codes)."""
        if name == "embed":
            emb = self.src.get("model.embeddings.weight")
            return [embed_codes(emb[r:r + ROW_BLOCK].double(), self.formats["res_frac"])
                    for r in range(0, emb.shape[0], ROW_BLOCK)]
        if name in self.bls:
            return self._ternary(self.bls[name])
        if name in ("lut.sigmoid_tail", "lut.rsqrt"):
            return [_lut(name, self.src.device)]
        return [self.small[name]]

    def _ternary(self, bl) -> list:
        import torch

        from mmfree.pymodel.model import ternary_rows

        tname = self._torch_name(bl)
        w = self.src.get(tname + ".weight").float()
        mean = absmean(w)
        if mean == 0.0:
            raise MmfreeError(f"tensor {tname}.weight is all zeros: its ternary scale is zero, nothing to export")
        sw, alpha = ternary_scale(mean, w.device)
        t = [ternary_rows(w[r:r + ROW_BLOCK], sw).to(torch.int8) for r in range(0, w.shape[0], ROW_BLOCK)]
        nonzero = sum(int(b.count_nonzero()) for b in t)
        del w
        F_n, F_nw = self.exps[bl.n], self.exps[bl.nw]
        F_out = self.formats[LY.output_format(bl.name) + "_frac"]
        C = alpha * math.sqrt(bl.K) / N.CODE_MAX * 2.0 ** (F_n - F_nw + F_out - 16)
        c_m, c_e = N.constant_from_float(C)
        self.consts[bl.name] = {"K": bl.K, "N": bl.N, "alpha": alpha, "F_n": F_n, "F_nw": F_nw, "F_out": F_out,
                                "c_m": c_m, "c_e": c_e, "nonzero_fraction": nonzero / (bl.N * bl.K)}
        return t


_LUTS: dict = {}


def _lut(name: str, device):
    """The pipeline's lookup tables (constants of the spec, not weights) as torch tensors, made once per device."""
    import torch

    key = (name, str(device))
    if key not in _LUTS:
        table = N.sigmoid_tail_table() if name == "lut.sigmoid_tail" else N.rsqrt_table()
        _LUTS[key] = torch.tensor(table, device=device)
    return _LUTS[key]


def converted(model, device=None) -> tuple[dict, dict[str, dict]]:
    """Every integer tensor of the model by layout name (torch, on ``device``, default the CPU; ternary matrices
    unpacked int8 ``[N, K]``) and the per-BitLinear constants: the conversion the export writes."""
    conv = _Converter(StateDictSource(model.state_dict(), model.config, device), model.config, formats_of(model))
    import torch

    tensors = {}
    for t in LY.tensors(conv.dims):
        b = conv.blocks(t.name)
        tensors[t.name] = b[0] if len(b) == 1 else torch.cat(b)
    return tensors, conv.consts


def int_params(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every integer parameter the pipeline uses, by layout name, as numpy (ternary matrices unpacked int8
    ``[N, K]`` under the ``.w`` names, one_minus_lb uint32, as in the image), and the per-BitLinear constants."""
    tensors, consts = converted(model)
    return {n: _image_numpy(n, t) for n, t in tensors.items()}, consts


def _image_numpy(name: str, t) -> np.ndarray:
    a = t.numpy()
    return a.astype(np.uint32) if name.endswith("one_minus_lb") else a


def image_arrays(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """All tensors of the image (by layout name, ternary matrices packed) and the per-BitLinear constants."""
    arrays, consts = int_params(model)
    return {n: N.pack_ternary(a) if n.endswith(".w") else a for n, a in arrays.items()}, consts


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
        for b in conv.blocks(t.name):
            b = b.numpy()
            b = np.ascontiguousarray(N.pack_ternary(b) if t.name in conv.bls else b, dtype=t.dtype)
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
    with one_torch_thread():                 # the calibration's float forward pass only
        formats = _source_formats(src, cfg)
    conv = _Converter(src, cfg, formats)
    out = Path(out)
    with output_dir(out, "export") as tmp:
        with open(tmp / "weights.bin", "wb") as f:
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
