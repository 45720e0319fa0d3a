// Fused training-mode BatchNorm + ReLU on the CPU, optionally with a residual added before the
// ReLU (a ResNet block's `relu(bn2(conv2(.)) + shortcut)`), forward and backward.
//
// Why: in a sparse CIFAR ResNet on a CPU the sparse convolutions are about half of a training
// step; BatchNorm, ReLU and the residual add were most of the rest (a perf profile of ResNet-20
// width 2 at density 0.1: ~27 % of the samples), each a separate pass over activations larger
// than the caches. Per BN-ReLU pair, ATen makes 5 passes forward (statistics, normalise, ReLU
// read + write) and 8 backward (ReLU: dy, y -> dz; BN: a reduction over dz, x and dz, x -> dx);
// here the forward is statistics + one normalise-and-ReLU pass, the backward a reduction over
// dy, x (the mask recomputed from x) and one pass dy, x -> dx. With a residual the forward also
// absorbs the add, and the backward's first pass writes dz, the residual's gradient.
//
// Conventions as pointwise.cpp: internal ops (`torch.ops.sparsekernels_native.*`) called by
// sparsekernels/ops/batchnorm.py, which allocates every output; shapes, dtypes and layouts are
// checked here before any memory is touched. The running statistics are updated by the caller
// from the returned batch mean and variance.
//
// Determinism: rows are reduced in fixed groups of kGroupRows (float partials over kChunkRows
// rows, added in order into double), and the groups' sums are added in group order: the results
// do not depend on the thread count or on which copy of the loops (baseline, AVX2) runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"

#define SK_BATCHNORM_NS sk_batchnorm_baseline
#include "batchnorm_impl.h"
#undef SK_BATCHNORM_NS

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define SK_BATCHNORM_NS sk_batchnorm_avx2
#include "batchnorm_impl.h"
#undef SK_BATCHNORM_NS
#pragma GCC pop_options
#define SK_BATCHNORM_HAVE_AVX2 1
#endif

namespace sk {
namespace {

constexpr int64_t kChunkRows = 64;    // rows per float partial sum
constexpr int64_t kGroupRows = 1024;  // rows per double partial: one task of a reduction
constexpr int64_t kParallelElements = 1 << 16;  // below this many elements per task: one thread

bool use_avx2() {
#ifdef SK_BATCHNORM_HAVE_AVX2
  return simd_enabled();
#else
  return false;
#endif
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor; got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [rows, channels]; got ", t.dim(), " dimensions");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

void check_like(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_rows(t, name);
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), "; got ", t.sizes());
}

void check_channels(const at::Tensor& t, int64_t channels, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor; got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == channels, name, " must have shape [", channels, "]; got ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Per-channel double sums of two row functions over all rows, reduced deterministically:
// `rows_fn(r0, r1, p1, p2)` writes float partials of rows [r0, r1) into p1/p2 ([channels] each).
template <typename RowsFn>
void reduce_rows(int64_t rows, int64_t channels, std::vector<double>& s1, std::vector<double>& s2,
                 const RowsFn& rows_fn) {
  const int64_t groups = (rows + kGroupRows - 1) / kGroupRows;
  std::vector<double> partial(static_cast<size_t>(groups * 2 * channels), 0.0);
  const int64_t grain = std::max<int64_t>(1, kParallelElements / std::max<int64_t>(kGroupRows * channels, 1));
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    std::vector<float> p(static_cast<size_t>(2 * channels));
    for (int64_t g = g0; g < g1; ++g) {
      double* d1 = partial.data() + g * 2 * channels;
      double* d2 = d1 + channels;
      const int64_t end = std::min<int64_t>(rows, (g + 1) * kGroupRows);
      for (int64_t r0 = g * kGroupRows; r0 < end; r0 += kChunkRows) {
        rows_fn(r0, std::min<int64_t>(end, r0 + kChunkRows), p.data(), p.data() + channels);
        for (int64_t j = 0; j < channels; ++j) {
          d1[j] += p[j];
          d2[j] += p[channels + j];
        }
      }
    }
  });
  s1.assign(static_cast<size_t>(channels), 0.0);
  s2.assign(static_cast<size_t>(channels), 0.0);
  for (int64_t g = 0; g < groups; ++g) {
    const double* d1 = partial.data() + g * 2 * channels;
    for (int64_t j = 0; j < channels; ++j) {
      s1[j] += d1[j];
      s2[j] += d1[channels + j];
    }
  }
}

