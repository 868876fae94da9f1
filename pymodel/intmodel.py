"""The bit-exact integer reference: the oracle every hardware path is compared to.

``IntModel`` runs a decode step of an exported image (:mod:`mmfree.pymodel.layout`) with the primitives
of :mod:`mmfree.pymodel.numerics` on numpy integers; no torch. One step for one token::

    x  = embed(token)                                          int32 Q(res_frac)
    for each layer:
        (codes_i, codes_f, codes_g) = quantize(x; attn_norm.n, {i,f,g}.nw)       int8 codes
        i, f, g = dequantize(T_{i,f,g} @ codes, M, shift)        ternary accumulate, per-token multiplier; Q(act_frac)
        g_rate = forget_rate(f, 1 - lb)                          Q0.31
        h = hgrn_update(h, silu(i), g_rate)                      h + g (SiLU(i) - h)
        u = g * silu(h)                                          Q32 product
        x = saturate(x + BitLinear_o(u; g_norm.n, o.nw))
        gate | up = BitLinear_gate(x; mlp_norm.n, gate.nw)
        x = saturate(x + BitLinear_down(silu(gate) * up; ones, down.nw))
    logits = BitLinear_head(x; norm.n, lm_head.nw)             int32 Q(act_frac)

The ternary products run through float32 BLAS: the codes are integers in [-127, 127], the weights in
{-1, 0, 1}, and every partial sum stays below 127 * K < 2**24, so float32 holds them exactly (asserted
at load). ``verify`` processes k tokens with one pass over the weights and returns the state after
every position, which is exactly k sequential ``step`` calls. ``verify_forest`` does the same for B
independent streams (each with its own start state) in one pass: a forest instead of a tree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from mmfree.pymodel import imagecheck as IC
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N
from mmfree.pymodel.imagecheck import ImageError


@dataclass
class IntState:
    """Recurrent state: ``h`` int64 ``[L, d]`` holding int32 values in Q(act_frac)."""

    h: np.ndarray

    def copy(self) -> IntState:
        return IntState(self.h.copy())


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_manifest(path: Path) -> dict:
    """The manifest of image directory ``path``, its versions and schema checked (:mod:`imagecheck`)."""
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ImageError(f"no manifest.json in {path}: not an mmfree export (create one with `mmfree export`)")
    try:
        m = json.loads(mf.read_text(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ImageError(f"{mf} is not valid JSON: {exc}; re-export the model with `mmfree export`") from None
    if not isinstance(m, dict):
        raise ImageError(f"{mf} must hold a JSON object, got {type(m).__name__}; re-export the model")
    if m.get("format") != LY.FORMAT:
        raise ImageError(f"{mf}: format {m.get('format')!r} is not {LY.FORMAT!r}")
    if m.get("format_version") != LY.FORMAT_VERSION:
        raise ImageError(f"{mf}: image format version {m.get('format_version')} but this mmfree reads "
                         f"version {LY.FORMAT_VERSION}; re-export with `mmfree export`")
    if m.get("spec_version") != N.SPEC_VERSION:
        raise ImageError(f"{mf}: numerics spec version {m.get('spec_version')} but this mmfree implements "
                         f"version {N.SPEC_VERSION}; re-export with `mmfree export`")
    if m.get("row_align_bytes") != N.ROW_ALIGN_BYTES:
        raise ImageError(f"{mf}: row alignment {m.get('row_align_bytes')} bytes, expected {N.ROW_ALIGN_BYTES}")
    IC.check_schema(m, str(mf))
    return m


def _changed_tensors(table: dict, blob: np.ndarray) -> list[str]:
    """Names of the tensors whose bytes differ from their recorded sha256 (for the error message)."""
    bad = []
    for name, t in table.items():
        try:
            if hashlib.sha256(blob[t["offset"]:t["offset"] + t["nbytes"]].tobytes()).hexdigest() != t["sha256"]:
                bad.append(name)
        except (KeyError, TypeError, ValueError):
            bad.append(name)
    return bad


class IntModel:
    """An exported model on the integer reference. Create with :meth:`load`."""

    def __init__(self, manifest: dict, blob: np.ndarray, path: Path | None = None):
        from mmfree.pymodel.config import MMFreeConfig

        self.manifest = manifest
        self.path = path
        self.config = MMFreeConfig.from_dict(manifest["config"])
        self.dims = LY.Dims.of(self.config)
        self.vocab_size = self.dims.vocab
        self._blob = blob
        fm = manifest.get("formats") or {}
        for key in ("res_frac", "act_frac"):
            if not IC._is_int(fm.get(key)) or not N.FRAC_MIN <= fm[key] <= N.FRAC_MAX:
                raise ImageError(f"manifest formats.{key} must be an integer in [{N.FRAC_MIN}, {N.FRAC_MAX}], "
                                 f"got {fm.get(key)!r}")
        self.res_frac, self.act_frac = fm["res_frac"], fm["act_frac"]
        self._check_tensors()
        IC.check_constants(manifest, self.dims, fm)
        IC.check_values(self.tensor, self.dims)
        IC.check_digest(manifest)
        self.consts = manifest["bitlinears"]
        self._ternary: dict[str, np.ndarray] = {}
        self.bitlinear_specs = {b.name: b for b in LY.bitlinears(self.dims)}
        if max(self.dims.d, self.dims.inter) > N.MAX_K_FLOAT32_EXACT:
            raise ImageError("projection width exceeds the float32-exact accumulator bound of the reference")

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify_checksums: bool = True) -> IntModel:
        """Open an image directory; refuses (with the reason) on version, shape or checksum mismatch."""
        path = Path(path)
        if not path.is_dir():
            raise ImageError(f"{path} is not an export directory (create one with `mmfree export`)")
        m = read_manifest(path)
        wb = path / "weights.bin"
        if not wb.is_file():
            raise ImageError(f"{wb} is missing; re-export the model with `mmfree export`")
        if wb.stat().st_size != m["weights_bytes"]:
            raise ImageError(f"{wb} has {wb.stat().st_size} bytes, the manifest says {m['weights_bytes']}; "
                             "the export is incomplete or was modified")
        blob = np.fromfile(wb, dtype=np.uint8)
        if verify_checksums:
            digest = hashlib.sha256(blob.tobytes()).hexdigest()
            if digest != m["weights_sha256"]:
                bad = _changed_tensors(m["tensors"], blob)
                raise ImageError(f"{wb} fails its checksum (tensors changed: {', '.join(bad) or 'padding only'}); "
                                 "re-export the model")
        return cls(m, blob, path)

    def _check_tensors(self) -> None:
        IC.check_layout(self.manifest, self.dims)
        if self._blob.size != self.manifest["weights_bytes"]:
            raise ImageError(f"weights.bin has {self._blob.size} bytes, the manifest says "
                             f"{self.manifest['weights_bytes']}; the export is incomplete or was modified")
        if not np.array_equal(self.tensor("lut.sigmoid_tail"), N.sigmoid_tail_table()) or \
                not np.array_equal(self.tensor("lut.rsqrt"), N.rsqrt_table()):
            raise ImageError("the image's lookup tables differ from this numerics spec; re-export the model")

    def tensor(self, name: str) -> np.ndarray:
        t = self.manifest["tensors"][name]
        raw = self._blob[t["offset"]:t["offset"] + t["nbytes"]]
        return raw.view(t["dtype"]).reshape(t["shape"])

    def vec(self, name: str) -> np.ndarray:
        return self.tensor(name).astype(np.int64)

    def ternary(self, name: str) -> np.ndarray:
        """The ternary matrix ``[N, K]`` of BitLinear ``name`` as float32 (cached)."""
        w = self._ternary.get(name)
        if w is None:
            spec = self.bitlinear_specs[name]
            w = N.unpack_ternary(self.tensor(spec.w), spec.K).astype(np.float32)
            self._ternary[name] = w
        return w

    def warm(self) -> IntModel:
        """Unpack every matrix now (otherwise each is unpacked on first use)."""
        for name in self.bitlinear_specs:
            self.ternary(name)
        return self

    # ---- building blocks ----------------------------------------------------------------------------------
    def bitlinear(self, name: str, u: np.ndarray) -> np.ndarray:
        """Output ``[k, N]`` (int32 values in the BitLinear's output format) for inputs ``u`` int64 ``[k, K]``."""
        spec = self.bitlinear_specs[name]
        codes, P, S, sz = N.quantize(u, self.vec(spec.n), self.vec(spec.nw))
        return self.matvec(name, codes, P, S, sz)

    def matvec(self, name: str, codes: np.ndarray, P: np.ndarray, S: np.ndarray, sz: np.ndarray) -> np.ndarray:
        c = self.consts[name]
        acc = (codes.astype(np.float32) @ self.ternary(name).T).astype(np.int64)   # exact, see module doc
        M, shift = N.output_multiplier(P, S, sz, c["c_m"], c["c_e"])
        return N.dequantize(acc, M, shift)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Embedding rows ``[k, d]`` in Q(res_frac)."""
        return self.tensor("embed")[tokens].astype(np.int64)

    def to_float(self, values: np.ndarray, kind: str = "act") -> np.ndarray:
        """Integer activations (``kind`` "act": logits, gates, h; "res": residual) as floats, for reporting."""
        return N.act_to_float(values, self.act_frac if kind == "act" else self.res_frac)

    def check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if t.size == 0:
            raise ValueError("no tokens given")
        bad = t[(t < 0) | (t >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token ids {sorted(set(bad.tolist()))[:8]} are outside the vocabulary [0, {self.vocab_size})")
        return t

    # ---- the model ------------------------------------------------------------------------------------------
    def initial_state(self) -> IntState:
        return IntState(np.zeros((self.dims.layers, self.dims.d), dtype=np.int64))

    def forward(self, h0: np.ndarray, tokens, taps: dict | None = None, parents=None) -> tuple[np.ndarray, np.ndarray]:
        """k tokens in one pass over the weights. Returns (h after each position ``[k, L, d]``, logits ``[k, V]``).

        ``parents`` (optional, length k) makes the k tokens a tree: token j continues from the state after
        token ``parents[j]`` (``-1``: from ``h0``), with ``parents[j] < j``. Default: a chain (``j - 1``).
        With ``h0`` of shape ``[B, L, d]`` (B independent streams) the tokens form a forest: a root
        ``parents[j] = -1 - s`` continues from stream ``s``'s start state ``h0[s]`` (:func:`forest_of`).
        ``taps``, when a dict, receives every intermediate vector by name (for hardware debugging).
        """
        tokens = self.check_tokens(tokens)
        k = len(tokens)
        h0 = np.asarray(h0)
        starts = h0 if h0.ndim == 3 else h0[None]
        if starts.shape[1:] != (self.dims.layers, self.dims.d):
            raise ValueError(f"start state must be [L, d] or [B, L, d] with L, d = {self.dims.layers}, "
                             f"{self.dims.d}; got shape {tuple(h0.shape)}")
        if parents is None:
            parents = list(range(-1, k - 1))
        parents = [int(q) for q in parents]
        B = len(starts)
        if len(parents) != k or any(not -B <= q < j for j, q in enumerate(parents)):
            raise ValueError(f"parents must have {k} entries with -{B} <= parents[j] < j "
                             f"(-1 - s: a root of stream s of {B}), got {parents}")
        I = self.dims.inter
        x = self.embed(tokens)                                                   # [k, d]
        hs = np.zeros((k, self.dims.layers, self.dims.d), dtype=np.int64)

        def tap(name, v):
            if taps is not None:
                taps[name] = v.copy()

        tap("embed", x)
        for li in range(self.dims.layers):
            p = f"layers.{li}."
            n = self.vec(p + "attn_norm.n")
            up, _ = N.normalize_input(x)
            # i, f, g share the input and its pre-norm: one sum of squares, three code vectors
            S, sz = N.sum_squares(up * n)
            out = {}
            for proj in ("i_proj", "f_proj", "g_proj"):
                pw = up * self.vec(p + f"attn.{proj}.nw")
                P = np.max(np.abs(pw), axis=-1, keepdims=True)
                out[proj] = self.matvec(p + f"attn.{proj}", N.codes_from(pw, P), P, S, sz)
                tap(p + f"attn.{proj}", out[proj])
            af = self.act_frac
            rate = N.forget_rate(out["f_proj"], self.vec(p + "attn.one_minus_lb"), af)
            s = N.silu(out["i_proj"], af)
            for t in range(k):                                                   # elementwise in time
                prev = starts[-1 - parents[t], li] if parents[t] < 0 else hs[parents[t], li]
                hs[t, li] = N.hgrn_update(prev, s[t], rate[t])
            tap(p + "attn.h", hs[:, li])
            u = N.mul_act(out["g_proj"], N.silu(hs[:, li], af))
            o = self.bitlinear(p + "attn.o_proj", u)
            tap(p + "attn.o_proj", o)
            x = N.saturate(x + o)
            gu = self.bitlinear(p + "mlp.gate_proj", x)
            tap(p + "mlp.gate_proj", gu)
            down = self.bitlinear(p + "mlp.down_proj", N.mul_act(N.silu(gu[:, :I], af), gu[:, I:]))
            tap(p + "mlp.down_proj", down)
            x = N.saturate(x + down)
            tap(p + "out", x)
        logits = self.bitlinear("lm_head", x)
        tap("logits", logits)
        return hs, logits

    def step(self, state: IntState, token: int) -> tuple[IntState, np.ndarray]:
        """One token: returns (new state, int logits ``[V]`` in Q(act_frac))."""
        hs, logits = self.forward(state.h, [token])
        return IntState(hs[-1]), logits[0]

    def prefill(self, state: IntState, tokens) -> tuple[IntState, np.ndarray]:
        """Feed a prompt; returns (state after the last token, logits of the last token)."""
        hs, logits = self.forward(state.h, tokens)
        return IntState(hs[-1]), logits[-1]

    def verify(self, state: IntState, tokens, parents=None) -> tuple[list[IntState], np.ndarray]:
        """k tokens in one weight pass: (state after each position, logits ``[k, V]``).

        With ``parents`` the tokens form a tree (see :meth:`forward`): a whole draft tree in one pass."""
        hs, logits = self.forward(state.h, tokens, parents=parents)
        return [IntState(h) for h in hs], logits

    def verify_forest(self, states, tokens, parents) -> tuple[list[IntState], np.ndarray]:
        """B independent streams in one weight pass: a forest of k tokens (:func:`forest_of`).

        ``states``: the B streams' start states (``IntState`` each); ``parents[j] = -1 - s`` makes token j a
        root continuing from ``states[s]``, otherwise ``0 <= parents[j] < j`` as in :meth:`verify`. Returns
        (state after each position, logits ``[k, V]``), exactly what each stream's own :meth:`verify` gives
        for its tokens. Raises ``ValueError`` for no states or a parent outside ``[-B, j)``."""
        states = list(states)
        if not states:
            raise ValueError("verify_forest needs at least one stream state")
        hs, logits = self.forward(np.stack([s.h for s in states]), tokens, parents=parents)
        return [IntState(h) for h in hs], logits

    def greedy(self, logits: np.ndarray) -> np.ndarray:
        return N.argmax(logits)


def forest_of(trees) -> tuple[list[int], list[int], list[int]]:
    """Merge B per-stream trees into one forest pass (:meth:`IntModel.verify_forest`).

    ``trees``: one ``(tokens, parents)`` per stream, ``parents`` None for a chain or one index per token
    (``-1`` for the stream's root(s), else ``< own index``), as :meth:`IntModel.verify` takes them. Returns
    ``(tokens, parents, offsets)``: the concatenated tokens, their parents in the forest (a root of stream s
    becomes ``-1 - s``, the others shifted by the stream's offset) and each stream's first position
    (``offsets[s]``; stream s holds positions ``offsets[s] .. offsets[s + 1] - 1``, ``offsets[B]`` = k).
    Raises ``ValueError`` for a stream with no tokens or a bad parent list."""
    tokens, parents, offsets = [], [], []
    for s, (toks, par) in enumerate(trees):
        toks = [int(t) for t in toks]
        n = len(toks)
        if n == 0:
            raise ValueError(f"stream {s} has no tokens; give every stream at least one")
        par = list(range(-1, n - 1)) if par is None else [int(q) for q in par]
        if len(par) != n or any(not -1 <= q < j for j, q in enumerate(par)):
            raise ValueError(f"stream {s}: parents must have {n} entries with -1 <= parents[j] < j, got {par}")
        base = len(tokens)
        offsets.append(base)
        tokens += toks
        parents += [-1 - s if q < 0 else base + q for q in par]
    return tokens, parents, offsets + [len(tokens)]


class IntBackend:
    """:class:`IntModel` (or any model with its ``initial_state`` / ``prefill`` / ``to_float`` / ``vocab_size``)
    as a decoding backend for :func:`mmfree.pymodel.generate.generate`."""

    def __init__(self, model: IntModel):
        self.model = model
        self.vocab_size = model.vocab_size
        self.state = model.initial_state()

    def reset(self):
        self.state = self.model.initial_state()

    def feed(self, ids):
        self.state, logits = self.model.prefill(self.state, ids)
        return self.model.to_float(logits)


def export_cache_key(src: Path) -> str:
    """The cached export's key: a digest of EVERY input the export and its consumers read (config.json, the
    safetensors index and shards, tokenizer.json and its config files, whose absence counts too) and of the
    spec's sources."""
    from mmfree.pymodel.checkpoint import safetensor_files
    from mmfree.pymodel.export import TOKENIZER_CONFIG_FILES

    key = hashlib.sha256()
    files = [src / "config.json", src / "model.safetensors.index.json", *safetensor_files(src), src / "tokenizer.json",
             *(src / name for name in TOKENIZER_CONFIG_FILES)]
    for f in files:
        key.update(f.name.encode() + b"\0")
        key.update(f.read_bytes() if f.is_file() else b"<absent>")
        key.update(b"\0")
    key.update(f"spec{N.SPEC_VERSION}-fmt{LY.FORMAT_VERSION}".encode())
    for mod in ("numerics.py", "layout.py", "export.py"):   # any change to the spec invalidates cached exports
        key.update(resources.files("mmfree.pymodel").joinpath(mod).read_bytes())
    return key.hexdigest()[:16]


def open_int_model(model: str) -> tuple[IntModel, str]:
    """An IntModel from an export directory, or from a float checkpoint / "default" (exported into the
    cache on first use). Returns (model, directory to take the tokenizer from)."""
    p = Path(model)
    if str(model) != "default" and (p / "manifest.json").exists():
        return IntModel.load(p), str(p)
    from mmfree.config import cache_dir
    from mmfree.pymodel.checkpoint import resolve
    from mmfree.pymodel.export import export_checkpoint

    src = resolve(model)
    key = export_cache_key(src)
    out = cache_dir() / "exports" / key
    if not (out / "manifest.json").exists():
        export_checkpoint(str(model), out, force=True)
    return IntModel.load(out), str(src)   # the checkpoint's tokenizer files (tokenizer_config.json included)
