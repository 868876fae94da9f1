// csim_api.cpp -- C entry points of the C-simulation library (ctypes, mmfree.hls.csim). Not synthesised.
//
// The mmfree_csim_* functions move plain arrays into and out of the kernels' hls::stream / pointer
// interfaces and call the real top-level functions; the elementwise ones expose the numerics primitives
// (mmfree_numerics.h) on whole arrays so that they can be compared with the Python spec. Return values:
// the kernel's status (MMFREE_OK = 0, MMFREE_ERR_*), or -1 with mmfree_csim_last_error() set when the
// C++ side threw or a stream did not carry the expected number of values.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "mmfree_blocks.h"

using namespace mmfree;

namespace {

std::string g_error;

int fail(const std::string &msg) {
  g_error = msg;
  return -1;
}

template <typename T>
bool drained(hls::stream<T> &s) {
  return s.empty();
}

}  // namespace

#define MMFREE_CSIM_ABI 2
#define GUARD_BEGIN try {
#define GUARD_END                                  \
  }                                                \
  catch (const std::exception &e) {                \
    return fail(e.what());                         \
  }                                                \
  catch (...) {                                    \
    return fail("unknown C++ exception");          \
  }

extern "C" {

const char *mmfree_csim_last_error() { return g_error.c_str(); }

// out[0..n): ABI version, spec version, MAX_D, MAX_I, MAX_KBUF, MAX_ROWS, LT_COUNT, LB_COUNT, TAP_COUNT.
int mmfree_csim_info(int64_t *out, int n) {
  const int64_t v[] = {MMFREE_CSIM_ABI, MMFREE_SPEC_VERSION, MMFREE_MAX_D,    MMFREE_MAX_I,   MMFREE_MAX_KBUF,
                       MMFREE_MAX_ROWS, MMFREE_LT_COUNT,     MMFREE_LB_COUNT, MMFREE_TAP_COUNT};
  const int count = (int)(sizeof(v) / sizeof(v[0]));
  for (int i = 0; i < n && i < count; ++i) out[i] = v[i];
  return count;
}

// ---- elementwise primitives on int64 arrays (frac: the activation format Q(frac)) --------------------
void mmfree_csim_sigmoid_q31(const int64_t *x, int64_t *out, int64_t count, int frac) {
  for (int64_t i = 0; i < count; ++i) out[i] = sigmoid_q31(x[i], frac);
}

void mmfree_csim_silu(const int64_t *x, int64_t *out, int64_t count, int frac) {
  for (int64_t i = 0; i < count; ++i) out[i] = silu(x[i], frac);
}

void mmfree_csim_forget_rate(const int64_t *f, const int64_t *one_minus_lb, int64_t *out, int64_t count, int frac) {
  for (int64_t i = 0; i < count; ++i) out[i] = forget_rate(f[i], one_minus_lb[i], frac);
}

void mmfree_csim_hgrn_update(const int64_t *h, const int64_t *s, const int64_t *g, int64_t *out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = hgrn_update(h[i], s[i], g[i]);
}

void mmfree_csim_output_multiplier(const int64_t *P, const int64_t *S, const int64_t *sz, const int64_t *c_m,
                                   const int64_t *c_e, int64_t *M, int64_t *shift, int64_t count) {
  for (int64_t i = 0; i < count; ++i) output_multiplier(P[i], S[i], sz[i], c_m[i], c_e[i], M[i], shift[i]);
}

void mmfree_csim_dequantize_values(const int64_t *acc, const int64_t *M, const int64_t *shift, int64_t *out,
                                   int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = dequantize(acc[i], M[i], shift[i]);
}

// ---- vector primitives --------------------------------------------------------------------------------
int mmfree_csim_normalize_input(const int64_t *u, int k, int64_t *up_out, int64_t *shift) {
  GUARD_BEGIN
  if (k <= 0) return MMFREE_ERR_SIZE;
  if (k > MMFREE_MAX_KBUF) return MMFREE_ERR_TOO_LARGE;
  static int64_t ub[MMFREE_MAX_KBUF];
  static int32_t up[MMFREE_MAX_KBUF];
  for (int i = 0; i < k; ++i) ub[i] = u[i];
  *shift = normalize_vec(ub, up, k);
  for (int i = 0; i < k; ++i) up_out[i] = up[i];
  return MMFREE_OK;
  GUARD_END
}

// numerics.sum_squares of one vector z (|z| <= 2^(U_BITS+VEC_BITS-1)), with the kernels' scalar steps.
int mmfree_csim_sum_squares(const int64_t *z, int k, int64_t *S, int64_t *sz) {
  GUARD_BEGIN
  if (k <= 0) return MMFREE_ERR_SIZE;
  if (k > MMFREE_MAX_K) return MMFREE_ERR_SPEC;
  int64_t Z = 0;
  for (int i = 0; i < k; ++i) Z = iabs(z[i]) > Z ? iabs(z[i]) : Z;
  const int shift = sumsq_shift(Z);
  int64_t acc = 0;
  for (int i = 0; i < k; ++i) acc += sumsq_term(z[i], shift);
  *S = acc;
  *sz = shift;
  return MMFREE_OK;
  GUARD_END
}

int mmfree_csim_codes_from(const int64_t *p, int k, int64_t P, int8_t *codes) {
  GUARD_BEGIN
  if (k <= 0) return MMFREE_ERR_SIZE;
  const CodeRecip rc = code_recip(P);
  for (int i = 0; i < k; ++i) codes[i] = code_of(p[i], rc);
  return MMFREE_OK;
  GUARD_END
}

// ---- the top-level kernels -------------------------------------------------------------------------------
int mmfree_csim_ternary_matvec(const uint8_t *w, const int8_t *codes, int32_t *acc, int n, int k) {
  GUARD_BEGIN
  hls::stream<int8_t> cs;
  hls::stream<int32_t> as;
  for (int i = 0; i < k; ++i) cs.write(codes[i]);
  const int rc = mmfree_ternary_matvec(w, cs, as, n, k);
  if (rc != MMFREE_OK) return rc;
  for (int r = 0; r < n; ++r) {
    if (as.empty()) return fail("mmfree_ternary_matvec wrote fewer accumulators than rows");
    acc[r] = as.read();
  }
  if (!drained(cs) || !drained(as)) return fail("mmfree_ternary_matvec left values in a stream");
  return MMFREE_OK;
  GUARD_END
}

int mmfree_csim_rmsnorm_quantize(const int64_t *u, const mmfree_vec_t *n, const mmfree_vec_t *nw, int8_t *codes,
                                 int64_t *P, int64_t *S, int32_t *sz, int k) {
  GUARD_BEGIN
  hls::stream<int64_t> us;
  hls::stream<int8_t> cs;
  for (int i = 0; i < k; ++i) us.write(u[i]);
  const int rc = mmfree_rmsnorm_quantize(us, n, nw, cs, P, S, sz, k);
  if (rc != MMFREE_OK) return rc;
  for (int i = 0; i < k; ++i) {
    if (cs.empty()) return fail("mmfree_rmsnorm_quantize wrote fewer codes than inputs");
    codes[i] = cs.read();
  }
  if (!drained(us) || !drained(cs)) return fail("mmfree_rmsnorm_quantize left values in a stream");
  return MMFREE_OK;
  GUARD_END
}

int mmfree_csim_dequantize(const int32_t *acc, int32_t *y, int64_t P, int64_t S, int32_t sz, int32_t c_m,
                           int32_t c_e, int32_t *M, int32_t *shift, int n) {
  GUARD_BEGIN
  hls::stream<int32_t> as;
  hls::stream<int32_t> ys;
  for (int r = 0; r < n; ++r) as.write(acc[r]);
  const int rc = mmfree_dequantize(as, ys, P, S, sz, c_m, c_e, M, shift, n);
  if (rc != MMFREE_OK) return rc;
  for (int r = 0; r < n; ++r) {
    if (ys.empty()) return fail("mmfree_dequantize wrote fewer outputs than inputs");
    y[r] = ys.read();
  }
  if (!drained(as) || !drained(ys)) return fail("mmfree_dequantize left values in a stream");
  return MMFREE_OK;
  GUARD_END
}

int mmfree_csim_mlgru(const int32_t *i, const int32_t *f, const int32_t *g, const mmfree_gate_t *one_minus_lb,
                      int32_t *h, int64_t *u, int act_frac, int d) {
  GUARD_BEGIN
  hls::stream<int32_t> is, fs, gs;
  hls::stream<int64_t> us;
  for (int j = 0; j < d; ++j) {
    is.write(i[j]);
    fs.write(f[j]);
    gs.write(g[j]);
  }
  const int rc = mmfree_mlgru(is, fs, gs, one_minus_lb, h, us, act_frac, d);
  if (rc != MMFREE_OK) return rc;
  for (int j = 0; j < d; ++j) {
    if (us.empty()) return fail("mmfree_mlgru wrote fewer products than channels");
    u[j] = us.read();
  }
  if (!drained(is) || !drained(fs) || !drained(gs) || !drained(us))
    return fail("mmfree_mlgru left values in a stream");
  return MMFREE_OK;
  GUARD_END
}

int mmfree_csim_bitlinear(const uint8_t *image, uint32_t off_n, uint32_t off_nw, uint32_t off_w, int32_t c_m,
                          int32_t c_e, const int64_t *u, int32_t *y, int k, int n) {
  GUARD_BEGIN
  return mmfree_bitlinear(image, off_n, off_nw, off_w, c_m, c_e, u, y, k, n);
  GUARD_END
}

int mmfree_csim_layer(const uint8_t *image, const uint32_t *offs, const int32_t *consts, int32_t *x, int32_t *h,
                      int32_t *taps, int32_t tap_enable, int act_frac, int d, int inter) {
  GUARD_BEGIN
  return mmfree_layer(image, offs, consts, x, h, taps, tap_enable, act_frac, d, inter);
  GUARD_END
}

}  // extern "C"
