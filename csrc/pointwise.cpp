// Fused pointwise layers of the SET MLP on the CPU: SReLU (forward, backward) and dropout.
//
// Why: in a sparse MLP the matmuls are cheap (1-2.5 % density), and a step was dominated by the
// activation and dropout written as ~15 separate ATen ops each (masks, multiplies, adds, their
// autograd, the parameter reductions) over [batch, 4000] tensors. Here each is one pass over
// memory (the backward of SReLU two: the input gradient and the four parameter gradients).
//
// Conventions as native.cpp: the ops are internal (`torch.ops.sparsekernels_native.*`),
// called by sparsekernels/ops/pointwise.py, which allocates every output and passes it in;
// every shape, dtype and layout is checked here before any memory is touched.
//
// Determinism: every output element is computed by one thread in a fixed order (the parameter
// gradients: one column per thread, rows in order), so results do not depend on the thread
// count. The SReLU forward uses exactly the arithmetic of the ATen expression
//   y = x + (below * (a_l - 1)) * (x - t_l) + (above * (a_r - 1)) * (x - t_r)
// in the same order (no contraction into FMA: this file is compiled without FMA), so it is
// bitwise equal to it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"

#define SK_POINTWISE_NS sk_pointwise_baseline
#include "pointwise_impl.h"
#undef SK_POINTWISE_NS

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define SK_POINTWISE_NS sk_pointwise_avx2
#include "pointwise_impl.h"
#undef SK_POINTWISE_NS
#pragma GCC pop_options
#define SK_POINTWISE_HAVE_AVX2 1
#endif

namespace sk {
namespace {

// Below this many elements one thread is faster than waking the pool.
constexpr int64_t kParallelElements = 1 << 16;
// Width unit of a backward task's column range, and rows per float partial sum.
constexpr int64_t kColumns = 64;
constexpr int64_t kRowChunk = 64;

// AVX2 copies of the loops whenever the matmul kernels run a SIMD table (AVX2 or AVX-512;
// SPARSEKERNELS_NATIVE_ISA=baseline and set_isa("baseline") select the portable loops for both).
// Both copies give bitwise the same results.
bool use_avx2() {
#ifdef SK_POINTWISE_HAVE_AVX2
  return simd_enabled();
#else
  return false;
#endif
}

std::string pointwise_isa() { return use_avx2() ? "avx2" : "baseline"; }

void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor; got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [rows, features]; got ", t.dim(), " dimensions");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

void check_vector(const at::Tensor& t, int64_t features, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor; got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == features, name, " must have shape [", features, "]; got ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

void check_same_shape(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_matrix(t, name);
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), "; got ", t.sizes());
}

// Per-feature constants of the forward: t_l, t_r = t_l + |r|, a_l - 1, a_r - 1 (each [F]).
struct SReLUConstants {
  std::vector<float> tl, tr, sl, sr;
  SReLUConstants(const at::Tensor& t_left, const at::Tensor& t_right, const at::Tensor& a_left,
                 const at::Tensor& a_right, int64_t features)
      : tl(features), tr(features), sl(features), sr(features) {
    const float *l = t_left.data_ptr<float>(), *r = t_right.data_ptr<float>();
    const float *al = a_left.data_ptr<float>(), *ar = a_right.data_ptr<float>();
    for (int64_t f = 0; f < features; ++f) {
      tl[f] = l[f];
      tr[f] = l[f] + std::fabs(r[f]);
      sl[f] = al[f] - 1.0f;
      sr[f] = ar[f] - 1.0f;
    }
  }
};

void check_srelu_params(const at::Tensor& t_left, const at::Tensor& t_right, const at::Tensor& a_left,
                        const at::Tensor& a_right, int64_t features) {
  check_vector(t_left, features, "t_left");
  check_vector(t_right, features, "t_right");
  check_vector(a_left, features, "a_left");
  check_vector(a_right, features, "a_right");
}

// ------------------------------------------------------------------ SReLU forward
void srelu_forward(const at::Tensor& x, const at::Tensor& t_left, const at::Tensor& t_right,
                   const at::Tensor& a_left, const at::Tensor& a_right, const at::Tensor& out) {
  check_matrix(x, "x");
  const int64_t rows = x.size(0), features = x.size(1);
  check_srelu_params(t_left, t_right, a_left, a_right, features);
  check_same_shape(out, x, "out");
  if (x.numel() == 0) return;
  const SReLUConstants c(t_left, t_right, a_left, a_right, features);
  const float* xs = x.data_ptr<float>();
  float* ys = out.data_ptr<float>();
  const bool avx2 = use_avx2();
  const int64_t grain = std::max<int64_t>(1, kParallelElements / features);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
#ifdef SK_POINTWISE_HAVE_AVX2
    if (avx2) {
      sk_pointwise_avx2::srelu_forward_rows(xs, ys, r0, r1, features, c.tl.data(), c.tr.data(), c.sl.data(),
                                            c.sr.data());
      return;
    }
#endif
    (void)avx2;
    sk_pointwise_baseline::srelu_forward_rows(xs, ys, r0, r1, features, c.tl.data(), c.tr.data(), c.sl.data(),
                                              c.sr.data());
  });
}

