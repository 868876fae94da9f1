// mmfree_hls.h -- the mmfree HLS kernels: types, stream shim, limits, top-level declarations.
//
// Vitis HLS style C++ that plain g++ (C++14) also compiles:
//  * only <stdint.h> fixed-width integers (no ap_int): every intermediate is int64_t, which is wide
//    enough for every product of the numerics spec (docs/numerics.md, docs/hls.md);
//  * hls::stream comes from <hls_stream.h> when the Vitis headers are on the include path, and from a
//    small std::deque shim otherwise (plain g++ C-simulation);
//  * pragmas that need macro values go through MMFREE_PRAGMA (the _Pragma form Vitis documents);
//    g++ ignores them (-Wno-unknown-pragmas).
// Every constant and table comes from the generated mmfree_spec.h (python -m mmfree.hls.spec).
#ifndef MMFREE_HLS_H
#define MMFREE_HLS_H

#include <stdint.h>

#include "mmfree_spec.h"

// valid activation fractional bits: the sigmoid table needs frac > SIG_STEPS_LOG2
#define MMFREE_FRAC_OK(frac) ((frac) > MMFREE_SIG_STEPS_LOG2 && (frac) <= MMFREE_FRAC_MAX)

#if defined(__has_include) && !defined(MMFREE_NO_VITIS_HEADERS)
#if __has_include(<hls_stream.h>)
#include <hls_stream.h>
#define MMFREE_HAVE_HLS_STREAM 1
#endif
#endif

#ifndef MMFREE_HAVE_HLS_STREAM
#include <cstddef>
#include <deque>
#include <stdexcept>
namespace hls {
// Minimal stand-in for Vitis' hls::stream in plain C++ simulation: an unbounded FIFO.
template <typename T>
class stream {
 public:
  stream() {}
  explicit stream(const char *) {}
  void write(const T &v) { q_.push_back(v); }
  T read() {
    if (q_.empty()) throw std::runtime_error("hls::stream: read from an empty stream");
    T v = q_.front();
    q_.pop_front();
    return v;
  }
  bool empty() const { return q_.empty(); }
  bool full() const { return false; }
  std::size_t size() const { return q_.size(); }

 private:
  std::deque<T> q_;
};
}  // namespace hls
#endif

#define MMFREE_PRAGMA_(x) _Pragma(#x)
#define MMFREE_PRAGMA(x) MMFREE_PRAGMA_(x)

// ---- on-chip buffer limits ----
// Synthesis sizes the BRAM buffers by them; `mmfree hls synth` sets them from the model, the C-simulation
// library from the spec maximum (MAX_K). They must be plain integer literals (pragmas read them), so the
// derived ones are passed too; mmfree.hls.spec.limit_defines() computes the whole set.
#ifndef MMFREE_MAX_D
#define MMFREE_MAX_D 4096          // hidden size d
#endif
#ifndef MMFREE_MAX_I
#define MMFREE_MAX_I 16384         // intermediate size
#endif
#ifndef MMFREE_MAX_KBUF
#define MMFREE_MAX_KBUF 16384      // max(MAX_D, MAX_I): longest BitLinear input
#endif
#ifndef MMFREE_MAX_ROWS
#define MMFREE_MAX_ROWS 32768      // 2 * MAX_I: most rows of one layer BitLinear (gate | up)
#endif
#ifndef MMFREE_MAX_ROW_BYTES
#define MMFREE_MAX_ROW_BYTES 3277  // ceil(MAX_KBUF / TRITS_PER_BYTE): data bytes of the longest row
#endif
static_assert(MMFREE_MAX_KBUF >= MMFREE_MAX_D && MMFREE_MAX_KBUF >= MMFREE_MAX_I, "MMFREE_MAX_KBUF too small");
static_assert(MMFREE_MAX_ROWS >= 2 * MMFREE_MAX_I, "MMFREE_MAX_ROWS too small");
static_assert(MMFREE_MAX_ROW_BYTES * MMFREE_TRITS_PER_BYTE >= MMFREE_MAX_KBUF, "MMFREE_MAX_ROW_BYTES too small");
static_assert(MMFREE_MAX_KBUF <= MMFREE_MAX_K, "buffers larger than the numerics spec allows (MAX_K)");

