// mmfree_bitlinear and mmfree_layer: kernels that read their tensors straight from the
// exported image (weights.bin, loaded once into DDR) at byte offsets taken from manifest.json.
//
// mmfree_layer is one decoder layer of IntModel.forward for one token:
//   (i, f, g)  = BitLinear_{i,f,g}(x; attn_norm)      one normalisation and one S for all three
//   h          = hgrn_update(h, silu(i), forget_rate(f, 1 - lb))
//   x          = sat(x + BitLinear_o(g * silu(h); g_norm))
//   gate | up  = BitLinear_gate(x; mlp_norm)
//   x          = sat(x + BitLinear_down(silu(gate) * up))
#include "mmfree_blocks.h"

using namespace mmfree;

int mmfree_bitlinear(const uint8_t *image, uint32_t off_n, uint32_t off_nw, uint32_t off_w, int32_t c_m,
                     int32_t c_e, const int64_t *u, int32_t *y, int k, int n) {
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=image offset=slave bundle=gmem0 depth=MMFREE_DEPTH_IMAGE max_read_burst_length=256)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=u offset=slave bundle=gmem1 depth=MMFREE_DEPTH_VEC)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=y offset=slave bundle=gmem1 depth=MMFREE_DEPTH_VEC)
#pragma HLS INTERFACE s_axilite port=off_n bundle=control
#pragma HLS INTERFACE s_axilite port=off_nw bundle=control
#pragma HLS INTERFACE s_axilite port=off_w bundle=control
#pragma HLS INTERFACE s_axilite port=c_m bundle=control
#pragma HLS INTERFACE s_axilite port=c_e bundle=control
#pragma HLS INTERFACE s_axilite port=k bundle=control
#pragma HLS INTERFACE s_axilite port=n bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (k <= 0 || n <= 0) return MMFREE_ERR_SIZE;
  if (k > MMFREE_MAX_K) return MMFREE_ERR_SPEC;
  if (k > MMFREE_MAX_KBUF) return MMFREE_ERR_TOO_LARGE;

  static int64_t ub[MMFREE_MAX_KBUF];
  static int32_t up[MMFREE_MAX_KBUF];
  static mmfree_vec_t nb[MMFREE_MAX_KBUF];
  static mmfree_vec_t nwb[MMFREE_MAX_KBUF];
  static int8_t codes[MMFREE_MAX_KBUF];
  MMFREE_PRAGMA(HLS ARRAY_PARTITION variable=codes cyclic factor=MMFREE_TRITS_PER_BYTE)
read_u:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    ub[i] = u[i];
  }
  // the output rows go straight to y (an lm_head has vocab-many rows: no on-chip output buffer)
  bitlinear_local(image, off_n, off_nw, off_w, c_m, c_e, ub, k, n, y, nb, nwb, up, codes);
  return MMFREE_OK;
}

namespace {

// One of i/f/g: codes of u' * nw against the shared sum of squares (S, sz), ternary product, dequantize.
void attn_proj(const uint8_t *image, uint64_t off_nw, uint64_t off_w, int64_t c_m, int64_t c_e,
               const SumSq &ss, const int32_t up[MMFREE_MAX_KBUF], int d, int32_t out[MMFREE_MAX_D],
               mmfree_vec_t nwb[MMFREE_MAX_KBUF], int8_t codes[MMFREE_MAX_KBUF]) {
#pragma HLS INLINE
  load_vec(image, off_nw, d, nwb);
  const int64_t P = codes_vec(up, nwb, d, codes);
  int64_t M, shift;
  output_multiplier(P, ss.S, ss.sz, c_m, c_e, M, shift);
  matvec_dequant_local(image, off_w, codes, d, d, M, shift, out);
}

int tap_len(int slot, int d, int inter) { return MMFREE_TAP_LEN_D[slot] * d + MMFREE_TAP_LEN_I[slot] * inter; }

int64_t tap_offset(int slot, int d, int inter) {
  int64_t off = 0;
tap_offset_loop:
  for (int t = 0; t < slot; ++t) off += tap_len(t, d, inter);
  return off;
}

void store_tap(int32_t *taps, int64_t off, const int32_t *buf, int len) {
#pragma HLS INLINE
store_tap_loop:
  for (int j = 0; j < len; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_ROWS)
    taps[off + j] = buf[j];
  }
}

}  // namespace