template <typename RowsFn>
void for_rows(int64_t rows, int64_t channels, const RowsFn& rows_fn) {
  const int64_t grain = std::max<int64_t>(1, kParallelElements / std::max<int64_t>(channels, 1));
  at::parallel_for(0, rows, grain, rows_fn);
}

// scale = weight * invstd, shift = bias - mean * scale (float, the same in forward and backward:
// the backward's recomputed pre-activation, and so its ReLU mask, is the forward's).
void affine_of(const float* w, const float* b, const float* mean, const float* invstd, int64_t channels,
               std::vector<float>& scale, std::vector<float>& shift) {
  scale.resize(static_cast<size_t>(channels));
  shift.resize(static_cast<size_t>(channels));
  for (int64_t j = 0; j < channels; ++j) {
    scale[j] = w[j] * invstd[j];
    shift[j] = b[j] - mean[j] * scale[j];
  }
}

// ------------------------------------------------------------------ forward
// x, residual (optional), out: [M, C]; weight, bias: [C]. Writes out = relu(bn(x) (+ residual))
// with the batch statistics, and mean, invstd = 1 / sqrt(var + eps), var (biased) ([C] each).
void bn_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     const std::optional<at::Tensor>& residual, double eps, const at::Tensor& out,
                     const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& var) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), channels = x.size(1);
  TORCH_CHECK_VALUE(rows > 0, "x must have at least one row");
  check_channels(weight, channels, "weight");
  check_channels(bias, channels, "bias");
  if (residual.has_value()) check_like(*residual, x, "residual");
  check_like(out, x, "out");
  check_channels(mean, channels, "mean");
  check_channels(invstd, channels, "invstd");
  check_channels(var, channels, "var");
  TORCH_CHECK_VALUE(eps >= 0.0, "eps must be >= 0; got ", eps);
  if (channels == 0) return;
  const float* xs = x.data_ptr<float>();
  const float* rs = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  float* ys = out.data_ptr<float>();
  const bool avx2 = use_avx2();

  std::vector<float> pivot(xs, xs + channels);  // the first row: a sample of every channel
  std::vector<double> s1, s2;
  reduce_rows(rows, channels, s1, s2, [&](int64_t r0, int64_t r1, float* p1, float* p2) {
#ifdef SK_BATCHNORM_HAVE_AVX2
    if (avx2) return sk_batchnorm_avx2::stats_rows(xs, r0, r1, channels, pivot.data(), p1, p2);
#endif
    sk_batchnorm_baseline::stats_rows(xs, r0, r1, channels, pivot.data(), p1, p2);
  });
  float *m = mean.data_ptr<float>(), *is = invstd.data_ptr<float>(), *v = var.data_ptr<float>();
  for (int64_t j = 0; j < channels; ++j) {
    const double d = s1[j] / static_cast<double>(rows);
    const double variance = std::max(0.0, s2[j] / static_cast<double>(rows) - d * d);
    m[j] = static_cast<float>(pivot[j] + d);
    v[j] = static_cast<float>(variance);
    is[j] = static_cast<float>(1.0 / std::sqrt(variance + eps));
  }
  std::vector<float> scale, shift;
  affine_of(weight.data_ptr<float>(), bias.data_ptr<float>(), m, is, channels, scale, shift);
  for_rows(rows, channels, [&](int64_t r0, int64_t r1) {
#ifdef SK_BATCHNORM_HAVE_AVX2
    if (avx2) return sk_batchnorm_avx2::normalize_rows(xs, rs, ys, r0, r1, channels, scale.data(), shift.data());
#endif
    sk_batchnorm_baseline::normalize_rows(xs, rs, ys, r0, r1, channels, scale.data(), shift.data());
  });
  (void)avx2;
}

