// mmfree_mlgru: the MLGRU's elementwise part for one token, one channel per clock.
//
//   rate = forget_rate(f, 1 - lb) = (1 - lb) * sigmoid(-f)        Q0.31  (= 1 - f of the float model)
//   h    = hgrn_update(h, silu(i), rate) = h + rate (silu(i) - h) Q(act_frac), saturating
//   u    = g * silu(h)                                            full-precision product: input of o_proj
// i, f, g arrive as AXI4-Stream (the outputs of the three BitLinears), 1 - lb and the state h through
// AXI4 masters (h is read and written back in place), u leaves as AXI4-Stream.
#include "mmfree_blocks.h"

using namespace mmfree;

int mmfree_mlgru(hls::stream<int32_t> &i, hls::stream<int32_t> &f, hls::stream<int32_t> &g,
                 const mmfree_gate_t *one_minus_lb, int32_t *h, hls::stream<int64_t> &u, int act_frac, int d) {
#pragma HLS INTERFACE axis port=i
#pragma HLS INTERFACE axis port=f
#pragma HLS INTERFACE axis port=g
#pragma HLS INTERFACE axis port=u
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=one_minus_lb offset=slave bundle=gmem0 depth=MMFREE_DEPTH_VEC)
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=h offset=slave bundle=gmem1 depth=MMFREE_DEPTH_VEC)
#pragma HLS INTERFACE s_axilite port=act_frac bundle=control
#pragma HLS INTERFACE s_axilite port=d bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (d <= 0) return MMFREE_ERR_SIZE;
  if (!MMFREE_FRAC_OK(act_frac)) return MMFREE_ERR_FRAC;
channels:
  for (int j = 0; j < d; ++j) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_D)
#pragma HLS DEPENDENCE variable=h inter false
    const int64_t iv = i.read();
    const int64_t fv = f.read();
    const int64_t gv = g.read();
    const int64_t rate = forget_rate(fv, one_minus_lb[j], act_frac);
    const int64_t hn = hgrn_update(h[j], silu(iv, act_frac), rate);
    h[j] = (int32_t)hn;
    u.write(gv * silu(hn, act_frac));
  }
  return MMFREE_OK;
}
