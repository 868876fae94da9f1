// mmfree_rmsnorm_quantize and mmfree_dequantize: the two ends of a BitLinear.
//
// RMSNorm is never computed (docs/numerics.md, "the key identity"): the quantizer needs the direction of
// p = u' * nw for the codes, P = max|p| and the self-normalised sum of squares (S, sz) of u' * n for the
// output scale, and mmfree_dequantize turns (P, S, sz) and the BitLinear's export constant (c_m, c_e) into
// the per-token multiplier (M, shift) that rescales each accumulator into the output format (folded into
// c_e at export).
#include "mmfree_blocks.h"

using namespace mmfree;

int mmfree_rmsnorm_quantize(hls::stream<int64_t> &u, const mmfree_vec_t *n, const mmfree_vec_t *nw,
                            hls::stream<int8_t> &codes, int64_t *P, int64_t *S, int32_t *sz, int k) {
#pragma HLS INTERFACE axis port=u
#pragma HLS INTERFACE axis port=codes
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=n offset=slave bundle=gmem0 depth=MMFREE_DEPTH_VEC)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=nw offset=slave bundle=gmem0 depth=MMFREE_DEPTH_VEC)
#pragma HLS INTERFACE s_axilite port=P bundle=control
#pragma HLS INTERFACE s_axilite port=S bundle=control
#pragma HLS INTERFACE s_axilite port=sz bundle=control
#pragma HLS INTERFACE s_axilite port=k bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (k <= 0) return MMFREE_ERR_SIZE;
  if (k > MMFREE_MAX_K) return MMFREE_ERR_SPEC;
  if (k > MMFREE_MAX_KBUF) return MMFREE_ERR_TOO_LARGE;

  static int64_t ubuf[MMFREE_MAX_KBUF];
  static int32_t up[MMFREE_MAX_KBUF];
  static mmfree_vec_t nbuf[MMFREE_MAX_KBUF];
  static mmfree_vec_t nwbuf[MMFREE_MAX_KBUF];
  static int8_t cbuf[MMFREE_MAX_KBUF];
read_inputs:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    ubuf[i] = u.read();
    nbuf[i] = n[i];
    nwbuf[i] = nw[i];
  }
  normalize_vec(ubuf, up, k);
  const SumSq ss = sumsq_vec(up, nbuf, k);
  const int64_t p = codes_vec(up, nwbuf, k, cbuf);
write_codes:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    codes.write(cbuf[i]);
  }
  *P = p;
  *S = ss.S;
  *sz = ss.sz;
  return MMFREE_OK;
}

int mmfree_dequantize(hls::stream<int32_t> &acc, hls::stream<int32_t> &y, int64_t P, int64_t S, int32_t sz,
                      int32_t c_m, int32_t c_e, int32_t *M, int32_t *shift, int n) {
#pragma HLS INTERFACE axis port=acc
#pragma HLS INTERFACE axis port=y
#pragma HLS INTERFACE s_axilite port=P bundle=control
#pragma HLS INTERFACE s_axilite port=S bundle=control
#pragma HLS INTERFACE s_axilite port=sz bundle=control
#pragma HLS INTERFACE s_axilite port=c_m bundle=control
#pragma HLS INTERFACE s_axilite port=c_e bundle=control
#pragma HLS INTERFACE s_axilite port=M bundle=control
#pragma HLS INTERFACE s_axilite port=shift bundle=control
#pragma HLS INTERFACE s_axilite port=n bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (n <= 0) return MMFREE_ERR_SIZE;
  int64_t m, sh;
  output_multiplier(P, S, sz, c_m, c_e, m, sh);
dequant:
  for (int r = 0; r < n; ++r) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_ROWS)
    y.write((int32_t)dequantize(acc.read(), m, sh));
  }
  *M = (int32_t)m;
  *shift = (int32_t)sh;
  return MMFREE_OK;
}
