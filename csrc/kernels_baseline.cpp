// The kernels for any CPU the compiler targets by default (SSE2 on x86-64): the fallback when
// the CPU lacks AVX2/FMA. 8-float vectors take two SSE registers here, so the register tile is
// smaller (4x8: 8 accumulator registers) to avoid spilling.
#include "kernels_api.h"

namespace sk {
namespace baseline {
#define SK_MR 4
#define SK_NV 1
#include "kernels_impl.h"
#undef SK_MR
#undef SK_NV
}  // namespace baseline

const Kernels kernels_baseline = {
    "baseline",
    baseline::dsd_scratch,
    baseline::dds_scratch,
    baseline::sdd_scratch,
    baseline::conv_fwd_scratch,
    baseline::conv_dx_scratch,
    baseline::conv_dw_scratch,
    baseline::conv_fwd_tasks,
    baseline::conv_dx_tasks,
    baseline::dsd,
    baseline::dds,
    baseline::sdd,
    baseline::conv_fwd,
    baseline::conv_dx,
    baseline::conv_dw,
};
}  // namespace sk
