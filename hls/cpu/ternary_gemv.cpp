// Ternary matrix x int8 codes, exact int32 accumulation: the one kernel of mmfree's fast CPU decode
// (mmfree.pymodel.fastcpu). Built with g++ like the HLS C-simulation, loaded with ctypes.
//
// Weight layout (2 bits per weight, packed once by fastcpu.pack_2bit): each row is padded to Kp, a
// multiple of 128 columns, and stored as Kp/128 blocks of 32 bytes; byte j of block b holds the weights of
// columns b*128 + 32*s + j (s = 0..3) in bits 2s..2s+1 as the unsigned value w + 1 in {0, 1, 2}.
//
//   out[t, n] = sum_k (w[n,k] + 1) x[t,k]  -  sum_k x[t,k]   ( = sum_k w[n,k] x[t,k], exactly )
//
// x: int8 codes [T, Kp] (padding columns must be 0), out: int32 [T, N]. Every partial sum is bounded by
// 2 * 127 * Kp < 2**31 for Kp <= 2**22, checked by the caller.
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && !defined(MMFREE_FORCE_SCALAR)
#include <immintrin.h>
#define MMFREE_USE_AVX2 1
#endif

static inline int32_t row_dot_scalar(const uint8_t* w, const int8_t* x, int64_t blocks) {
    int32_t acc = 0;
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* wb = w + 32 * b;
        const int8_t* xb = x + 128 * b;
        for (int s = 0; s < 4; ++s)
            for (int j = 0; j < 32; ++j)
                acc += (int32_t)((wb[j] >> (2 * s)) & 3) * (int32_t)xb[32 * s + j];
    }
    return acc;
}

#ifdef MMFREE_USE_AVX2
static inline int32_t row_dot_avx2(const uint8_t* w, const int8_t* x, int64_t blocks) {
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int64_t b = 0; b < blocks; ++b) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(w + 32 * b));
        const int8_t* xb = x + 128 * b;
        // |each int16 lane| <= 2 * 2 * 128 per product pair, 4 pairs summed: <= 2048, no saturation
        __m256i p = _mm256_maddubs_epi16(_mm256_and_si256(v, three), _mm256_loadu_si256((const __m256i*)xb));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), three),
                                                     _mm256_loadu_si256((const __m256i*)(xb + 32))));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), three),
                                                     _mm256_loadu_si256((const __m256i*)(xb + 64))));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), three),
                                                     _mm256_loadu_si256((const __m256i*)(xb + 96))));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones16));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
#endif

extern "C" {

// 1 when the AVX2 path is compiled in, 0 for the portable loop.
int mmfree_fast_simd(void) {
#ifdef MMFREE_USE_AVX2
    return 1;
#else
    return 0;
#endif
}

void mmfree_fast_gemv(const uint8_t* w, int64_t n_rows, int64_t kp, const int8_t* x, const int32_t* xsum,
                      int64_t n_tok, int32_t* out, int n_threads) {
    const int64_t blocks = kp / 128, row_bytes = kp / 4;
#ifdef _OPENMP
    if (n_threads < 1) n_threads = 1;
    #pragma omp parallel for schedule(static) num_threads(n_threads) if (n_rows * kp >= (1 << 18))
#endif
    for (int64_t n = 0; n < n_rows; ++n) {
        const uint8_t* wr = w + n * row_bytes;
        for (int64_t t = 0; t < n_tok; ++t) {
#ifdef MMFREE_USE_AVX2
            int32_t a = row_dot_avx2(wr, x + t * kp, blocks);
#else
            int32_t a = row_dot_scalar(wr, x + t * kp, blocks);
#endif
            out[t * n_rows + n] = a - xsum[t];
        }
    }
}

}  // extern "C"
