"""C-simulation of the HLS kernels: g++ builds them into a shared library, ctypes calls them.

:func:`build_library` compiles ``hls/src`` (with ``mmfree_spec.h`` generated from the numerics spec) into
``<cache>/hls/csim-<hash>/libmmfree_hls.so``; the hash covers the sources, the generated header, the
flags and the compiler version, so an unchanged build is reused (also across pytest workers: a file
lock serialises builds). :class:`CSim` wraps every kernel with a numpy interface. Each wrapper checks
its inputs (dtypes, value ranges, matching sizes) in Python *before* calling C and raises ``ValueError``
naming the sizes or values at fault; the C kernels check sizes again and return a status code.

The C-simulation library is sized to the spec maximum (``MAX_K`` for d and the intermediate size).
It keeps its buffers in static storage: one call at a time per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.atomic import file_lock
from mmfree.hls import spec as SP
from mmfree.pymodel import numerics as N

SRC_DIR = Path(str(resources.files("mmfree.hls") / "src"))
#: The synthesisable kernel sources (every Vitis project adds all of them; set_top picks one).
KERNEL_SOURCES = ["ternary_matvec.cpp", "quantize.cpp", "mlgru.cpp", "layer.cpp"]
HEADERS = ["mmfree_hls.h", "mmfree_numerics.h", "mmfree_blocks.h"]
#: ctypes entry points (C-simulation only) and the co-simulation test bench.
CSIM_SOURCES = ["csim_api.cpp"]
TB_SOURCE = "tb_main.cpp"
#: C++14: what Vitis HLS compiles; warnings on, except HLS pragmas and loop labels (HLS names loops by them).
CXXFLAGS = ["-std=c++14", "-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Wno-unused-label"]
LIB_NAME = "libmmfree_hls.so"
ABI_VERSION = 2

#: Kernel status codes (mmfree_hls.h).
STATUS = {
    1: "a size is zero or negative",
    2: "a size exceeds the kernel's on-chip buffers (MMFREE_MAX_D / MMFREE_MAX_I)",
    3: f"a size exceeds the numerics spec (MAX_K = {N.MAX_K})",
    4: "the activation fractional bits are out of range",
}

INT32_LO, INT32_HI = N.INT32_MIN, N.INT32_MAX
#: Largest BitLinear input magnitude the kernels accept: products of two int32 activations.
U_LIMIT = 1 << 62
#: Per-channel mantissas (pre-norm weight n, folded weight nw): signed VEC_BITS-bit values.
VEC_LO, VEC_HI = -(1 << (N.VEC_BITS - 1)), (1 << (N.VEC_BITS - 1)) - 1
#: Largest P = max|u' * nw| (and max|u' * n|) the quantizer can produce: 2**U_BITS * 2**(VEC_BITS-1).
P_MAX = (1 << N.U_BITS) << (N.VEC_BITS - 1)
#: The sum of squares (numerics.sum_squares) of at most MAX_K terms of at most 2**ZS_BITS each, and its
#: shift: sz = max(0, bitlen(max|z|) - ZS_BITS) <= bitlen(P_MAX) - ZS_BITS.
S_MAX = N.MAX_K << (2 * N.ZS_BITS)
SZ_MAX = P_MAX.bit_length() - N.ZS_BITS
#: The BitLinear constant's mantissa range (numerics.constant_from_float) and a generous exponent bound.
CM_LO, CM_HI = 1 << (N.M_BITS - 1), (1 << N.M_BITS) - 1
CE_ABS = (1 << 20) - 1
#: Activation fractional bits the nonlinearities accept: (SIG_STEPS_LOG2, FRAC_MAX].
FRAC_LO, FRAC_HI = N.SIG_STEPS_LOG2 + 1, N.FRAC_MAX


# ======================================================================================================
# building
# ======================================================================================================
def find_compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``g++``, else ``c++``. Raises MmfreeError when there is none."""
    for cand in (os.environ.get("CXX"), "g++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise MmfreeError("no C++ compiler found for the HLS C-simulation: install g++ "
                      "(`apt-get install g++`) or set CXX")


def compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MmfreeError(f"cannot run the C++ compiler {cxx}: {exc}") from exc
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else cxx


def define_flags(defines: dict[str, int]) -> list[str]:
    return [f"-D{k}={v}" for k, v in defines.items()]


def write_sources(dest: Path, include_tb: bool = False) -> list[Path]:
    """Copy the C++ sources into ``dest`` and write the generated ``mmfree_spec.h`` beside them."""
    dest.mkdir(parents=True, exist_ok=True)
    names = HEADERS + KERNEL_SOURCES + CSIM_SOURCES + ([TB_SOURCE] if include_tb else [])
    out = []
    for n in names:
        shutil.copyfile(SRC_DIR / n, dest / n)
        out.append(dest / n)
    (dest / SP.HEADER_NAME).write_text(SP.header_text())
    out.append(dest / SP.HEADER_NAME)
    return out


def build_library(max_d: int = N.MAX_K, max_i: int = N.MAX_K, sanitize: bool = False,
                  cache: Path | None = None) -> tuple[Path, bool]:
    """Compile the kernels and the ctypes API into a shared library (reused when unchanged).

    ``max_d``/``max_i`` size the on-chip buffers (default: the spec maximum); ``sanitize`` adds
    ``-fsanitize=undefined`` (reports signed overflow and bad shifts on stderr). Returns
    ``(path, built)`` where ``built`` is False when a cached library was reused. Raises MmfreeError when
    no compiler is found or compilation fails (with the compiler's messages).
    """
    from mmfree.config import cache_dir

    cxx = find_compiler()
    defines = SP.limit_defines(max_d, max_i)
    flags = CXXFLAGS + ["-fPIC", "-shared"] + (["-fsanitize=undefined", "-g"] if sanitize else [])
    h = hashlib.sha256()
    for n in HEADERS + KERNEL_SOURCES + CSIM_SOURCES:
        h.update(n.encode() + b"\0" + (SRC_DIR / n).read_bytes() + b"\0")
    h.update(SP.header_text().encode())
    h.update(json.dumps([flags, defines, compiler_version(cxx)]).encode())
    root = (cache or cache_dir()) / "hls"
    out = root / f"csim-{h.hexdigest()[:16]}"
    lib = out / LIB_NAME
    if lib.exists():
        return lib, False
    with file_lock(root / ".build.lock"):
        if lib.exists():
            return lib, False
        from mmfree.atomic import atomic_path

        with atomic_path(out) as tmp:
            srcs = write_sources(tmp)
            cmd = [cxx, *flags, *define_flags(defines), f"-I{tmp}",
                   *[str(p) for p in srcs if p.suffix == ".cpp"], "-o", str(tmp / LIB_NAME)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as exc:
                raise MmfreeError(f"running {cxx} failed: {exc}") from exc
            if res.returncode != 0:
                raise MmfreeError("compiling the HLS kernels for C-simulation failed:\n"
                                  + " ".join(cmd) + "\n" + (res.stderr or res.stdout)[-6000:])
            (tmp / "build.json").write_text(json.dumps({
                "command": cmd, "compiler": compiler_version(cxx), "defines": defines,
                "warnings": res.stderr}, indent=1) + "\n")
    return lib, True


# ======================================================================================================
# argument checks
# ======================================================================================================
def _ints(name: str, a, lo: int, hi: int, ndim: int | None = 1) -> np.ndarray:
    """``a`` as a C-contiguous int64 array after checking dtype, rank and range [lo, hi]."""
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size:
        mn, mx = int(arr.min()), int(arr.max())
        if mn < lo or mx > hi:
            raise ValueError(f"{name} has values in [{mn}, {mx}], outside the allowed [{lo}, {hi}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _same_shape(**arrays: np.ndarray) -> tuple[int, ...]:
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("sizes do not match: " + ", ".join(f"{k} has shape {s}" for k, s in shapes.items()))
    return next(iter(shapes.values()))


def _length(name: str, a: np.ndarray, k: int, what: str) -> None:
    if len(a) != k:
        raise ValueError(f"{name} has {len(a)} values but {what} is {k}")


def _ptr(a: np.ndarray, ctype):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


_I64, _I32, _I16, _I8, _U8, _U32 = (ctypes.c_int64, ctypes.c_int32, ctypes.c_int16, ctypes.c_int8,
                                    ctypes.c_uint8, ctypes.c_uint32)
_P = ctypes.POINTER

_SIGNATURES = {
    "mmfree_csim_last_error": ([], ctypes.c_char_p),
    "mmfree_csim_info": ([_P(_I64), ctypes.c_int], ctypes.c_int),
    "mmfree_csim_sigmoid_q31": ([_P(_I64), _P(_I64), _I64, ctypes.c_int], None),
    "mmfree_csim_silu": ([_P(_I64), _P(_I64), _I64, ctypes.c_int], None),
    "mmfree_csim_forget_rate": ([_P(_I64), _P(_I64), _P(_I64), _I64, ctypes.c_int], None),
    "mmfree_csim_hgrn_update": ([_P(_I64), _P(_I64), _P(_I64), _P(_I64), _I64], None),
    "mmfree_csim_output_multiplier": ([_P(_I64)] * 7 + [_I64], None),
    "mmfree_csim_dequantize_values": ([_P(_I64)] * 4 + [_I64], None),
    "mmfree_csim_normalize_input": ([_P(_I64), ctypes.c_int, _P(_I64), _P(_I64)], ctypes.c_int),
    "mmfree_csim_sum_squares": ([_P(_I64), ctypes.c_int, _P(_I64), _P(_I64)], ctypes.c_int),
    "mmfree_csim_codes_from": ([_P(_I64), ctypes.c_int, _I64, _P(_I8)], ctypes.c_int),
    "mmfree_csim_ternary_matvec": ([_P(_U8), _P(_I8), _P(_I32), ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "mmfree_csim_rmsnorm_quantize": ([_P(_I64), "vec", "vec", _P(_I8), _P(_I64), _P(_I64), _P(_I32), ctypes.c_int],
                                     ctypes.c_int),
    "mmfree_csim_dequantize": ([_P(_I32), _P(_I32), _I64, _I64, _I32, _I32, _I32, _P(_I32), _P(_I32),
                                ctypes.c_int], ctypes.c_int),
    "mmfree_csim_mlgru": ([_P(_I32), _P(_I32), _P(_I32), "gate", _P(_I32), _P(_I64), ctypes.c_int, ctypes.c_int],
                          ctypes.c_int),
    "mmfree_csim_bitlinear": ([_P(_U8), _U32, _U32, _U32, _I32, _I32, _P(_I64), _P(_I32), ctypes.c_int,
                               ctypes.c_int], ctypes.c_int),
    "mmfree_csim_layer": ([_P(_U8), _P(_U32), _P(_I32), _P(_I32), _P(_I32), _P(_I32), _I32, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int], ctypes.c_int),
}

_LOADED: dict[str, ctypes.CDLL] = {}


def _vec_dtype() -> np.dtype:
    return np.dtype(SP.element_dtypes()["vec"])


# ======================================================================================================
# the library
# ======================================================================================================
class CSim:
    """The HLS kernels compiled for C-simulation. ``CSim()`` builds (or reuses) the library.

    All array arguments are numpy integer arrays; results are int64 numpy arrays (codes: int64 too), so
    they compare directly with :mod:`mmfree.pymodel.numerics` and :class:`~mmfree.pymodel.intmodel.IntModel`.
    """

    def __init__(self, library: str | os.PathLike | None = None, sanitize: bool = False):
        self.built = False
        if library is None:
            library, self.built = build_library(sanitize=sanitize)
        self.path = Path(library)
        key = str(self.path)
        lib = _LOADED.get(key)
        if lib is None:
            lib = ctypes.CDLL(key)
            roles = {r: _P(np.ctypeslib.as_ctypes_type(np.dtype(dt))) for r, dt in SP.element_dtypes().items()}
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = [roles[a] if isinstance(a, str) else a for a in args]
                fn.restype = res
            _LOADED[key] = lib
        self.lib = lib
        info = np.zeros(9, dtype=np.int64)
        lib.mmfree_csim_info(_ptr(info, _I64), len(info))
        (abi, spec_v, self.max_d, self.max_i, self.max_kbuf, self.max_rows, lt, lb, taps) = (int(v) for v in info)
        if abi != ABI_VERSION or spec_v != N.SPEC_VERSION:
            raise MmfreeError(f"{self.path} was built for ABI {abi} / numerics spec {spec_v}, this mmfree needs "
                              f"ABI {ABI_VERSION} / spec {N.SPEC_VERSION}; delete it to rebuild")
        if (lt, lb, taps) != (len(SP.layer_tensor_names()), len(SP.layer_bitlinears()), len(SP.LAYER_TAPS)):
            raise MmfreeError(f"{self.path} does not match this mmfree's image layout; delete it to rebuild")

    # ---- status -------------------------------------------------------------------------------------
    def _status(self, kernel: str, rc: int) -> None:
        if rc == 0:
            return
        if rc == -1:
            msg = self.lib.mmfree_csim_last_error().decode(errors="replace")
            raise MmfreeError(f"{kernel}: C-simulation failed: {msg}")
        raise MmfreeError(f"{kernel} returned status {rc}: {STATUS.get(rc, 'unknown status')}")

    def _k(self, kernel: str, k: int, what: str = "K", limit: int | None = None) -> None:
        limit = self.max_kbuf if limit is None else limit
        if k <= 0:
            raise ValueError(f"{kernel}: {what} must be positive, got {k}")
        if k > N.MAX_K:
            raise ValueError(f"{kernel}: {what}={k} exceeds the numerics spec's MAX_K={N.MAX_K}")
        if k > limit:
            raise ValueError(f"{kernel}: {what}={k} exceeds the library's on-chip buffers ({limit})")

    # ---- elementwise primitives --------------------------------------------------------------------------
    def _map(self, fn, *arrays: np.ndarray, frac: int | None = None) -> np.ndarray:
        shape = arrays[0].shape
        flat = [np.ascontiguousarray(a.reshape(-1)) for a in arrays]
        out = np.empty(flat[0].size, dtype=np.int64)
        extra = () if frac is None else (frac,)
        fn(*[_ptr(a, _I64) for a in flat], _ptr(out, _I64), out.size, *extra)
        return out.reshape(shape)

    def sigmoid_q31(self, x, frac: int) -> np.ndarray:
        """sigmoid(x) in Q0.31 for ``x`` in Q(frac) (int32 range, any shape)."""
        return self._map(self.lib.mmfree_csim_sigmoid_q31, _ints("x", x, INT32_LO, INT32_HI, None),
                         frac=_frac(frac))

    def silu(self, x, frac: int) -> np.ndarray:
        """SiLU in Q(frac) for ``x`` in Q(frac) (int32 range, any shape)."""
        return self._map(self.lib.mmfree_csim_silu, _ints("x", x, INT32_LO, INT32_HI, None), frac=_frac(frac))

    def forget_rate(self, f, one_minus_lb, frac: int) -> np.ndarray:
        """(1 - lb) * sigmoid(-f) in Q0.31: ``f`` in Q(frac) (int32 range), ``one_minus_lb`` Q0.31 in [0, 2**31]."""
        f = _ints("f", f, INT32_LO, INT32_HI, None)
        olb = _ints("one_minus_lb", one_minus_lb, 0, N.ONE_Q31, None)
        _same_shape(f=f, one_minus_lb=olb)
        return self._map(self.lib.mmfree_csim_forget_rate, f, olb, frac=_frac(frac))

    def hgrn_update(self, h, s, g) -> np.ndarray:
        """h + g (s - h), int32-saturated: ``h``, ``s`` int32 range, ``g`` Q0.31 in [0, 2**31]."""
        h = _ints("h", h, INT32_LO, INT32_HI, None)
        s = _ints("s", s, INT32_LO, INT32_HI, None)
        g = _ints("g", g, 0, N.ONE_Q31, None)
        _same_shape(h=h, s=s, g=g)
        return self._map(self.lib.mmfree_csim_hgrn_update, h, s, g)

    def output_multiplier(self, P, S, sz, c_m, c_e) -> tuple[np.ndarray, np.ndarray]:
        """(M, shift) per element: ``P`` in [0, P_MAX], ``S`` in [0, S_MAX], its shift ``sz`` in [0, SZ_MAX],
        ``c_m`` in [2**(M_BITS-1), 2**M_BITS), ``|c_e| < 2**20`` (arrays of one shape; scalars broadcast)."""
        P, S, sz, c_m, c_e = np.broadcast_arrays(*(np.asarray(a) for a in (P, S, sz, c_m, c_e)))
        P = _ints("P", P, 0, P_MAX, None)
        S = _ints("S", S, 0, S_MAX, None)
        sz = _ints("sz", sz, 0, SZ_MAX, None)
        c_m = _ints("c_m", c_m, CM_LO, CM_HI, None)
        c_e = _ints("c_e", c_e, -CE_ABS, CE_ABS, None)
        flat = [np.ascontiguousarray(a.reshape(-1)) for a in (P, S, sz, c_m, c_e)]
        M = np.empty(flat[0].size, dtype=np.int64)
        sh = np.empty_like(M)
        self.lib.mmfree_csim_output_multiplier(*[_ptr(a, _I64) for a in flat], _ptr(M, _I64), _ptr(sh, _I64), M.size)
        return M.reshape(P.shape), sh.reshape(P.shape)

    def dequantize(self, acc, M, shift) -> np.ndarray:
        """sat(acc * M >> shift) (the output format is folded into M, shift): ``|acc| <= 127 * MAX_K``,
        ``M`` in [0, 2**M_BITS], ``shift`` int32 range."""
        acc, M, shift = np.broadcast_arrays(*(np.asarray(a) for a in (acc, M, shift)))
        acc = _ints("acc", acc, -N.CODE_MAX * N.MAX_K, N.CODE_MAX * N.MAX_K, None)
        M = _ints("M", M, 0, 2**N.M_BITS, None)
        shift = _ints("shift", shift, INT32_LO, INT32_HI, None)
        return self._map(self.lib.mmfree_csim_dequantize_values, acc, M, shift)

    # ---- vector primitives --------------------------------------------------------------------------------
    def normalize_input(self, u) -> tuple[np.ndarray, int]:
        """(u', shift) of a 1-D BitLinear input ``u`` (|u| < 2**62)."""
        u = _ints("u", u, -U_LIMIT + 1, U_LIMIT - 1)
        self._k("normalize_input", len(u), "len(u)")
        out = np.empty_like(u)
        sh = np.zeros(1, dtype=np.int64)
        self._status("normalize_input", self.lib.mmfree_csim_normalize_input(_ptr(u, _I64), len(u), _ptr(out, _I64),
                                                                             _ptr(sh, _I64)))
        return out, int(sh[0])

    def sum_squares(self, z) -> tuple[int, int]:
        """(S, sz) of a 1-D ``z`` (|z| <= P_MAX, the largest u' * n): numerics.sum_squares."""
        z = _ints("z", z, -P_MAX, P_MAX)
        self._k("sum_squares", len(z), "len(z)", limit=N.MAX_K)
        S = np.zeros(1, dtype=np.int64)
        sz = np.zeros(1, dtype=np.int64)
        self._status("sum_squares", self.lib.mmfree_csim_sum_squares(_ptr(z, _I64), len(z), _ptr(S, _I64),
                                                                     _ptr(sz, _I64)))
        return int(S[0]), int(sz[0])

    def codes_from(self, p, P: int) -> np.ndarray:
        """int8 codes of a 1-D ``p`` with ``P = max|p|`` (0 <= P <= P_MAX, |p| <= P)."""
        P = int(P)
        if not 0 <= P <= P_MAX:
            raise ValueError(f"P={P} is outside [0, {P_MAX}] (P_MAX = 2**U_BITS * 2**(VEC_BITS-1))")
        p = _ints("p", p, -P, P)
        self._k("codes_from", len(p), "len(p)", limit=N.MAX_K)
        codes = np.empty(len(p), dtype=np.int8)
        self._status("codes_from", self.lib.mmfree_csim_codes_from(_ptr(p, _I64), len(p), P, _ptr(codes, _I8)))
        return codes.astype(np.int64)

    # ---- top-level kernels --------------------------------------------------------------------------------
    def ternary_matvec(self, packed, codes) -> np.ndarray:
        """``mmfree_ternary_matvec``: packed ternary ``uint8 [N, row_bytes(K)]`` times codes ``[K]`` (-127..127)
        -> int64 accumulators ``[N]``. K is ``len(codes)``; the row length must be ``row_bytes(K)``."""
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError(f"packed weights must be a 2-D uint8 array [N, row_bytes(K)], got {packed.dtype} "
                             f"{packed.shape}")
        codes = _ints("codes", codes, -N.CODE_MAX, N.CODE_MAX)
        k = len(codes)
        self._k("ternary_matvec", k, "K = len(codes)")
        n, rb = packed.shape
        if n <= 0:
            raise ValueError("ternary_matvec: the matrix has no rows")
        if rb != N.row_bytes(k):
            raise ValueError(f"ternary_matvec: packed rows have {rb} bytes, but K={k} codes need "
                             f"row_bytes({k}) = {N.row_bytes(k)} bytes (5 trits per byte, padded to "
                             f"{N.ROW_ALIGN_BYTES})")
        w = np.ascontiguousarray(packed)
        c8 = codes.astype(np.int8)
        acc = np.empty(n, dtype=np.int32)
        self._status("mmfree_ternary_matvec", self.lib.mmfree_csim_ternary_matvec(
            _ptr(w, _U8), _ptr(c8, _I8), _ptr(acc, _I32), n, k))
        return acc.astype(np.int64)

    def quantize(self, u, n, nw) -> tuple[np.ndarray, int, int, int]:
        """``mmfree_rmsnorm_quantize``: (codes ``[K]``, P, S, sz) of a 1-D input ``u`` (|u| < 2**62) with the
        pre-norm weight ``n`` and folded weight ``nw`` (both ``[K]``, signed VEC_BITS-bit mantissas)."""
        u = _ints("u", u, -U_LIMIT + 1, U_LIMIT - 1)
        n = _ints("n", n, VEC_LO, VEC_HI)
        nw = _ints("nw", nw, VEC_LO, VEC_HI)
        k = len(u)
        _length("n", n, k, "len(u)")
        _length("nw", nw, k, "len(u)")
        self._k("rmsnorm_quantize", k, "K = len(u)")
        vt = _vec_dtype()
        nv, nwv = n.astype(vt), nw.astype(vt)
        codes = np.empty(k, dtype=np.int8)
        P = np.zeros(1, dtype=np.int64)
        S = np.zeros(1, dtype=np.int64)
        sz = np.zeros(1, dtype=np.int32)
        self._status("mmfree_rmsnorm_quantize", self.lib.mmfree_csim_rmsnorm_quantize(
            _ptr(u, _I64), _ptr(nv, np.ctypeslib.as_ctypes_type(vt)),
            _ptr(nwv, np.ctypeslib.as_ctypes_type(vt)), _ptr(codes, _I8), _ptr(P, _I64), _ptr(S, _I64),
            _ptr(sz, _I32), k))
        return codes.astype(np.int64), int(P[0]), int(S[0]), int(sz[0])

    def dequantize_rows(self, acc, P: int, S: int, sz: int, c_m: int, c_e: int) -> tuple[np.ndarray, int, int]:
        """``mmfree_dequantize``: (outputs ``[N]``, M, shift) of accumulators ``[N]`` for one token's
        (P, S, sz) and the BitLinear constant (c_m, c_e); ranges as in :meth:`output_multiplier`."""
        acc = _ints("acc", acc, -N.CODE_MAX * N.MAX_K, N.CODE_MAX * N.MAX_K)
        if len(acc) == 0:
            raise ValueError("dequantize: no accumulators given")
        for name, v, lo, hi in (("P", P, 0, P_MAX), ("S", S, 0, S_MAX), ("sz", sz, 0, SZ_MAX),
                                ("c_m", c_m, CM_LO, CM_HI), ("c_e", c_e, -CE_ABS, CE_ABS)):
            if not lo <= int(v) <= hi:
                raise ValueError(f"dequantize: {name}={v} is outside [{lo}, {hi}]")
        a32 = acc.astype(np.int32)
        y = np.empty(len(acc), dtype=np.int32)
        M = np.zeros(1, dtype=np.int32)
        sh = np.zeros(1, dtype=np.int32)
        self._status("mmfree_dequantize", self.lib.mmfree_csim_dequantize(
            _ptr(a32, _I32), _ptr(y, _I32), int(P), int(S), int(sz), int(c_m), int(c_e), _ptr(M, _I32),
            _ptr(sh, _I32), len(acc)))
        return y.astype(np.int64), int(M[0]), int(sh[0])

    def mlgru(self, i, f, g, one_minus_lb, h, act_frac: int) -> tuple[np.ndarray, np.ndarray]:
        """``mmfree_mlgru``: (new h, u = g * silu(new h)) for ``i``, ``f``, ``g``, ``h`` in Q(act_frac) (int32
        range) and Q0.31 ``one_minus_lb`` in [0, 2**31], all ``[d]``."""
        act_frac = _frac(act_frac)
        i = _ints("i", i, INT32_LO, INT32_HI)
        f = _ints("f", f, INT32_LO, INT32_HI)
        g = _ints("g", g, INT32_LO, INT32_HI)
        olb = _ints("one_minus_lb", one_minus_lb, 0, N.ONE_Q31)
        h = _ints("h", h, INT32_LO, INT32_HI)
        _same_shape(i=i, f=f, g=g, one_minus_lb=olb, h=h)
        d = len(i)
        if d == 0:
            raise ValueError("mlgru: no channels given")
        # Q0.31 value 2**31 (lb = 0) is stored as uint32 0x80000000
        args32 = [a.astype(np.int32) for a in (i, f, g)]
        gt = np.dtype(SP.element_dtypes()["gate"])
        olb32 = olb.astype(gt)
        h32 = h.astype(np.int32)
        u = np.empty(d, dtype=np.int64)
        self._status("mmfree_mlgru", self.lib.mmfree_csim_mlgru(
            *[_ptr(a, _I32) for a in args32], _ptr(olb32, np.ctypeslib.as_ctypes_type(gt)), _ptr(h32, _I32),
            _ptr(u, _I64), act_frac, d))
        return h32.astype(np.int64), u

    # ---- kernels that read an image -------------------------------------------------------------------------
    @staticmethod
    def _image(image) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 1:
            raise ValueError(f"image must be a 1-D uint8 array (weights.bin bytes), got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image)

    @staticmethod
    def _span(image: np.ndarray, name: str, off: int, nbytes: int) -> None:
        if off < 0 or off >= 2**32:
            raise ValueError(f"{name} offset {off} is outside the 32-bit offset range of the kernels")
        if off + nbytes > image.size:
            raise ValueError(f"{name} needs bytes [{off}, {off + nbytes}) but the image has {image.size} bytes")

    def bitlinear(self, image, off_n: int, off_nw: int, off_w: int, c_m: int, c_e: int, u, n: int) -> np.ndarray:
        """``mmfree_bitlinear``: the ``n`` outputs of a BitLinear whose norm vectors (``[K]``) and packed
        matrix (``[n, row_bytes(K)]``) lie at the given byte offsets of ``image``; K = ``len(u)``."""
        image = self._image(image)
        u = _ints("u", u, -U_LIMIT + 1, U_LIMIT - 1)
        k = len(u)
        self._k("bitlinear", k, "K = len(u)")
        if n <= 0:
            raise ValueError(f"bitlinear: N must be positive, got {n}")
        vb = _vec_dtype().itemsize
        self._span(image, "n", off_n, vb * k)
        self._span(image, "nw", off_nw, vb * k)
        self._span(image, "w", off_w, n * N.row_bytes(k))
        _check_const("bitlinear", c_m, c_e)
        y = np.empty(n, dtype=np.int32)
        self._status("mmfree_bitlinear", self.lib.mmfree_csim_bitlinear(
            _ptr(image, _U8), off_n, off_nw, off_w, c_m, c_e, _ptr(u, _I64), _ptr(y, _I32), k, n))
        return y.astype(np.int64)

    def layer(self, image, offsets, consts, x, h, act_frac: int, d: int, inter: int, taps: bool = True):
        """``mmfree_layer``: one decoder layer for one token; ``act_frac`` is the model's activation format.

        ``offsets``: byte offsets ``[17]`` of the layer's tensors (order :func:`mmfree.hls.spec.layer_tensor_names`);
        ``consts``: ``[(c_m, c_e)] * 6`` (order :func:`mmfree.hls.spec.layer_bitlinears`); ``x``, ``h``: int32 ``[d]``.
        Returns ``(x_out, h_out, taps)`` with ``taps`` a dict ``{suffix: int64 array}`` (suffixes of
        :data:`mmfree.hls.spec.LAYER_TAPS`, the IntModel tap names after ``layers.{i}.``) or None.
        """
        image = self._image(image)
        act_frac = _frac(act_frac)
        names = SP.layer_tensor_names()
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if len(offs) != len(names):
            raise ValueError(f"layer: {len(offs)} tensor offsets given, the layer has {len(names)} tensors")
        consts = np.asarray(consts, dtype=np.int64).reshape(-1, 2)
        if len(consts) != len(SP.layer_bitlinears()):
            raise ValueError(f"layer: {len(consts)} BitLinear constants given, the layer has "
                             f"{len(SP.layer_bitlinears())} BitLinears")
        x = _ints("x", x, INT32_LO, INT32_HI)
        h = _ints("h", h, INT32_LO, INT32_HI)
        _length("x", x, d, "d")
        _length("h", h, d, "d")
        self._k("layer", d, "d", limit=self.max_d)
        self._k("layer", inter, "inter", limit=self.max_i)
        sizes = _layer_tensor_bytes(d, inter)
        for name, off in zip(names, offs):
            self._span(image, name, int(off), sizes[name])
        for (cm, ce), bl in zip(consts, SP.layer_bitlinears()):
            _check_const(f"layer: {bl.name}", int(cm), int(ce))
        o32 = offs.astype(np.uint32)
        c32 = np.ascontiguousarray(consts.reshape(-1), dtype=np.int32)
        x32, h32 = x.astype(np.int32), h.astype(np.int32)
        tbuf = np.zeros(max(SP.tap_words(d, inter), 1), dtype=np.int32)
        self._status("mmfree_layer", self.lib.mmfree_csim_layer(
            _ptr(image, _U8), _ptr(o32, _U32), _ptr(c32, _I32), _ptr(x32, _I32), _ptr(h32, _I32), _ptr(tbuf, _I32),
            1 if taps else 0, act_frac, d, inter))
        tap_dict = None
        if taps:
            tap_dict = {name: tbuf[o:o + n].astype(np.int64) for name, (o, n) in SP.tap_offsets(d, inter).items()}
        return x32.astype(np.int64), h32.astype(np.int64), tap_dict


def _frac(frac) -> int:
    if isinstance(frac, bool) or not isinstance(frac, (int, np.integer)) or not FRAC_LO <= frac <= FRAC_HI:
        raise ValueError(f"activation fractional bits must be an integer in [{FRAC_LO}, {FRAC_HI}], got {frac!r}")
    return int(frac)


def _check_const(where: str, c_m: int, c_e: int) -> None:
    if not (CM_LO <= c_m <= CM_HI and abs(c_e) <= CE_ABS):
        raise ValueError(f"{where}: constant (c_m={c_m}, c_e={c_e}) is outside c_m in [{CM_LO}, {CM_HI}], "
                         f"|c_e| <= {CE_ABS} (numerics.constant_from_float makes them)")


def _layer_tensor_bytes(d: int, inter: int) -> dict[str, int]:
    from mmfree.pymodel import layout as LY

    dims = LY.Dims(vocab=1, d=d, inter=inter, layers=1)
    prefix = "layers.0."
    return {t.name[len(prefix):]: t.nbytes for t in LY.tensors(dims) if t.name.startswith(prefix)}
