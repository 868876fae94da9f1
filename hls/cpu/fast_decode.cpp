// fast_decode.cpp -- one decode step of IntModel on a CPU, fast: the HLS kernels' integer primitives
// (mmfree_numerics.h, checked exactly against mmfree.pymodel.numerics by the C-simulation tests) around the
// 2-bit ternary GEMV of ternary_gemv.cpp, OpenMP over the rows. Built by mmfree.hls.fastcpu with g++
// -O3 -march=native; called through ctypes. Same order of operations as mmfree_layer (layer.cpp) and
// IntModel.forward, so logits and state equal the integer reference exactly.
#include <stdint.h>

#include <vector>

#include "mmfree_numerics.h"
#include "ternary_gemv.cpp"

using namespace mmfree;

namespace {

struct Ctx {
  const uint8_t *image;   // weights.bin
  const uint8_t *packed;  // every BitLinear re-packed to 2 bits (fastcpu.pack_2bit), back to back
  int threads;
  std::vector<int32_t> up, acc;
  std::vector<int8_t> codes;
};

template <typename T>
inline const T *at(const Ctx &c, uint64_t off) { return reinterpret_cast<const T *>(c.image + off); }

// u' = shift_round(u, bitlen(max|u|) - U_BITS) (numerics.normalize_input)
void normalize(Ctx &c, const int64_t *u, int k) {
  int64_t mu = 0;
  for (int i = 0; i < k; ++i) { const int64_t a = iabs(u[i]); if (a > mu) mu = a; }
  const int sh = normalize_shift(mu);
  for (int i = 0; i < k; ++i) c.up[i] = (int32_t)shift_round(u[i], sh);
}

void sumsq(const Ctx &c, const int32_t *n, int k, int64_t &S, int &sz) {
  int64_t Z = 0;
  for (int i = 0; i < k; ++i) { const int64_t a = iabs((int64_t)c.up[i] * n[i]); if (a > Z) Z = a; }
  sz = sumsq_shift(Z);
  S = 0;
  for (int i = 0; i < k; ++i) S += sumsq_term((int64_t)c.up[i] * n[i], sz);
}

// codes of p = u' nw into c.codes (padding stays 0); P = max|p|.
int64_t codes(Ctx &c, const int32_t *nw, int k) {
  int64_t P = 0;
  for (int i = 0; i < k; ++i) { const int64_t a = iabs((int64_t)c.up[i] * nw[i]); if (a > P) P = a; }
  const CodeRecip rc = code_recip(P);
  for (int i = 0; i < k; ++i) c.codes[i] = code_of((int64_t)c.up[i] * nw[i], rc);
  return P;
}

// acc = T . codes, then y = dequantize(acc, M, shift) for the n rows of the packed matrix at pk_off.
void matvec(Ctx &c, uint64_t pk_off, int k, int n, int64_t P, int64_t S, int sz, int64_t c_m, int64_t c_e,
            int32_t *y) {
  const int64_t kp = (k + 127) / 128 * 128;
  for (int64_t i = k; i < kp; ++i) c.codes[i] = 0;  // padding columns: zero codes
  int32_t xsum = 0;
  for (int i = 0; i < k; ++i) xsum += c.codes[i];
  mmfree_fast_gemv(c.packed + pk_off, n, kp, c.codes.data(), &xsum, 1, c.acc.data(), c.threads);
  int64_t M, shift;
  output_multiplier(P, S, sz, c_m, c_e, M, shift);
  for (int r = 0; r < n; ++r) y[r] = (int32_t)dequantize(c.acc[r], M, shift);
}

// A whole BitLinear on input u (k values): quantize against (n, nw), product, dequantize into y.
void bitlinear(Ctx &c, const int64_t *u, int k, int n, uint64_t off_n, uint64_t off_nw, uint64_t pk_off,
               int64_t c_m, int64_t c_e, int32_t *y) {
  normalize(c, u, k);
  int64_t S;
  int sz;
  sumsq(c, at<int32_t>(c, off_n), k, S, sz);
  const int64_t P = codes(c, at<int32_t>(c, off_nw), k);
  matvec(c, pk_off, k, n, P, S, sz, c_m, c_e, y);
}

}  // namespace

