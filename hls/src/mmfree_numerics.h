// mmfree_numerics.h -- the integer primitives of the numerics spec (mmfree.pymodel.numerics), in C++.
//
// Each function is the scalar form of the Python function of the same name; the C-simulation harness
// (mmfree.hls.csim) checks them for exact equality against the Python spec. All arithmetic is int64_t;
// the ranges in the comments (from docs/numerics.md) show that no intermediate overflows. Right shifts
// of negative values are arithmetic (floor), as numpy's; left shifts are written as multiplications so
// that negative operands are well defined in C++14.
#ifndef MMFREE_NUMERICS_H
#define MMFREE_NUMERICS_H

#include <stdint.h>

#include "mmfree_spec.h"

namespace mmfree {

// The ranges the comments rely on, for whatever widths the spec sets:
//   |u'| <= 2^U_BITS (int32 buffers), |n|, |nw| <= 2^(VEC_BITS-1), so z = u' n and p = u' nw stay within
//   2^(U_BITS+VEC_BITS-1) (int64); the sum of squares of K <= MAX_K terms of at most ZS_BITS bits (plus one
//   for rounding) stays below 2^62; 127 << k with k = bitlen(P') + RECIP_EXTRA, bitlen(P') <= P_CODE_BITS + 1,
//   stays below 2^63; the rsqrt Newton step squares a Q2.30 value.
static_assert(MMFREE_U_BITS <= 30, "u' must fit the int32 buffers");
static_assert(MMFREE_U_BITS + MMFREE_VEC_BITS - 1 <= 62, "u' * n must fit int64");
static_assert(MMFREE_MAX_K <= ((int64_t)1 << (62 - 2 * MMFREE_ZS_BITS)), "the sum of squares must fit int64");
static_assert(MMFREE_P_CODE_BITS + 1 + MMFREE_RECIP_EXTRA + 7 <= 63, "127 << k must fit int64");
static_assert(2 * (MMFREE_RSQRT_FRAC + 1) <= 62, "r0 * r0 must fit int64");
static_assert(MMFREE_M_BITS + MMFREE_RSQRT_FRAC + 2 <= 62, "c_m * r must fit int64");
static_assert(MMFREE_ACC_BITS + MMFREE_M_BITS <= 62, "acc * M must fit int64");

// Number of bits of a non-negative integer (0 -> 0): a priority encoder in hardware.
inline int bitlen(int64_t x) {
  int n = 0;
bitlen_loop:
  for (int i = 0; i < 63; ++i) {
#pragma HLS UNROLL
    if ((x >> i) != 0) n = i + 1;
  }
  return n;
}

inline int64_t pow2(int s) { return (int64_t)1 << s; }

// floor((x + 2^(s-1)) / 2^s) for s > 0, x for s <= 0: round half up.
inline int64_t rshift_round(int64_t x, int s) { return s <= 0 ? x : (x + pow2(s - 1)) >> s; }

inline int64_t iabs(int64_t x) { return x < 0 ? -x : x; }

inline int64_t saturate32(int64_t x) {
  return x > MMFREE_INT32_MAX ? MMFREE_INT32_MAX : (x < MMFREE_INT32_MIN ? MMFREE_INT32_MIN : x);
}

// saturate(v * 2^s) for s >= 0 without intermediate overflow (|v| < 2^62); s above 32 acts as 32.
inline int64_t saturating_shift_left(int64_t v, int64_t s) {
  if (s > 32) s = 32;
  if (s <= 31) {
    const int64_t lim = pow2(31 - (int)s);
    if (v >= lim) return MMFREE_INT32_MAX;
    if (v < -lim) return MMFREE_INT32_MIN;
    return v * pow2((int)s);
  }
  return v > 0 ? MMFREE_INT32_MAX : (v < 0 ? MMFREE_INT32_MIN : 0);
}

// ---- nonlinearities ------------------------------------------------------------------------------
// Activations are int32 fixed point Q(frac) with a per-model frac in (SIG_STEPS_LOG2, FRAC_MAX]
// (numerics.sigmoid_tail checks the range; the kernels' callers check it before calling).

// sigmoid(-a) in Q0.31 for a >= 0 in Q(frac): linear interpolation in the tail table (t = frac - SIG_STEPS_LOG2
// fractional bits per entry), floor for the interpolation product ((e0 - e1) < 2^31, f < 2^t < 2^FRAC_MAX).
inline int64_t sigmoid_tail(int64_t a, int frac) {
  const int t = frac - (int)MMFREE_SIG_STEPS_LOG2;
  const int64_t limit = (int64_t)MMFREE_SIG_RANGE << frac;
  if (a >= limit) a = limit - 1;
  const int idx = (int)(a >> t);
  const int64_t f = a & (pow2(t) - 1);
  const int64_t e0 = MMFREE_SIGMOID_TAIL[idx];
  const int64_t e1 = MMFREE_SIGMOID_TAIL[idx + 1];
  return e0 - (((e0 - e1) * f) >> t);
}

inline int64_t sigmoid_q31(int64_t x, int frac) {
  const int64_t e = sigmoid_tail(iabs(x), frac);
  return x >= 0 ? MMFREE_ONE_Q31 - e : e;
}

// SiLU, Q(frac) in and out: |x| <= 2^31, sigmoid <= 2^31, product <= 2^62.
inline int64_t silu(int64_t x, int frac) { return rshift_round(x * sigmoid_q31(x, frac), (int)MMFREE_SIG_FRAC); }

// 1 - f = (1 - lb) * sigmoid(-f_pre) in Q0.31 (f_pre in Q(frac)); both factors <= 2^31.
inline int64_t forget_rate(int64_t f_pre, int64_t one_minus_lb, int frac) {
  const int64_t e = sigmoid_tail(iabs(f_pre), frac);
  const int64_t s = f_pre >= 0 ? e : MMFREE_ONE_Q31 - e;
  return rshift_round(one_minus_lb * s, (int)MMFREE_SIG_FRAC);
}

// h + g (s - h), saturated to int32 (h, s in one Q format): |s - h| < 2^32, g <= 2^31, so the product stays below 2^63.
inline int64_t hgrn_update(int64_t h, int64_t s, int64_t g) {
  return saturate32(h + rshift_round(g * (s - h), (int)MMFREE_SIG_FRAC));
}

// ---- the BitLinear quantizer -------------------------------------------------------------------------
// Shift that normalises a vector with max |u| = mu so that max |u'| lies in [2^(U_BITS-1), 2^U_BITS]:
// bitlen(mu) - U_BITS, negative (an exact left shift) for small vectors; 0 for an all-zero vector.
inline int normalize_shift(int64_t mu) { return mu > 0 ? bitlen(mu) - (int)MMFREE_U_BITS : 0; }

// x * 2^-s: rshift_round for s >= 0, an exact left shift for s < 0 (numerics.shift_round).
inline int64_t shift_round(int64_t x, int s) { return s >= 0 ? rshift_round(x, s) : x * pow2(-s); }

// The sum of squares, normalised by the vector's own maximum (numerics.sum_squares):
// sz = max(0, bitlen(max|z|) - ZS_BITS) and S = sum rshift_round(z, sz)^2. Two passes over z: the
// maximum gives sz, then each term is reduced to at most ZS_BITS bits (2^ZS_BITS after rounding) and squared.
inline int sumsq_shift(int64_t Z) {
  const int b = bitlen(Z) - (int)MMFREE_ZS_BITS;
  return b > 0 ? b : 0;
}

// |z| <= 2^(U_BITS+VEC_BITS-1): z + 2^(sz-1) does not overflow; the square is at most 2^(2 ZS_BITS).
inline int64_t sumsq_term(int64_t z, int sz) {
  const int64_t zs = rshift_round(z, sz);
  return zs * zs;
}

// Reciprocal of the activation quantizer (numerics.codes_from): p and P are first reduced to P_CODE_BITS
// bits (sp = max(0, bitlen(P) - P_CODE_BITS), p' = rshift_round(p, sp), P' = rshift_round(P, sp)), then
// R = (127 << k) / P' with k = bitlen(P') + RECIP_EXTRA. P' <= 2^P_CODE_BITS (rounding can reach it), so
// k <= P_CODE_BITS + 1 + RECIP_EXTRA and 127 << k stays below 2^63 (checked at compile time above).
struct CodeRecip {
  int64_t R;
  int k;
  int sp;
  bool zero;  // P == 0: every code is 0
};

inline CodeRecip code_recip(int64_t P) {
  CodeRecip c;
  const int b = bitlen(P) - (int)MMFREE_P_CODE_BITS;
  c.sp = b > 0 ? b : 0;
  const int64_t Pn = rshift_round(P, c.sp);
  c.k = bitlen(Pn) + (int)MMFREE_RECIP_EXTRA;
  c.zero = Pn <= 0;
  c.R = c.zero ? 0 : (MMFREE_CODE_MAX * pow2(c.k)) / Pn;
  return c;
}

// sign(p') * min(127, round_half_away(127 |p'| / P')) through the reciprocal; |p| <= P gives |p'| <= P'
// (rounding half up never makes a negative value larger in magnitude), so |p'| * R <= 127 * 2^k.
inline int8_t code_of(int64_t p, const CodeRecip &c) {
  if (c.zero) return 0;
  const int64_t pn = rshift_round(p, c.sp);
  int64_t mag = (iabs(pn) * c.R + (pow2(c.k) >> 1)) >> c.k;
  if (mag > MMFREE_CODE_MAX) mag = MMFREE_CODE_MAX;
  return (int8_t)(pn < 0 ? -mag : mag);
}

// rsqrt(S) ~= r * 2^-(46 + k) for S > 0: S normalised into [2^30, 2^32) by an even shift, then a table in
// Q2.30 indexed by the top RSQRT_INDEX_BITS bits of S' with linear interpolation on the low bits (r0), then
// one Newton step r = r0 (3 - S' r0^2 / 2^32) / 2 in the spec's integer form. Ranges: r0 <= 2^(RSQRT_FRAC+1),
// r0^2 <= 2^62, t <= 2^32, (S' >> 2) t < 2^62, v ~ 2^RSQRT_FRAC, r0 (3 2^RSQRT_FRAC - v) < 2^63.
inline void rsqrt(int64_t S, int64_t &r, int &k) {
  const int b = bitlen(S);
  k = b >= 31 ? (b - 31) / 2 : -((31 - b + 1) / 2);  // floor((b - 31) / 2)
  const int64_t Sn = k >= 0 ? S >> (2 * k) : S * pow2(-2 * k);
  const int low = 32 - (int)MMFREE_RSQRT_INDEX_BITS;
  const int j = (int)(Sn >> low) - (int)MMFREE_RSQRT_FIRST;
  const int64_t frac = Sn & (pow2(low) - 1);
  const int64_t t0 = MMFREE_RSQRT_TABLE[j];
  const int64_t t1 = MMFREE_RSQRT_TABLE[j + 1];
  const int64_t r0 = t0 - (((t0 - t1) * frac) >> low);
  const int64_t t = (r0 * r0) >> MMFREE_RSQRT_FRAC;
  const int64_t v = ((Sn >> 2) * t) >> MMFREE_RSQRT_FRAC;
  r = (r0 * (3 * pow2((int)MMFREE_RSQRT_FRAC) - v)) >> (MMFREE_RSQRT_FRAC + 1);
}

// Per-token output multiplier (M, shift) of a BitLinear from P = max|p|, the sum of squares S and its
// shift sz (numerics.output_multiplier); P or S == 0 gives (0, 0). c_m < 2^M_BITS and r <= ~2^31:
// c_m * r < 2^(M_BITS+32); b < 2^32. P is first rounded to P_BITS bits: m = b * P' < 2^(32+P_BITS).
// The 30 is the literal of numerics.output_multiplier (rsqrt's 2^-46 less the 2^16 folded into c_m).
inline void output_multiplier(int64_t P, int64_t S, int64_t sz, int64_t c_m, int64_t c_e, int64_t &M,
                              int64_t &shift) {
  if (P <= 0 || S <= 0) {
    M = 0;
    shift = 0;
    return;
  }
  int64_t r;
  int k;
  rsqrt(S, r, k);
  const int64_t b = rshift_round(c_m * r, (int)MMFREE_M_BITS);
  const int ps = bitlen(P) > (int)MMFREE_P_BITS ? bitlen(P) - (int)MMFREE_P_BITS : 0;
  const int64_t m = b * rshift_round(P, ps);
  const int em = bitlen(m);
  M = rshift_round(m, em - (int)MMFREE_M_BITS);
  shift = 30 + k + sz - em - ps - c_e;
}

// BitLinear output in its Q(F_out) (folded into c_e at export): |acc| < 2^22, M <= 2^M_BITS.
inline int64_t dequantize(int64_t acc, int64_t M, int64_t shift) {
  const int64_t v = acc * M;
  if (shift >= 0) return saturate32(rshift_round(v, shift > 62 ? 62 : (int)shift));
  return saturating_shift_left(v, -shift);
}

// Bytes of one packed row of k trits: ceil(k / 5) rounded up to ROW_ALIGN_BYTES.
inline int64_t row_bytes(int64_t k) {
  const int64_t raw = (k + MMFREE_TRITS_PER_BYTE - 1) / MMFREE_TRITS_PER_BYTE;
  return (raw + MMFREE_ROW_ALIGN_BYTES - 1) / MMFREE_ROW_ALIGN_BYTES * MMFREE_ROW_ALIGN_BYTES;
}

}  // namespace mmfree

#endif  // MMFREE_NUMERICS_H