int mmfree_layer(const uint8_t *image, const uint32_t offs[MMFREE_LT_COUNT],
                 const int32_t consts[2 * MMFREE_LB_COUNT], int32_t *x, int32_t *h, int32_t *taps,
                 int32_t tap_enable, int act_frac, int d, int inter) {
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=image offset=slave bundle=gmem0 depth=MMFREE_DEPTH_IMAGE max_read_burst_length=256)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=x offset=slave bundle=gmem1 depth=MMFREE_DEPTH_VEC)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=h offset=slave bundle=gmem1 depth=MMFREE_DEPTH_VEC)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=taps offset=slave bundle=gmem2 depth=MMFREE_DEPTH_TAPS)
#pragma HLS INTERFACE s_axilite port=offs bundle=control
#pragma HLS INTERFACE s_axilite port=consts bundle=control
#pragma HLS INTERFACE s_axilite port=tap_enable bundle=control
#pragma HLS INTERFACE s_axilite port=act_frac bundle=control
#pragma HLS INTERFACE s_axilite port=d bundle=control
#pragma HLS INTERFACE s_axilite port=inter bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (d <= 0 || inter <= 0) return MMFREE_ERR_SIZE;
  if (!MMFREE_FRAC_OK(act_frac)) return MMFREE_ERR_FRAC;
  if (d > MMFREE_MAX_K || inter > MMFREE_MAX_K) return MMFREE_ERR_SPEC;
  if (d > MMFREE_MAX_D || inter > MMFREE_MAX_I) return MMFREE_ERR_TOO_LARGE;

  static int32_t xb[MMFREE_MAX_D];
  static int32_t hb[MMFREE_MAX_D];
  static int32_t ib[MMFREE_MAX_D];
  static int32_t fb[MMFREE_MAX_D];
  static int32_t gb[MMFREE_MAX_D];
  static int32_t ob[MMFREE_MAX_D];
  static int32_t db[MMFREE_MAX_D];
  static int32_t gu[MMFREE_MAX_ROWS];
  static int64_t ub[MMFREE_MAX_KBUF];
  static int32_t up[MMFREE_MAX_KBUF];
  static mmfree_vec_t nb[MMFREE_MAX_KBUF];
  static mmfree_vec_t nwb[MMFREE_MAX_KBUF];
  static int8_t codes[MMFREE_MAX_KBUF];
  MMFREE_PRAGMA(HLS ARRAY_PARTITION variable=codes cyclic factor=MMFREE_TRITS_PER_BYTE)

load_state:
  for (int j = 0; j < d; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_D)
    xb[j] = x[j];
    hb[j] = h[j];
    ub[j] = x[j];
  }

  // ---- i, f, g: one normalisation of x and one sum of squares (S, sz; attn_norm), three code vectors ----
  normalize_vec(ub, up, d);
  load_vec(image, offs[MMFREE_LB_ATTN_I_PROJ_N], d, nb);
  const SumSq ss = sumsq_vec(up, nb, d);
  attn_proj(image, offs[MMFREE_LB_ATTN_I_PROJ_NW], offs[MMFREE_LB_ATTN_I_PROJ_W],
            consts[2 * MMFREE_LB_ATTN_I_PROJ], consts[2 * MMFREE_LB_ATTN_I_PROJ + 1], ss, up, d, ib, nwb, codes);
  attn_proj(image, offs[MMFREE_LB_ATTN_F_PROJ_NW], offs[MMFREE_LB_ATTN_F_PROJ_W],
            consts[2 * MMFREE_LB_ATTN_F_PROJ], consts[2 * MMFREE_LB_ATTN_F_PROJ + 1], ss, up, d, fb, nwb, codes);
  attn_proj(image, offs[MMFREE_LB_ATTN_G_PROJ_NW], offs[MMFREE_LB_ATTN_G_PROJ_W],
            consts[2 * MMFREE_LB_ATTN_G_PROJ], consts[2 * MMFREE_LB_ATTN_G_PROJ + 1], ss, up, d, gb, nwb, codes);

  // ---- recurrence and gated output: u = g * silu(h) ----