extern "C" {

// Layer descriptor (per layer, in this order): lt[MMFREE_LT_COUNT] byte offsets of the layer's tensors in
// the image (layout order, mmfree_spec.h), pk[MMFREE_LB_COUNT] byte offsets of its BitLinears in `packed`,
// cst[2 * MMFREE_LB_COUNT] (c_m, c_e). head[5]: norm.n offset, lm_head.nw offset, lm_head packed offset,
// c_m, c_e. h: [L, d] state (updated), logits: [V] out. Returns 0, or -1 for a bad argument.
int mmfree_fast_step(const uint8_t *image, const uint8_t *packed, const uint64_t *lt, const uint64_t *pk,
                     const int64_t *cst, const int64_t *head, uint64_t embed_off, int L, int d, int inter, int V,
                     int act_frac, int threads, int32_t token, int32_t *h, int32_t *logits) {
  if (token < 0 || token >= V || d <= 0 || inter <= 0 || L <= 0 || act_frac <= (int)MMFREE_SIG_STEPS_LOG2 || act_frac > (int)MMFREE_FRAC_MAX) return -1;
  const int kmax = (d > inter ? d : inter) + 128, nmax = (2 * inter > V ? 2 * inter : V) + (d > V ? d : 0);
  Ctx c{image, packed, threads < 1 ? 1 : threads, std::vector<int32_t>(kmax), std::vector<int32_t>(nmax),
        std::vector<int8_t>(kmax, 0)};
  std::vector<int64_t> x(d), u(inter > d ? inter : d);
  std::vector<int32_t> ib(d), fb(d), gb(d), ob(d), db(d), gu(2 * inter);
  const int32_t *emb = at<int32_t>(c, embed_off) + (int64_t)token * d;
  for (int j = 0; j < d; ++j) x[j] = emb[j];
  for (int l = 0; l < L; ++l) {
    const uint64_t *o = lt + (int64_t)l * MMFREE_LT_COUNT, *p = pk + (int64_t)l * MMFREE_LB_COUNT;
    const int64_t *k = cst + (int64_t)l * 2 * MMFREE_LB_COUNT;
    int32_t *hl = h + (int64_t)l * d;
    // i, f, g: one normalisation of x, one sum of squares (attn_norm), three code vectors
    normalize(c, x.data(), d);
    int64_t S;
    int sz;
    sumsq(c, at<int32_t>(c, o[MMFREE_LT_ATTN_NORM_N]), d, S, sz);
    const int slots[3] = {MMFREE_LB_ATTN_I_PROJ, MMFREE_LB_ATTN_F_PROJ, MMFREE_LB_ATTN_G_PROJ};
    const uint64_t nws[3] = {o[MMFREE_LB_ATTN_I_PROJ_NW], o[MMFREE_LB_ATTN_F_PROJ_NW], o[MMFREE_LB_ATTN_G_PROJ_NW]};
    int32_t *outs[3] = {ib.data(), fb.data(), gb.data()};
    for (int q = 0; q < 3; ++q) {
      const int64_t P = codes(c, at<int32_t>(c, nws[q]), d);
      matvec(c, p[slots[q]], d, d, P, S, sz, k[2 * slots[q]], k[2 * slots[q] + 1], outs[q]);
    }
    const uint32_t *oml = at<uint32_t>(c, o[MMFREE_LT_ATTN_ONE_MINUS_LB]);
    for (int j = 0; j < d; ++j) {
      const int64_t rate = forget_rate(fb[j], oml[j], act_frac);
      const int64_t hn = hgrn_update(hl[j], silu(ib[j], act_frac), rate);
      hl[j] = (int32_t)hn;
      u[j] = (int64_t)gb[j] * silu(hn, act_frac);
    }
    bitlinear(c, u.data(), d, d, o[MMFREE_LB_ATTN_O_PROJ_N], o[MMFREE_LB_ATTN_O_PROJ_NW], p[MMFREE_LB_ATTN_O_PROJ],
              k[2 * MMFREE_LB_ATTN_O_PROJ], k[2 * MMFREE_LB_ATTN_O_PROJ + 1], ob.data());
    for (int j = 0; j < d; ++j) x[j] = saturate32(x[j] + ob[j]);
    bitlinear(c, x.data(), d, 2 * inter, o[MMFREE_LB_MLP_GATE_PROJ_N], o[MMFREE_LB_MLP_GATE_PROJ_NW],
              p[MMFREE_LB_MLP_GATE_PROJ], k[2 * MMFREE_LB_MLP_GATE_PROJ], k[2 * MMFREE_LB_MLP_GATE_PROJ + 1], gu.data());
    for (int j = 0; j < inter; ++j) u[j] = silu(gu[j], act_frac) * (int64_t)gu[inter + j];
    bitlinear(c, u.data(), inter, d, o[MMFREE_LB_MLP_DOWN_PROJ_N], o[MMFREE_LB_MLP_DOWN_PROJ_NW],
              p[MMFREE_LB_MLP_DOWN_PROJ], k[2 * MMFREE_LB_MLP_DOWN_PROJ], k[2 * MMFREE_LB_MLP_DOWN_PROJ + 1], db.data());
    for (int j = 0; j < d; ++j) x[j] = saturate32(x[j] + db[j]);
  }
  bitlinear(c, x.data(), d, V, (uint64_t)head[0], (uint64_t)head[1], (uint64_t)head[2], head[3], head[4], logits);
  return 0;
}

}  // extern "C"
