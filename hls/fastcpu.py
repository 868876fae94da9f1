"""Fast CPU decode: the integer reference's decode step in C++, weights packed once to 2 bits.

:class:`FastIntModel` runs one token of :class:`mmfree.pymodel.intmodel.IntModel` in one C call
(``hls/cpu/fast_decode.cpp``): the HLS kernels' integer primitives (``hls/src/mmfree_numerics.h``, checked
exactly against :mod:`mmfree.pymodel.numerics` by the C-simulation tests, constants from the generated
``mmfree_spec.h``) around a SIMD ternary GEMV (``hls/cpu/ternary_gemv.cpp``: 2 bits per weight, AVX2
``maddubs`` where the CPU has it, a plain loop otherwise, OpenMP over rows). Built with g++ ``-O3
-march=native`` like the HLS C-simulation (cached under ``$MMFREE_CACHE/fastcpu``), loaded with ctypes.
Every ternary product accumulates exactly in int32 and every other step is the spec's integer arithmetic in the
same order as ``IntModel.forward``, so logits and state are **equal** to IntModel's (tests), and greedy tokens
equal ``mmfree generate --backend int``.

Weights read per token: 2 bits each (83 MB at the 370M shape) instead of IntModel's float32 copies (32 bits).
:func:`random_image` builds a valid image of any shape from random integers (no float model, no export), so
the 370M / 1.3B / 2.7B shapes can be timed on a machine that could not hold their float model.

It lives in ``mmfree.hls`` because it compiles the HLS numerics header; it imports nothing of rtl/sim/boards.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.hls import spec as SP
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N
from mmfree.pymodel.intmodel import IntBackend, IntModel, IntState

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "cpu" / "fast_decode.cpp", HERE / "cpu" / "ternary_gemv.cpp", HERE / "src" / "mmfree_numerics.h"]
LIB_NAME = "libmmfree_fastcpu.so"
CXXFLAGS = ["-std=c++14", "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-Wall", "-Wextra",
            "-Wno-unknown-pragmas", "-Wno-unused-label"]
BLOCK = 128                       # columns per packed block (32 bytes)
MAX_KP = 1 << 22                  # 2 * 127 * Kp < 2**31


# ======================================================================================================
# the library
# ======================================================================================================
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def build_library(scalar: bool = False, cache: Path | None = None) -> Path:
    """Compile the decoder (cached, keyed on the sources, the generated spec header, the flags, the compiler
    and this CPU's feature flags, since ``-march=native``). ``scalar`` builds the GEMV's portable loop
    instead of AVX2 (tests compare both). Raises MmfreeError when no compiler is found or compilation fails."""
    from mmfree.atomic import atomic_path, file_lock
    from mmfree.config import cache_dir

    cxx = next((shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++") if c and shutil.which(c)), None)
    if cxx is None:
        raise MmfreeError("the fast CPU decode needs a C++ compiler: install g++ (`apt-get install g++`) or set CXX")
    flags = CXXFLAGS + (["-DMMFREE_FORCE_SCALAR"] if scalar else [])
    h = hashlib.sha256(json.dumps([cxx, flags, _cpu_flags(), SP.header_text()]).encode())
    for src in SOURCES:
        h.update(src.read_bytes())
    root = (cache or cache_dir()) / "fastcpu"
    out = root / f"decode-{h.hexdigest()[:16]}"
    lib = out / LIB_NAME
    if lib.exists():
        return lib
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".build.lock"):
        if lib.exists():
            return lib
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for src in SOURCES:
                shutil.copyfile(src, tmp / src.name)
            (tmp / SP.HEADER_NAME).write_text(SP.header_text())
            cmd = [cxx, *flags, f"-I{tmp}", str(tmp / "fast_decode.cpp"), "-o", str(tmp / LIB_NAME)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                raise MmfreeError(f"running {cxx} failed: {exc}") from exc
            if res.returncode != 0:
                raise MmfreeError("compiling the fast CPU decoder failed:\n" + " ".join(cmd) + "\n"
                                  + (res.stderr or res.stdout)[-4000:])
            (tmp / "build.json").write_text(json.dumps({"command": cmd, "warnings": res.stderr}, indent=1) + "\n")
    return lib


_P = ctypes.c_void_p


class Library:
    """The compiled decoder (ctypes): :meth:`gemv` (the ternary product alone) and the whole step."""

    def __init__(self, scalar: bool = False):
        self.lib = ctypes.CDLL(str(build_library(scalar)))
        self.lib.mmfree_fast_gemv.argtypes = [_P, ctypes.c_int64, ctypes.c_int64, _P, _P, ctypes.c_int64, _P,
                                              ctypes.c_int]
        self.lib.mmfree_fast_gemv.restype = None
        self.lib.mmfree_fast_step.argtypes = [_P] * 6 + [ctypes.c_uint64] + [ctypes.c_int] * 6 + [ctypes.c_int32,
                                                                                                   _P, _P]
        self.lib.mmfree_fast_step.restype = ctypes.c_int
        self.simd = bool(self.lib.mmfree_fast_simd())

    def gemv(self, packed: np.ndarray, codes: np.ndarray, threads: int = 1) -> np.ndarray:
        """``codes @ T.T`` exactly: ``packed`` uint8 ``[N, Kp/4]`` from :func:`pack_2bit`, ``codes`` int
        ``[k, K]`` with K <= Kp, values in [-128, 127]. Returns int64 ``[k, N]``."""
        n, kp = packed.shape[0], packed.shape[1] * 4
        codes = np.atleast_2d(codes)
        k, K = codes.shape
        if K > kp:
            raise ValueError(f"codes have {K} columns, the packed matrix {kp}")
        x = np.zeros((k, kp), dtype=np.int8)
        x[:, :K] = codes
        xsum = x.sum(axis=1, dtype=np.int32)
        out = np.empty((k, n), dtype=np.int32)
        packed = np.ascontiguousarray(packed)
        self.lib.mmfree_fast_gemv(packed.ctypes.data, n, kp, x.ctypes.data, xsum.ctypes.data, k,
                                  out.ctypes.data, threads)
        return out.astype(np.int64)


def pack_2bit(t: np.ndarray) -> np.ndarray:
    """Ternary ``[N, K]`` (values in {-1, 0, 1}) as the GEMV's layout: uint8 ``[N, Kp/4]``, Kp = K rounded
    up to 128, byte j of block b holding columns ``128 b + 32 s + j`` (s = 0..3) in bits 2s..2s+1 as w + 1."""
    t = np.asarray(t)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D ternary matrix, got shape {t.shape}")
    n, k = t.shape
    kp = -(-k // BLOCK) * BLOCK
    if kp > MAX_KP:
        raise ValueError(f"K = {k} is above the kernel's exact bound {MAX_KP}")
    u = np.ones((n, kp), dtype=np.uint8)
    u[:, :k] = (t.astype(np.int8) + 1).astype(np.uint8)
    if u.max(initial=0) > 2:
        raise ValueError("the matrix holds values outside {-1, 0, 1}")
    q = u.reshape(n, kp // BLOCK, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(n, kp // 4)


# ======================================================================================================
# the model
# ======================================================================================================
class FastIntModel:
    """An image decoded one token per C call; logits and state equal :class:`IntModel`'s exactly.

    ``FastIntModel(im, threads=1)``: packs every BitLinear of ``im`` to 2 bits once. ``threads``: OpenMP
    threads of the GEMV (default 1: on a shared or oversubscribed machine OpenMP threads spin against each
    other and run many times slower; give the free core count on a machine of your own, bench/fast_cpu.py
    measures both). Same decode interface as IntModel: :meth:`initial_state`, :meth:`step`,
    :meth:`prefill`, :meth:`to_float`, ``vocab_size``."""

    def __init__(self, im: IntModel, threads: int = 1, scalar: bool = False):
        if not isinstance(threads, int) or threads < 1:
            raise MmfreeError(f"threads must be an integer >= 1, got {threads!r}")
        self.im, self.threads, self.dims, self.vocab_size = im, threads, im.dims, im.vocab_size
        self.lib = Library(scalar)
        chunks, pk, pos = [], {}, 0
        for name, spec in im.bitlinear_specs.items():
            p = pack_2bit(N.unpack_ternary(im.tensor(spec.w), spec.K))
            pk[name], pos = pos, pos + p.nbytes
            chunks.append(p.reshape(-1))
        self.packed = np.concatenate(chunks)
        tens, L = im.manifest["tensors"], self.dims.layers
        lt_names, lbs = SP.layer_tensor_names(), SP.layer_bitlinears()
        self._lt = np.array([[tens[f"layers.{i}.{n}"]["offset"] for n in lt_names] for i in range(L)], np.uint64)
        self._pk = np.array([[pk[f"layers.{i}.{b.name}"] for b in lbs] for i in range(L)], np.uint64)
        self._cst = np.array([[v for b in lbs for v in (im.consts[f"layers.{i}.{b.name}"]["c_m"],
                                                         im.consts[f"layers.{i}.{b.name}"]["c_e"])]
                              for i in range(L)], np.int64)
        h = im.consts["lm_head"]
        self._head = np.array([tens["norm.n"]["offset"], tens["lm_head.nw"]["offset"], pk["lm_head"], h["c_m"],
                               h["c_e"]], np.int64)
        self._image = np.ascontiguousarray(im._blob)

    def packed_bytes(self) -> int:
        """Bytes of packed ternary weights one decode step reads."""
        return int(self.packed.nbytes)

    def initial_state(self) -> IntState:
        return self.im.initial_state()

    def to_float(self, values, kind: str = "act"):
        return self.im.to_float(values, kind)

    def step(self, state: IntState, token: int) -> tuple[IntState, np.ndarray]:
        """One token: (new state, int logits ``[V]``), equal to ``IntModel.step``."""
        token = int(self.im.check_tokens([token])[0])
        d = self.dims
        h = np.ascontiguousarray(state.h, dtype=np.int32)
        logits = np.empty(d.vocab, dtype=np.int32)
        rc = self.lib.lib.mmfree_fast_step(
            self._image.ctypes.data, self.packed.ctypes.data, self._lt.ctypes.data, self._pk.ctypes.data,
            self._cst.ctypes.data, self._head.ctypes.data, int(self.im.manifest["tensors"]["embed"]["offset"]),
            d.layers, d.d, d.inter, d.vocab, self.im.act_frac, self.threads, token, h.ctypes.data, logits.ctypes.data)
        if rc != 0:
            raise MmfreeError(f"the fast decoder refused token {token} (act_frac {self.im.act_frac})")
        return IntState(h.astype(np.int64)), logits.astype(np.int64)

    def prefill(self, state: IntState, tokens) -> tuple[IntState, np.ndarray]:
        """Tokens one after another (what IntModel.prefill computes in one pass); (state, last logits)."""
        logits = None
        for t in self.im.check_tokens(tokens):
            state, logits = self.step(state, int(t))
        return state, logits


# ======================================================================================================
# random images of any shape
# ======================================================================================================
def _random_packed(rng, n: int, k: int) -> np.ndarray:
    """Packed ternary ``[n, row_bytes(k)]`` with uniform random trits (2/3 non-zero) and zero padding trits."""
    rb, full, r = N.row_bytes(k), k // N.TRITS_PER_BYTE, k % N.TRITS_PER_BYTE
    zero_byte = sum(3**i for i in range(N.TRITS_PER_BYTE))              # every trit 0 (digit 1)
    a = np.full((n, rb), zero_byte, dtype=np.uint8)
    a[:, :full] = rng.integers(0, 3**N.TRITS_PER_BYTE, (n, full), dtype=np.uint8)
    if r:
        a[:, full] = rng.integers(0, 3**r, n) + sum(3**i for i in range(r, N.TRITS_PER_BYTE))
    return a


def random_image(dims: LY.Dims, seed: int = 0) -> tuple[dict, np.ndarray]:
    """(manifest, blob) of a valid image of shape ``dims`` from random integers: uniform random ternary
    weights (2/3 non-zero; trained models have about 0.6), norm vectors near 1, lower bounds in [0, 1], constants
    sized like a trained
    model's (alpha ~ 1/sqrt(K)). For timing only: its tokens mean nothing. Load with ``IntModel(*random_image(d))``."""
    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.export import seal_manifest

    rng = np.random.default_rng(seed)
    cfg = MMFreeConfig(vocab_size=dims.vocab, hidden_size=dims.d, num_hidden_layers=dims.layers,
                       intermediate_size=dims.inter)
    formats = {"res_frac": 22, "act_frac": 24}
    specs = LY.tensors(dims)
    offs, total = LY.offsets(specs)
    blob = np.zeros(total, dtype=np.uint8)
    consts = {}
    bl = {b.w: b for b in LY.bitlinears(dims)}
    vec_exp = N.vector_from_float(np.ones(4))[1]
    for t in specs:
        if t.name in bl:
            b = bl[t.name]
            a = _random_packed(rng, b.N, b.K)
            F_out = formats[LY.output_format(b.name) + "_frac"]
            C = (1 / np.sqrt(b.K)) * np.sqrt(b.K) / N.CODE_MAX * 2.0 ** (F_out - 16)
            c_m, c_e = N.constant_from_float(C)
            consts[b.name] = {"K": b.K, "N": b.N, "alpha": 1 / np.sqrt(b.K), "F_n": vec_exp, "F_nw": vec_exp,
                              "F_out": F_out, "c_m": c_m, "c_e": c_e, "nonzero_fraction": 2 / 3}
        elif t.name == "embed":
            a = rng.integers(-(1 << formats["res_frac"]), 1 << formats["res_frac"], t.shape, dtype=np.int32)
        elif t.name == "lut.sigmoid_tail":
            a = N.sigmoid_tail_table()
        elif t.name == "lut.rsqrt":
            a = N.rsqrt_table()
        elif t.name.endswith("one_minus_lb"):
            a = N.q31_from_float(rng.uniform(0.5, 1.0, t.shape)).astype(np.uint32)
        else:
            a = N.vector_from_float(rng.uniform(0.8, 1.2, t.shape))[0]
        raw = np.ascontiguousarray(a, dtype=t.dtype).view(np.uint8).reshape(-1)
        blob[offs[t.name]:offs[t.name] + raw.size] = raw
    tensors = {t.name: {"offset": offs[t.name], "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes,
                        "sha256": ""} for t in specs}
    manifest = {"format": LY.FORMAT, "format_version": LY.FORMAT_VERSION, "spec_version": N.SPEC_VERSION,
                "row_align_bytes": N.ROW_ALIGN_BYTES, "source": f"random (seed {seed})", "config": cfg.to_dict(),
                "formats": formats, "dims": {"vocab": dims.vocab, "d": dims.d, "inter": dims.inter,
                                             "layers": dims.layers},
                "bitlinears": consts, "tensors": tensors, "weights_bytes": total,
                "weights_sha256": hashlib.sha256(bytes(blob)).hexdigest()}
    for t in specs:
        tensors[t.name]["sha256"] = hashlib.sha256(bytes(blob[offs[t.name]:offs[t.name] + t.nbytes])).hexdigest()
    seal_manifest(manifest)           # a valid image: IntModel.load checks every byte of it
    return manifest, blob


class FastBackend(IntBackend):
    """:class:`FastIntModel` as a decoding backend for :func:`mmfree.pymodel.generate.generate` (it has
    IntModel's decode interface, so the integer reference's backend serves it)."""
