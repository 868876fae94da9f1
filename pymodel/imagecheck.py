"""Validate every byte of a hardware image before anything runs on it (the loader's side of the image format).

An image (:mod:`mmfree.pymodel.layout`) is trusted only after:

* **schema**: every manifest key the consumers read is present with the right JSON type;
* **layout**: each tensor's dtype, shape, offset and size equal what the layout of its config computes (so
  two swapped offsets, an overlapping tensor or a wrong ``weights_bytes`` are refused), ``dims`` agree;
* **constants**: each BitLinear's ``K``, ``N`` match the layout, ``c_m`` lies in ``[2**(M_BITS-1), 2**M_BITS)``,
  ``c_e`` in ``[CE_MIN, CE_MAX]``, ``F_out`` is the model's format of that output (ranges: docs/numerics.md);
* **values**: packed ternary bytes are valid codes (< 3**5) with zero trits in the row padding, norm vectors
  are VEC_BITS-bit mantissas normalised as the spec says, ``1 - lb`` lies in Q0.31 [0, 1];
* **digest**: ``image_sha256`` = sha256 of the manifest's canonical JSON (without that key), which holds
  ``weights_sha256`` (the sha256 of weights.bin, checked by the loader): together they cover every byte.

Every failure is one :class:`ImageError` (an :class:`mmfree.MmfreeError`) that names the field and says to
re-export. numpy only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N

DIGEST_KEY = "image_sha256"
FIX = "re-export the model with `mmfree export`"


class ImageError(MmfreeError):
    pass


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), :data:`DIGEST_KEY` left out."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: key -> (JSON type(s), description) of every manifest key a consumer reads.
SCHEMA = {
    "format": (str, "a string"), "format_version": (int, "an integer"), "spec_version": (int, "an integer"),
    "row_align_bytes": (int, "an integer"), "config": (dict, "an object"), "formats": (dict, "an object"),
    "dims": (dict, "an object"), "bitlinears": (dict, "an object"), "tensors": (dict, "an object"),
    "weights_bytes": (int, "an integer"), "weights_sha256": (str, "a hex string"),
    DIGEST_KEY: (str, "a hex string"), "packed_weight_bytes": (int, "an integer"),
    "bits_per_weight": ((int, float), "a number"),
}


def check_schema(m, where: str = "manifest.json") -> None:
    """Every key of :data:`SCHEMA` present with its type (before any other check reads one)."""
    if not isinstance(m, dict):
        raise ImageError(f"{where} must hold a JSON object, got {type(m).__name__}; {FIX}")
    for key, (typ, desc) in SCHEMA.items():
        if key not in m:
            raise ImageError(f"{where} has no {key!r} key: the image is incomplete or not an mmfree export; {FIX}")
        v = m[key]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise ImageError(f"{where}: {key!r} must be {desc}, got {type(v).__name__} {str(v)[:40]!r}; {FIX}")


def check_layout(m: dict, dims: LY.Dims) -> None:
    """dims, tensor table (dtype, shape, offset, nbytes, sha256 present) and weights_bytes equal the layout."""
    want_dims = {"vocab": dims.vocab, "d": dims.d, "inter": dims.inter, "layers": dims.layers}
    if m["dims"] != want_dims:
        raise ImageError(f"manifest dims {m['dims']} disagree with its config ({want_dims}); {FIX}")
    specs = LY.tensors(dims, m["row_align_bytes"])
    offs, total = LY.offsets(specs)
    have = m["tensors"]
    problems = []
    for t in specs:
        e = have.get(t.name)
        if not isinstance(e, dict):
            problems.append(f"missing {t.name}")
            continue
        shape = e.get("shape")
        if e.get("dtype") != t.dtype or not isinstance(shape, list) or tuple(shape) != t.shape:
            problems.append(f"{t.name}: expected {t.dtype}{list(t.shape)}, manifest has {e.get('dtype')}{shape}")
        elif e.get("offset") != offs[t.name] or e.get("nbytes") != t.nbytes:
            problems.append(f"{t.name}: offset {e.get('offset')} / nbytes {e.get('nbytes')}, the layout puts it at "
                            f"{offs[t.name]} / {t.nbytes}")
        elif not isinstance(e.get("sha256"), str):
            problems.append(f"{t.name}: no sha256")
    problems += [f"unexpected {n}" for n in sorted(set(have) - {t.name for t in specs})]
    if problems:
        raise ImageError("the manifest does not match the layout of its config:\n  " + "\n  ".join(problems[:12])
                         + f"\n{FIX}")
    if m["weights_bytes"] != total:
        raise ImageError(f"manifest weights_bytes {m['weights_bytes']} but the layout needs {total}; {FIX}")


def check_constants(m: dict, dims: LY.Dims, formats: dict) -> None:
    """Every BitLinear's constants present and inside the numerics spec's ranges."""
    consts = m["bitlinears"]
    specs = LY.bitlinears(dims)
    extra = sorted(set(consts) - {b.name for b in specs})
    if extra:
        raise ImageError(f"manifest bitlinears has unexpected entries {extra[:4]}; {FIX}")
    lo, hi = 2 ** (N.M_BITS - 1), 2 ** N.M_BITS
    for b in specs:
        c = consts.get(b.name)
        if not isinstance(c, dict):
            raise ImageError(f"manifest bitlinears has no entry for {b.name}; {FIX}")
        checks = [
            ("K", _is_int(c.get("K")) and c["K"] == b.K, f"{b.K}"),
            ("N", _is_int(c.get("N")) and c["N"] == b.N, f"{b.N}"),
            ("c_m", _is_int(c.get("c_m")) and lo <= c["c_m"] < hi, f"an integer in [2**{N.M_BITS - 1}, 2**{N.M_BITS})"),
            ("c_e", _is_int(c.get("c_e")) and N.CE_MIN <= c["c_e"] <= N.CE_MAX,
             f"an integer in [{N.CE_MIN}, {N.CE_MAX}]"),
            ("F_out", _is_int(c.get("F_out")) and c["F_out"] == formats[LY.output_format(b.name) + "_frac"],
             f"{LY.output_format(b.name)}_frac = {formats[LY.output_format(b.name) + '_frac']}"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise ImageError(f"manifest bitlinears.{b.name}.{key} is {c.get(key)!r}, must be {want} "
                                 f"(docs/numerics.md); {FIX}")


def check_values(tensor, dims: LY.Dims) -> None:
    """Packed codes, padding trits and vector ranges of the tensors (``tensor(name) -> ndarray``)."""
    for b in LY.bitlinears(dims):
        w = tensor(b.w)
        if w.size and int(w.max()) >= 3 ** N.TRITS_PER_BYTE:
            r, col = np.argwhere(w >= 3 ** N.TRITS_PER_BYTE)[0]
            raise ImageError(f"tensor {b.w} holds byte {int(w[r, col])} at row {r}, column {col}: not a valid "
                             f"packed ternary code (0..{3 ** N.TRITS_PER_BYTE - 1}); {FIX}")
        first = b.K // N.TRITS_PER_BYTE
        tail = N.trit_decode_table()[w[:, first:]].reshape(w.shape[0], -1)[:, b.K - first * N.TRITS_PER_BYTE:]
        if np.any(tail):
            raise ImageError(f"tensor {b.w} has nonzero trits in its row padding (beyond K = {b.K}); {FIX}")
        for name in (b.n, b.nw):
            _check_vector(name, tensor(name))
    _check_vector("norm.n", tensor("norm.n"))
    for i in range(dims.layers):
        lb = tensor(f"layers.{i}.attn.one_minus_lb")
        if lb.size and int(lb.max()) > N.ONE_Q31:
            raise ImageError(f"tensor layers.{i}.attn.one_minus_lb exceeds 1.0 in Q0.31 (max {int(lb.max())} > "
                             f"{N.ONE_Q31}); {FIX}")


def _check_vector(name: str, v: np.ndarray) -> None:
    """A norm vector: all zero, or max |mantissa| in [2**(VEC_BITS-2), 2**(VEC_BITS-1)) (docs/numerics.md)."""
    mx = int(np.max(np.abs(v.astype(np.int64)))) if v.size else 0
    if mx and not 2 ** (N.VEC_BITS - 2) <= mx < 2 ** (N.VEC_BITS - 1):
        raise ImageError(f"tensor {name}: max |mantissa| {mx} is outside [2**{N.VEC_BITS - 2}, 2**{N.VEC_BITS - 1}) "
                         f"(docs/numerics.md, norm vectors); {FIX}")


def check_digest(m: dict) -> None:
    """``image_sha256`` equals the digest of the rest of the manifest."""
    try:
        want = manifest_digest(m)
    except ValueError as exc:          # NaN / inf in a number
        raise ImageError(f"manifest.json holds a non-finite number ({exc}); {FIX}") from None
    if m[DIGEST_KEY] != want:
        raise ImageError(f"manifest.json fails its digest (image_sha256 {m[DIGEST_KEY][:16]}..., content "
                         f"{want[:16]}...): the manifest was modified after export; {FIX}")