// ---- m_axi depths: only C/RTL co-simulation reads them (the generated TCL sets them from its vectors) ----
#ifndef MMFREE_DEPTH_IMAGE
#define MMFREE_DEPTH_IMAGE 1048576
#endif
#ifndef MMFREE_DEPTH_VEC
#define MMFREE_DEPTH_VEC 65536
#endif
#ifndef MMFREE_DEPTH_W
#define MMFREE_DEPTH_W 1048576
#endif
#ifndef MMFREE_DEPTH_TAPS
#define MMFREE_DEPTH_TAPS 262144
#endif

// ---- status codes returned by every top (s_axilite "return" register) ----
#define MMFREE_OK 0
#define MMFREE_ERR_SIZE 1        // a size is zero or negative
#define MMFREE_ERR_TOO_LARGE 2   // a size exceeds the on-chip buffers (MMFREE_MAX_D / MMFREE_MAX_I)
#define MMFREE_ERR_SPEC 3        // a size exceeds the numerics spec (K > MAX_K)
#define MMFREE_ERR_FRAC 4        // activation fractional bits outside (SIG_STEPS_LOG2, FRAC_MAX]

// ---- top-level kernels (each one a Vitis HLS top; see docs/hls.md for interfaces) ----

// Packed-ternary matrix times int8 codes: acc[r] = sum_c T[r, c] * codes[c], r < n, c < k.
// w: n rows of row_bytes(k) bytes (5 trits per byte, rows padded to ROW_ALIGN_BYTES), m_axi.
// codes: k values in -127..127 (axis in); acc: n int32 accumulators (axis out).
int mmfree_ternary_matvec(const uint8_t *w, hls::stream<int8_t> &codes, hls::stream<int32_t> &acc, int n, int k);

// RMSNorm folded into the BitLinear quantizer: u (k int64, axis in, |u| < 2^62) -> codes (axis out),
// P = max|p|, the sum of squares S and its shift sz (s_axilite out). n, nw: per-channel mantissas
// (mmfree_vec_t, m_axi).
int mmfree_rmsnorm_quantize(hls::stream<int64_t> &u, const mmfree_vec_t *n, const mmfree_vec_t *nw,
                            hls::stream<int8_t> &codes, int64_t *P, int64_t *S, int32_t *sz, int k);

// Output multiplier (M, shift) from (P, S, sz, c_m, c_e) and the dequantized outputs of n accumulators.
int mmfree_dequantize(hls::stream<int32_t> &acc, hls::stream<int32_t> &y, int64_t P, int64_t S, int32_t sz,
                      int32_t c_m, int32_t c_e, int32_t *M, int32_t *shift, int n);

// MLGRU elementwise step over d channels, activations in Q(act_frac): rate = forget_rate(f, 1-lb),
// h = hgrn_update(h, silu(i), rate) (h read and written through m_axi), u = g * silu(h) (axis out, the
// full-precision input of o_proj).
int mmfree_mlgru(hls::stream<int32_t> &i, hls::stream<int32_t> &f, hls::stream<int32_t> &g,
                 const mmfree_gate_t *one_minus_lb, int32_t *h, hls::stream<int64_t> &u, int act_frac, int d);

// One whole BitLinear (quantize, ternary product, dequantize) reading its tensors from the image.
int mmfree_bitlinear(const uint8_t *image, uint32_t off_n, uint32_t off_nw, uint32_t off_w, int32_t c_m,
                     int32_t c_e, const int64_t *u, int32_t *y, int k, int n);

// One decoder layer for one token: x (Q(res_frac)) and h (Q(act_frac)), d int32 each through m_axi, are
// updated in place; act_frac is the model's activation format (the residual format is folded into the
// BitLinear constants at export).
// offs: byte offsets of the layer's tensors in image (MMFREE_LT_* slots); consts: (c_m, c_e) per
// BitLinear (MMFREE_LB_* slots). With tap_enable, taps receives every intermediate (MMFREE_TAP_* order).
int mmfree_layer(const uint8_t *image, const uint32_t offs[MMFREE_LT_COUNT],
                 const int32_t consts[2 * MMFREE_LB_COUNT], int32_t *x, int32_t *h, int32_t *taps,
                 int32_t tap_enable, int act_frac, int d, int inter);

#endif  // MMFREE_HLS_H
