// Small-block dds and sdd on the CPU (element sparsity, blocks of <= kSmallBlock weights);
// loops in unstructured_impl.h.
//
// The block kernels pay a register tile's setup per block, which at 1x1 blocks is per weight
// (the SET MLP at block 1: ~0.45 s per training step, slower than dense; block 4: 75 ms
// against 19 ms at block 8). Here the dense operand is copied once into transposed,
// contiguous form ([inner, P] for dds, [N, K] for sdd), so that each weight reads one
// contiguous row of it, and the outputs are computed one output row (dds) or one block (sdd)
// per task item, in a fixed order: the bits do not depend on the thread count. Measured on the
// SET MLP step (1 thread): block 1 37 ms, block 4 27 ms; block 8 stays on the block kernels
// (19 ms there, 26 ms on this path).
#include "unstructured.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#define SK_UNSTRUCTURED_NS sk_unstructured_baseline
#include "unstructured_impl.h"
#undef SK_UNSTRUCTURED_NS

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SK_UNSTRUCTURED_NS sk_unstructured_avx2
#include "unstructured_impl.h"
#undef SK_UNSTRUCTURED_NS
#pragma GCC pop_options
#define SK_UNSTRUCTURED_HAVE_AVX2 1
#endif

namespace sk {
namespace {

// Multiply-adds below which one thread is faster than waking the pool.
constexpr int64_t kParallelWork = 1 << 17;

int64_t grain_for(int64_t items, int64_t work) {
  // Items per task so that a task does at least kParallelWork multiply-adds.
  const int64_t per_item = std::max<int64_t>(1, work / std::max<int64_t>(items, 1));
  return std::max<int64_t>(1, kParallelWork / per_item);
}

}  // namespace

void unstructured_dds(const Layout& L, const float* values, const at::Tensor& a, bool transpose, at::Tensor& out,
                      bool avx2) {
  const int64_t P = a.size(0);
  // transpose: out[p, r] = sum_c a[p, c] S[r, c]  -> rows of S (CSR).
  // else:      out[p, c] = sum_r a[p, r] S[r, c]  -> columns of S (CSC).
  const int64_t outputs = transpose ? L.R * L.bm : L.C * L.bn;
  const at::Tensor xt = a.t().contiguous();  // [inner, P]
  at::Tensor yt = at::empty({outputs, P}, a.options());
  const float* x = xt.data_ptr<float>();
  float* y = yt.data_ptr<float>();
  const int64_t grain = grain_for(outputs, L.nnz * L.bm * L.bn * P);
  at::parallel_for(0, outputs, grain, [&](int64_t o0, int64_t o1) {
#ifdef SK_UNSTRUCTURED_HAVE_AVX2
    if (avx2) {
      transpose ? sk_unstructured_avx2::rows_times(x, y, P, o0, o1, L, values)
                : sk_unstructured_avx2::cols_times(x, y, P, o0, o1, L, values);
      return;
    }
#endif
    (void)avx2;
    transpose ? sk_unstructured_baseline::rows_times(x, y, P, o0, o1, L, values)
              : sk_unstructured_baseline::cols_times(x, y, P, o0, o1, L, values);
  });
  out.copy_(yt.t());
}

void unstructured_sdd(const Layout& L, const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool avx2) {
  const int64_t K = a.size(1);
  const at::Tensor ar = a.contiguous();      // [M, K]
  const at::Tensor bt = b.t().contiguous();  // [N, K]
  const float* pa = ar.data_ptr<float>();
  const float* pb = bt.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t grain = grain_for(L.nnz, L.nnz * L.bm * L.bn * K);
  // Blocks in CSR order: consecutive blocks share their rows of a (kept in L1).
  at::parallel_for(0, L.nnz, grain, [&](int64_t j0, int64_t j1) {
#ifdef SK_UNSTRUCTURED_HAVE_AVX2
    if (avx2) {
      sk_unstructured_avx2::block_dots(pa, pb, K, j0, j1, L, po);
      return;
    }
#endif
    (void)avx2;
    sk_unstructured_baseline::block_dots(pa, pb, K, j0, j1, L, po);
  });
}

}  // namespace sk
