// The kernels for x86-64 CPUs with AVX2 and FMA (chosen at run time by native.cpp).
//
// Only this translation unit is compiled for AVX2, through the target pragma below, so the
// extension still loads and runs on CPUs without it. A 6x16 register tile uses 12 of the 16
// ymm registers for accumulators, leaving room for two B vectors and the broadcast A value;
// with 2 FMA units of latency 4, 12 independent accumulators keep both units busy.
#include "kernels_api.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace sk {
namespace avx2 {
typedef float vf8 __attribute__((vector_size(32)));
inline __attribute__((always_inline)) void sk_stream_store(float* p, vf8 v) { _mm256_stream_ps(p, (__m256)v); }
inline __attribute__((always_inline)) void sk_stream_fence() { _mm_sfence(); }
#define SK_STREAM_STORE
#define SK_MR 6
#define SK_NV 2
#include "kernels_impl.h"
#undef SK_MR
#undef SK_NV
#undef SK_STREAM_STORE
}  // namespace avx2

const Kernels kernels_avx2 = {
    "avx2",
    avx2::dsd_scratch,
    avx2::dds_scratch,
    avx2::sdd_scratch,
    avx2::conv_fwd_scratch,
    avx2::conv_dx_scratch,
    avx2::conv_dw_scratch,
    avx2::conv_fwd_tasks,
    avx2::conv_dx_tasks,
    avx2::dsd,
    avx2::dds,
    avx2::sdd,
    avx2::conv_fwd,
    avx2::conv_dx,
    avx2::conv_dw,
};
}  // namespace sk

#pragma GCC pop_options
#else
namespace sk {
// Not an x86-64 GCC/Clang build: native.cpp never selects this table (name is null).
const Kernels kernels_avx2 = {};
}  // namespace sk
#endif
