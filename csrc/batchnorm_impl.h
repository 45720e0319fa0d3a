// Loop bodies of the fused training-mode BatchNorm + ReLU (csrc/batchnorm.cpp), included twice
// by that file: once for the baseline x86-64 target and once under `#pragma GCC target("avx2")`,
// each time inside its own namespace (SK_BATCHNORM_NS). No include guard on purpose. As in
// pointwise_impl.h, no FMA is enabled, so the compiler cannot contract a multiply-add: both
// copies compute bitwise the same results, and the backward recomputes the forward's
// pre-activation with the same operations, so its ReLU mask is exactly the forward's.
//
// Activations are rows of `channels` floats (channels-last [N, H, W, C] viewed as [N*H*W, C]).
// Every function handles the rows [r0, r1) and writes only their outputs (or its own partials).
namespace SK_BATCHNORM_NS {

// The pre-activation of one element: x * scale + shift (+ residual).
inline float pre_activation(float x, float scale, float shift) { return x * scale + shift; }

// Per channel j: p1[j] = sum of (x - pivot[j]), p2[j] = sum of (x - pivot[j])^2 over the rows
// (float, rows in order). Shifting by a sample of the channel keeps the one-pass variance
// free of cancellation when the mean is large against the spread.
inline void stats_rows(const float* __restrict__ xs, int64_t r0, int64_t r1, int64_t channels,
                       const float* __restrict__ pivot, float* __restrict__ p1, float* __restrict__ p2) {
  for (int64_t j = 0; j < channels; ++j) p1[j] = p2[j] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = xs + r * channels;
    for (int64_t j = 0; j < channels; ++j) {
      const float d = xr[j] - pivot[j];
      p1[j] += d;
      p2[j] += d * d;
    }
  }
}

// y = relu(x * scale + shift (+ residual)); relu keeps NaN (NaN < 0 is false), as torch's.
inline void normalize_rows(const float* __restrict__ xs, const float* __restrict__ rs, float* __restrict__ ys,
                           int64_t r0, int64_t r1, int64_t channels, const float* __restrict__ scale,
                           const float* __restrict__ shift) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = xs + r * channels;
    float* __restrict__ yr = ys + r * channels;
    if (rs != nullptr) {
      const float* __restrict__ rr = rs + r * channels;
      for (int64_t j = 0; j < channels; ++j) {
        const float v = pre_activation(xr[j], scale[j], shift[j]) + rr[j];
        yr[j] = v < 0.0f ? 0.0f : v;
      }
    } else {
      for (int64_t j = 0; j < channels; ++j) {
        const float v = pre_activation(xr[j], scale[j], shift[j]);
        yr[j] = v < 0.0f ? 0.0f : v;
      }
    }
  }
}

// First backward pass. dz = dy where the pre-activation was > 0, else 0 (torch's
// threshold_backward). Per channel j: p1[j] = sum dz, p2[j] = sum dz * (x - mean[j]) (float, rows
// in order). With a residual, dz is also written to dzs: it is the residual's gradient, and the
// second pass reads it instead of recomputing the mask from three inputs.
inline void backward_sums_rows(const float* __restrict__ dys, const float* __restrict__ xs,
                               const float* __restrict__ rs, float* __restrict__ dzs, int64_t r0, int64_t r1,
                               int64_t channels, const float* __restrict__ scale, const float* __restrict__ shift,
                               const float* __restrict__ mean, float* __restrict__ p1, float* __restrict__ p2) {
  for (int64_t j = 0; j < channels; ++j) p1[j] = p2[j] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ dyr = dys + r * channels;
    const float* __restrict__ xr = xs + r * channels;
    if (rs != nullptr) {
      const float* __restrict__ rr = rs + r * channels;
      float* __restrict__ dzr = dzs + r * channels;
      for (int64_t j = 0; j < channels; ++j) {
        const float v = pre_activation(xr[j], scale[j], shift[j]) + rr[j];
        const float g = dyr[j];  // loaded unconditionally: a select, not a masked load
        const float dz = v > 0.0f ? g : 0.0f;
        dzr[j] = dz;
        p1[j] += dz;
        p2[j] += dz * (xr[j] - mean[j]);
      }
    } else {
      for (int64_t j = 0; j < channels; ++j) {
        const float v = pre_activation(xr[j], scale[j], shift[j]);
        const float g = dyr[j];  // loaded unconditionally: a select, not a masked load
        const float dz = v > 0.0f ? g : 0.0f;
        p1[j] += dz;
        p2[j] += dz * (xr[j] - mean[j]);
      }
    }
  }
}

// Second backward pass: dx = scale * ((dz - mean_dz) - (x - mean) * k), with per channel
// mean_dz = sum dz / M and k = invstd^2 * sum dz (x - mean) / M. dz is read from dzs when the
// first pass wrote it (residual), else recomputed from dy and x as there.
inline void input_grad_rows(const float* __restrict__ dys, const float* __restrict__ xs,
                            const float* __restrict__ dzs, float* __restrict__ dxs, int64_t r0, int64_t r1,
                            int64_t channels, const float* __restrict__ scale, const float* __restrict__ shift,
                            const float* __restrict__ mean, const float* __restrict__ mean_dz,
                            const float* __restrict__ k) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = xs + r * channels;
    float* __restrict__ dxr = dxs + r * channels;
    if (dzs != nullptr) {
      const float* __restrict__ dzr = dzs + r * channels;
      for (int64_t j = 0; j < channels; ++j) {
        dxr[j] = scale[j] * ((dzr[j] - mean_dz[j]) - (xr[j] - mean[j]) * k[j]);
      }
    } else {
      const float* __restrict__ dyr = dys + r * channels;
      for (int64_t j = 0; j < channels; ++j) {
        const float v = pre_activation(xr[j], scale[j], shift[j]);
        const float g = dyr[j];  // loaded unconditionally: a select, not a masked load
        const float dz = v > 0.0f ? g : 0.0f;
        dxr[j] = scale[j] * ((dz - mean_dz[j]) - (xr[j] - mean[j]) * k[j]);
      }
    }
  }
}

}  // namespace SK_BATCHNORM_NS