// ------------------------------------------------------------------ backward
// grad (dL/d out), x, residual: [M, C]; weight, bias, mean, invstd: [C] as the forward saw and
// returned them. Writes grad_x [M, C], grad_params [2, C] (d weight, d bias) and, with a
// residual, grad_residual [M, C].
void bn_relu_backward(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                      const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                      const at::Tensor& invstd, const at::Tensor& grad_x, const at::Tensor& grad_params,
                      const std::optional<at::Tensor>& grad_residual) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), channels = x.size(1);
  TORCH_CHECK_VALUE(rows > 0, "x must have at least one row");
  check_like(grad, x, "grad");
  TORCH_CHECK_VALUE(residual.has_value() == grad_residual.has_value(),
                    "grad_residual must be given exactly when residual is");
  if (residual.has_value()) {
    check_like(*residual, x, "residual");
    check_like(*grad_residual, x, "grad_residual");
  }
  check_channels(weight, channels, "weight");
  check_channels(bias, channels, "bias");
  check_channels(mean, channels, "mean");
  check_channels(invstd, channels, "invstd");
  check_like(grad_x, x, "grad_x");
  check_rows(grad_params, "grad_params");
  TORCH_CHECK_VALUE(grad_params.size(0) == 2 && grad_params.size(1) == channels,
                    "grad_params must have shape [2, ", channels, "]; got ", grad_params.sizes());
  if (channels == 0) return;
  const float* dys = grad.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  const float* rs = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  float* dzs = grad_residual.has_value() ? grad_residual->data_ptr<float>() : nullptr;
  float* dxs = grad_x.data_ptr<float>();
  const float* m = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  const bool avx2 = use_avx2();
  std::vector<float> scale, shift;
  affine_of(weight.data_ptr<float>(), bias.data_ptr<float>(), m, is, channels, scale, shift);

  std::vector<double> sum_dz, sum_dz_xc;
  reduce_rows(rows, channels, sum_dz, sum_dz_xc, [&](int64_t r0, int64_t r1, float* p1, float* p2) {
#ifdef SK_BATCHNORM_HAVE_AVX2
    if (avx2)
      return sk_batchnorm_avx2::backward_sums_rows(dys, xs, rs, dzs, r0, r1, channels, scale.data(), shift.data(),
                                                   m, p1, p2);
#endif
    sk_batchnorm_baseline::backward_sums_rows(dys, xs, rs, dzs, r0, r1, channels, scale.data(), shift.data(), m,
                                              p1, p2);
  });
  std::vector<float> mean_dz(static_cast<size_t>(channels)), k(static_cast<size_t>(channels));
  float* dp = grad_params.data_ptr<float>();
  for (int64_t j = 0; j < channels; ++j) {
    const double inv = static_cast<double>(is[j]);
    dp[j] = static_cast<float>(sum_dz_xc[j] * inv);  // d weight = sum dz * xhat
    dp[channels + j] = static_cast<float>(sum_dz[j]);  // d bias
    mean_dz[j] = static_cast<float>(sum_dz[j] / static_cast<double>(rows));
    k[j] = static_cast<float>(inv * inv * sum_dz_xc[j] / static_cast<double>(rows));
  }
  for_rows(rows, channels, [&](int64_t r0, int64_t r1) {
#ifdef SK_BATCHNORM_HAVE_AVX2
    if (avx2)
      return sk_batchnorm_avx2::input_grad_rows(dys, xs, dzs, dxs, r0, r1, channels, scale.data(), shift.data(), m,
                                                mean_dz.data(), k.data());
#endif
    sk_batchnorm_baseline::input_grad_rows(dys, xs, dzs, dxs, r0, r1, channels, scale.data(), shift.data(), m,
                                           mean_dz.data(), k.data());
  });
  (void)avx2;
}

}  // namespace
}  // namespace sk

TORCH_LIBRARY_FRAGMENT(sparsekernels_native, m) {
  m.def(
      "bn_relu_forward(Tensor x, Tensor weight, Tensor bias, Tensor? residual, float eps, Tensor(a!) out, "
      "Tensor(b!) mean, Tensor(c!) invstd, Tensor(d!) var) -> ()");
  m.def(
      "bn_relu_backward(Tensor grad, Tensor x, Tensor? residual, Tensor weight, Tensor bias, Tensor mean, "
      "Tensor invstd, Tensor(a!) grad_x, Tensor(b!) grad_params, Tensor(c!)? grad_residual) -> ()");
}

TORCH_LIBRARY_IMPL(sparsekernels_native, CPU, m) {
  m.impl("bn_relu_forward", &sk::bn_relu_forward);
  m.impl("bn_relu_backward", &sk::bn_relu_backward);
}
