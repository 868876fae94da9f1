// mmfree_ternary_matvec: packed-ternary matrix times int8 activation codes.
//
// Interfaces: w (the packed matrix, n rows of row_bytes(k) bytes) through an AXI4 master; codes in and
// accumulators out as AXI4-Stream; n, k and the status through AXI4-Lite. The codes are buffered on
// chip (cyclic partition by TRITS_PER_BYTE, so one packed byte is consumed per clock); each row is a
// burst of ceil(k / 5) bytes.
#include "mmfree_blocks.h"

using namespace mmfree;

int mmfree_ternary_matvec(const uint8_t *w, hls::stream<int8_t> &codes, hls::stream<int32_t> &acc, int n, int k) {
  MMFREE_PRAGMA(HLS INTERFACE m_axi port=w offset=slave bundle=gmem0 depth=MMFREE_DEPTH_W max_read_burst_length=256)
#pragma HLS INTERFACE axis port=codes
#pragma HLS INTERFACE axis port=acc
#pragma HLS INTERFACE s_axilite port=n bundle=control
#pragma HLS INTERFACE s_axilite port=k bundle=control
#pragma HLS INTERFACE s_axilite port=return bundle=control
  if (n <= 0 || k <= 0) return MMFREE_ERR_SIZE;
  if (k > MMFREE_MAX_K) return MMFREE_ERR_SPEC;
  if (k > MMFREE_MAX_KBUF) return MMFREE_ERR_TOO_LARGE;

  static int8_t cbuf[MMFREE_MAX_KBUF];
  MMFREE_PRAGMA(HLS ARRAY_PARTITION variable=cbuf cyclic factor=MMFREE_TRITS_PER_BYTE)
read_codes:
  for (int i = 0; i < k; ++i) {
#pragma HLS PIPELINE II=1
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_KBUF)
    cbuf[i] = codes.read();
  }
  const uint64_t rb = (uint64_t)row_bytes(k);
rows:
  for (int r = 0; r < n; ++r) {
    MMFREE_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=MMFREE_MAX_ROWS)
    acc.write(ternary_row_dot(w, (uint64_t)r * rb, k, cbuf));
  }
  return MMFREE_OK;
}
