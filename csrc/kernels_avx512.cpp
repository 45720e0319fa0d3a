// The kernels for x86-64 CPUs with AVX-512F (chosen at run time by native.cpp).
//
// Only this translation unit is compiled for AVX-512, through the target pragma below. The
// 32 zmm registers hold a 12x32 register tile (24 accumulators, two B vectors; the A value
// is an embedded broadcast operand of each FMA): per reduction step 2 loads and 24 FMAs of 16
// lanes, against 8 loads/broadcasts and 12 FMAs of 8 lanes for the AVX2 6x16 tile, so the
// same flops take fewer than half the instructions, and a 32-wide block (the common block
// size) is one tile wide, so each A value is read once per block instead of twice.
// Column tails (< 16) use masked loads and stores.
#include "kernels_api.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")

namespace sk {
namespace avx512 {
typedef float vf16 __attribute__((vector_size(64)));
inline __attribute__((always_inline)) vf16 sk_load_part(const float* p, int n) {
  return (vf16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
}
inline __attribute__((always_inline)) void sk_store_part(float* p, vf16 v, int n) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
}
#define SK_MASKED_PART
inline __attribute__((always_inline)) void sk_stream_store(float* p, vf16 v) { _mm512_stream_ps(p, (__m512)v); }
inline __attribute__((always_inline)) void sk_stream_fence() { _mm_sfence(); }
#define SK_STREAM_STORE
#define SK_MR 12
#define SK_NV 2
#define SK_VW 16
#include "kernels_impl.h"
#undef SK_MR
#undef SK_NV
#undef SK_VW
#undef SK_MASKED_PART
#undef SK_STREAM_STORE
}  // namespace avx512

const Kernels kernels_avx512 = {
    "avx512",
    avx512::dsd_scratch,
    avx512::dds_scratch,
    avx512::sdd_scratch,
    avx512::conv_fwd_scratch,
    avx512::conv_dx_scratch,
    avx512::conv_dw_scratch,
    avx512::conv_fwd_tasks,
    avx512::conv_dx_tasks,
    avx512::dsd,
    avx512::dds,
    avx512::sdd,
    avx512::conv_fwd,
    avx512::conv_dx,
    avx512::conv_dw,
};
}  // namespace sk

#pragma GCC pop_options
#else
namespace sk {
// Not an x86-64 GCC/Clang build: native.cpp never selects this table (name is null).
const Kernels kernels_avx512 = {};
}  // namespace sk
#endif