recurrence:
  for (int j = 0; j < d; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_D)
    const int64_t rate =
        forget_rate(fb[j], read_le<mmfree_gate_t>(image, offs[MMFREE_LT_ATTN_ONE_MINUS_LB], j), act_frac);
    const int64_t hn = hgrn_update(hb[j], silu(ib[j], act_frac), rate);
    hb[j] = (int32_t)hn;
    ub[j] = (int64_t)gb[j] * silu(hn, act_frac);
  }

  // ---- o_proj + residual ----
  bitlinear_local(image, offs[MMFREE_LB_ATTN_O_PROJ_N], offs[MMFREE_LB_ATTN_O_PROJ_NW],
                  offs[MMFREE_LB_ATTN_O_PROJ_W], consts[2 * MMFREE_LB_ATTN_O_PROJ],
                  consts[2 * MMFREE_LB_ATTN_O_PROJ + 1], ub, d, d, ob, nb, nwb, up, codes);
residual_o:
  for (int j = 0; j < d; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_D)
    xb[j] = (int32_t)saturate32((int64_t)xb[j] + ob[j]);
    ub[j] = xb[j];
  }

  // ---- gate | up ----
  bitlinear_local(image, offs[MMFREE_LB_MLP_GATE_PROJ_N], offs[MMFREE_LB_MLP_GATE_PROJ_NW],
                  offs[MMFREE_LB_MLP_GATE_PROJ_W], consts[2 * MMFREE_LB_MLP_GATE_PROJ],
                  consts[2 * MMFREE_LB_MLP_GATE_PROJ + 1], ub, d, 2 * inter, gu, nb, nwb, up, codes);

  // ---- down + residual: input silu(gate) * up ----
glu:
  for (int j = 0; j < inter; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_I)
    ub[j] = silu(gu[j], act_frac) * (int64_t)gu[inter + j];
  }
  bitlinear_local(image, offs[MMFREE_LB_MLP_DOWN_PROJ_N], offs[MMFREE_LB_MLP_DOWN_PROJ_NW],
                  offs[MMFREE_LB_MLP_DOWN_PROJ_W], consts[2 * MMFREE_LB_MLP_DOWN_PROJ],
                  consts[2 * MMFREE_LB_MLP_DOWN_PROJ + 1], ub, inter, d, db, nb, nwb, up, codes);
residual_down:
  for (int j = 0; j < d; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_D)
    xb[j] = (int32_t)saturate32((int64_t)xb[j] + db[j]);
    x[j] = xb[j];
    h[j] = hb[j];
  }

  if (tap_enable) {
    store_tap(taps, tap_offset(MMFREE_TAP_ATTN_I_PROJ, d, inter), ib, tap_len(MMFREE_TAP_ATTN_I_PROJ, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_ATTN_F_PROJ, d, inter), fb, tap_len(MMFREE_TAP_ATTN_F_PROJ, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_ATTN_G_PROJ, d, inter), gb, tap_len(MMFREE_TAP_ATTN_G_PROJ, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_ATTN_H, d, inter), hb, tap_len(MMFREE_TAP_ATTN_H, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_ATTN_O_PROJ, d, inter), ob, tap_len(MMFREE_TAP_ATTN_O_PROJ, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_MLP_GATE_PROJ, d, inter), gu, tap_len(MMFREE_TAP_MLP_GATE_PROJ, d, inter));
    store_tap(taps, tap_offset(MMFREE_TAP_MLP_DOWN_PROJ, d, inter), db, tap_len(MMFREE_TAP_MLP_DOWN_PROJ, d, inter));
  }
  return MMFREE_OK;
}