// ------------------------------------------------------------------ SReLU backward
// grad_params rows: d t_left, d t_right (the parameter r), d a_left, d a_right.
void srelu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& t_left,
                    const at::Tensor& t_right, const at::Tensor& a_left, const at::Tensor& a_right,
                    const at::Tensor& grad_x, const at::Tensor& grad_params) {
  check_matrix(x, "x");
  const int64_t rows = x.size(0), features = x.size(1);
  check_same_shape(grad, x, "grad");
  check_srelu_params(t_left, t_right, a_left, a_right, features);
  check_same_shape(grad_x, x, "grad_x");
  check_matrix(grad_params, "grad_params");
  TORCH_CHECK_VALUE(grad_params.size(0) == 4 && grad_params.size(1) == features,
                    "grad_params must have shape [4, ", features, "]; got ", grad_params.sizes());
  if (features == 0) return;
  const SReLUConstants c(t_left, t_right, a_left, a_right, features);
  const float* r_param = t_right.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  const float* gs = grad.data_ptr<float>();
  float* dxs = grad_x.data_ptr<float>();
  float* dp = grad_params.data_ptr<float>();
  const bool avx2 = use_avx2();
  // Column ranges, one per task: a task owns its columns' input gradients and four sums (float
  // partials over kRowChunk rows, added in order into double), so nothing is shared and the
  // result does not depend on the thread count. Ranges are multiples of kColumns wide.
  const int64_t blocks = (features + kColumns - 1) / kColumns;
  const int64_t grain = std::max<int64_t>(1, kParallelElements / std::max<int64_t>(rows * kColumns, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kColumns;
    const int64_t n = std::min<int64_t>(b1 * kColumns, features) - c0;
    std::vector<double> sums(4 * n, 0.0);
    std::vector<float> part(4 * n);
    float *p_tl = part.data(), *p_tr = p_tl + n, *p_al = p_tr + n, *p_ar = p_al + n;
    for (int64_t r0 = 0; r0 < rows; r0 += kRowChunk) {
      const int64_t r1 = std::min<int64_t>(rows, r0 + kRowChunk);
#ifdef SK_POINTWISE_HAVE_AVX2
      if (avx2) {
        sk_pointwise_avx2::srelu_backward_rows(xs, gs, dxs, r0, r1, features, c0, n, c.tl.data(), c.tr.data(),
                                               c.sl.data(), c.sr.data(), p_tl, p_tr, p_al, p_ar);
      } else
#endif
      {
        sk_pointwise_baseline::srelu_backward_rows(xs, gs, dxs, r0, r1, features, c0, n, c.tl.data(), c.tr.data(),
                                                   c.sl.data(), c.sr.data(), p_tl, p_tr, p_al, p_ar);
      }
      for (int64_t k = 0; k < 4 * n; ++k) sums[k] += part[k];
    }
    const double *s_tl = sums.data(), *s_tr = s_tl + n, *s_al = s_tr + n, *s_ar = s_al + n;
    for (int64_t j = 0; j < n; ++j) {
      const float r = r_param[c0 + j];
      const float sign = r > 0.0f ? 1.0f : (r < 0.0f ? -1.0f : 0.0f);  // d|r|/dr, 0 at 0 as torch
      // y depends on t_l through (x - t_l) and through t_r = t_l + |r| in (x - t_r).
      dp[c0 + j] = static_cast<float>(s_tl[j] + s_tr[j]);
      dp[features + c0 + j] = sign * static_cast<float>(s_tr[j]);
      dp[2 * features + c0 + j] = static_cast<float>(s_al[j]);
      dp[3 * features + c0 + j] = static_cast<float>(s_ar[j]);
    }
  });
  (void)avx2;
}

// ------------------------------------------------------------------ dropout
// Element i is kept when a counter-based hash of (seed, i) (pointwise_impl.h), read as a
// 24-bit uniform number in [0, 1), is >= p. The mask is a pure function of (seed, i): the
// backward applies the same op to the gradient with the same seed instead of storing a mask,
// and the result does not depend on the thread count or the instruction set. Kept elements are
// scaled by 1 / (1 - p); dropped ones are multiplied by 0 (a NaN input stays NaN, as in x * mask).
uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void dropout_apply(const at::Tensor& x, int64_t seed, double p, const at::Tensor& out) {
  check_matrix(x, "x");
  check_same_shape(out, x, "out");
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "p must be in [0, 1); got ", p);
  if (x.numel() == 0) return;
  const float* xs = x.data_ptr<float>();
  float* ys = out.data_ptr<float>();
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  // keep  <=>  (h >> 8) * 2^-24 >= p  <=>  (h >> 8) >= ceil(p * 2^24)
  const uint32_t threshold = static_cast<uint32_t>(std::ceil(p * 16777216.0));
  const uint64_t key = splitmix64(static_cast<uint64_t>(seed));
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const bool avx2 = use_avx2();
  at::parallel_for(0, x.numel(), kParallelElements, [&](int64_t i0, int64_t i1) {
#ifdef SK_POINTWISE_HAVE_AVX2
    if (avx2) {
      sk_pointwise_avx2::dropout_range(xs, ys, i0, i1, k0, k1, threshold, scale);
      return;
    }
#endif
    (void)avx2;
    sk_pointwise_baseline::dropout_range(xs, ys, i0, i1, k0, k1, threshold, scale);
  });
}

}  // namespace
}  // namespace sk

TORCH_LIBRARY_FRAGMENT(sparsekernels_native, m) {
  m.def(
      "srelu_forward(Tensor x, Tensor t_left, Tensor t_right, Tensor a_left, Tensor a_right, Tensor(a!) out) -> ()");
  m.def(
      "srelu_backward(Tensor grad, Tensor x, Tensor t_left, Tensor t_right, Tensor a_left, Tensor a_right, "
      "Tensor(a!) grad_x, Tensor(b!) grad_params) -> ()");
  m.def("dropout_apply(Tensor x, int seed, float p, Tensor(a!) out) -> ()");
  m.def("pointwise_isa() -> str", &sk::pointwise_isa);
}

TORCH_LIBRARY_IMPL(sparsekernels_native, CPU, m) {
  m.impl("srelu_forward", &sk::srelu_forward);
  m.impl("srelu_backward", &sk::srelu_backward);
  m.impl("dropout_apply", &sk::dropout_apply);
}
