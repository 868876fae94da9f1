// mmfree_blocks.h -- building blocks shared by the top-level kernels: image reads, the packed ternary
// row product, the folded-RMSNorm quantizer and the dequantizing row loop. Local arrays are the
// kernels' on-chip buffers; `image` is the exported weights.bin (little endian) behind an m_axi port.
#ifndef MMFREE_BLOCKS_H
#define MMFREE_BLOCKS_H

#include <stdint.h>

#include "mmfree_hls.h"
#include "mmfree_numerics.h"

namespace mmfree {

// Element i of a little-endian tensor of T at byte offset `off` of the image.
template <typename T>
inline T read_le(const uint8_t *image, uint64_t off, int i) {
  const uint64_t a = off + (uint64_t)sizeof(T) * (uint64_t)i;
  uint64_t v = 0;
read_le_bytes:
  for (unsigned b = 0; b < sizeof(T); ++b) {
#pragma HLS UNROLL
    v |= (uint64_t)image[a + b] << (8 * b);
  }
  if (sizeof(T) < 8 && (T)(-1) < (T)0 && ((v >> (8 * sizeof(T) - 1)) & 1)) v |= ~(uint64_t)0 << (8 * sizeof(T));
  return (T)(int64_t)v;
}

// k per-channel mantissas (mmfree_vec_t) from the image into an on-chip buffer.
inline void load_vec(const uint8_t *image, uint64_t off, int k, mmfree_vec_t buf[MMFREE_MAX_KBUF]) {
load_vec_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    buf[i] = read_le<mmfree_vec_t>(image, off, i);
  }
}

// One row of a packed ternary matrix times the codes: sum over c < k of T[c] * codes[c].
// The row starts at byte `base` of `w`; only its ceil(k / 5) data bytes are read (padding is zero trits).
inline int32_t ternary_row_dot(const uint8_t *w, uint64_t base, int k, const int8_t codes[MMFREE_MAX_KBUF]) {
  MMFREE_PRAGMA(HLS ARRAY_PARTITION variable=MMFREE_TRIT_DECODE cyclic factor=MMFREE_TRITS_PER_BYTE)
  int32_t acc = 0;  // |acc| <= 127 * k < 2^22
  const int used = (int)((k + MMFREE_TRITS_PER_BYTE - 1) / MMFREE_TRITS_PER_BYTE);
row_bytes_loop:
  for (int b = 0; b < used; ++b) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_ROW_BYTES)
    const int byte = w[base + (uint64_t)b];
  trits_loop:
    for (int j = 0; j < MMFREE_TRITS_PER_BYTE; ++j) {
#pragma HLS UNROLL
      const int col = (int)MMFREE_TRITS_PER_BYTE * b + j;
      const int t = MMFREE_TRIT_DECODE[byte * MMFREE_TRITS_PER_BYTE + j];
      const int c = col < k ? (int)codes[col] : 0;
      acc += t * c;
    }
  }
  return acc;
}

// normalize_input: u' = shift_round(u, bitlen(max|u|) - U_BITS), so max |u'| is in [2^(U_BITS-1), 2^U_BITS]
// (a rounding right shift for large inputs, an exact left shift for small ones). Returns the shift.
inline int normalize_vec(const int64_t u[MMFREE_MAX_KBUF], int32_t up[MMFREE_MAX_KBUF], int k) {
  int64_t mu = 0;
norm_max_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    const int64_t a = iabs(u[i]);
    if (a > mu) mu = a;
  }
  const int sh = normalize_shift(mu);
norm_shift_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    up[i] = (int32_t)shift_round(u[i], sh);
  }
  return sh;
}

// The sum of squares of z = u' n (numerics.sum_squares): the maximum |z| gives sz, a second pass sums the
// squares of rshift_round(z, sz) (S < 2^62 for K <= MAX_K, docs/numerics.md). z is recomputed in each pass
// (one DSP product) instead of being buffered.
struct SumSq {
  int64_t S;
  int sz;
};

inline SumSq sumsq_vec(const int32_t up[MMFREE_MAX_KBUF], const mmfree_vec_t n[MMFREE_MAX_KBUF], int k) {
  int64_t Z = 0;
sumsq_max_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    const int64_t a = iabs((int64_t)up[i] * n[i]);
    if (a > Z) Z = a;
  }
  SumSq out;
  out.sz = sumsq_shift(Z);
  out.S = 0;
sumsq_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    out.S += sumsq_term((int64_t)up[i] * n[i], out.sz);
  }
  return out;
}

// codes of p = u' nw (numerics.codes_from: p reduced to P_CODE_BITS bits, then the reciprocal); returns
// P = max|p| (before the reduction: the output multiplier takes the full P).
inline int64_t codes_vec(const int32_t up[MMFREE_MAX_KBUF], const mmfree_vec_t nw[MMFREE_MAX_KBUF], int k,
                         int8_t codes[MMFREE_MAX_KBUF]) {
  int64_t P = 0;
codes_max_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    const int64_t a = iabs((int64_t)up[i] * nw[i]);
    if (a > P) P = a;
  }
  const CodeRecip rc = code_recip(P);
codes_loop:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    codes[i] = code_of((int64_t)up[i] * nw[i], rc);
  }
  return P;
}

// n output rows of a BitLinear: y[r] = dequantize(T[r] . codes, M, shift); y is an on-chip buffer or an
// m_axi port (inlined into each caller).
inline void matvec_dequant_local(const uint8_t *image, uint64_t off_w, const int8_t codes[MMFREE_MAX_KBUF],
                                 int k, int n, int64_t M, int64_t shift, int32_t *y) {
#pragma HLS INLINE
  const uint64_t rb = (uint64_t)row_bytes(k);
rows_loop:
  for (int r = 0; r < n; ++r) {
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_ROWS)
    const int32_t acc = ternary_row_dot(image, off_w + (uint64_t)r * rb, k, codes);
    y[r] = (int32_t)dequantize(acc, M, shift);
  }
}

// A whole BitLinear: input u (k int64, on chip), output y (n int32: an on-chip buffer or an m_axi port,
// hence inlined). n_buf/nw_buf/up/codes are scratch buffers of the caller.
inline void bitlinear_local(const uint8_t *image, uint64_t off_n, uint64_t off_nw, uint64_t off_w, int64_t c_m,
                            int64_t c_e, const int64_t u[MMFREE_MAX_KBUF], int k, int n, int32_t *y,
                            mmfree_vec_t n_buf[MMFREE_MAX_KBUF], mmfree_vec_t nw_buf[MMFREE_MAX_KBUF],
                            int32_t up[MMFREE_MAX_KBUF], int8_t codes[MMFREE_MAX_KBUF]) {
#pragma HLS INLINE
  normalize_vec(u, up, k);
  load_vec(image, off_n, k, n_buf);
  const SumSq ss = sumsq_vec(up, n_buf, k);
  load_vec(image, off_nw, k, nw_buf);
  const int64_t P = codes_vec(up, nw_buf, k, codes);
  int64_t M, shift;
  output_multiplier(P, ss.S, ss.sz, c_m, c_e, M, shift);
  matvec_dequant_local(image, off_w, codes, k, n, M, shift, y);
}

}  // namespace mmfree

#endif  // MMFREE_BLOCKS_H
