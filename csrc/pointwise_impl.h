// Loop bodies of the fused pointwise ops (csrc/pointwise.cpp), included twice by that file:
// once for the baseline x86-64 target and once under `#pragma GCC target("avx2")`, each time
// inside its own namespace (SK_POINTWISE_NS). No include guard on purpose. The loops are
// written for the auto-vectoriser (no FMA is enabled, so the compiler cannot contract a
// multiply-add: both copies compute bitwise the same results).
//
// Every function handles a range of rows (or elements) and writes only that range.
namespace SK_POINTWISE_NS {

// y = x + (below * (a_l - 1)) * (x - t_l) + (above * (a_r - 1)) * (x - t_r), rows [r0, r1).
inline void srelu_forward_rows(const float* __restrict__ xs, float* __restrict__ ys, int64_t r0, int64_t r1,
                               int64_t features, const float* __restrict__ tl, const float* __restrict__ tr,
                               const float* __restrict__ sl, const float* __restrict__ sr) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = xs + r * features;
    float* __restrict__ yr = ys + r * features;
    for (int64_t f = 0; f < features; ++f) {
      const float v = xr[f];
      const float below = v < tl[f] ? 1.0f : 0.0f;
      const float above = v > tr[f] ? 1.0f : 0.0f;
      const float left = (below * sl[f]) * (v - tl[f]);
      const float right = (above * sr[f]) * (v - tr[f]);
      yr[f] = (v + left) + right;
    }
  }
}

// Input gradient of rows [r0, r1), columns [c0, c0 + n), and per column j the partial sums
// over those rows (float, rows in order) of -c_l g, -c_r g, [x < t_l](x - t_l) g and
// [x > t_r](x - t_r) g in p_*[j - c0]. Rows are streamed in memory order (the activations are
// usually cold in cache by the backward; a column-block walk would stride across pages).
inline void srelu_backward_rows(const float* __restrict__ xs, const float* __restrict__ gs,
                                float* __restrict__ dxs, int64_t r0, int64_t r1, int64_t features, int64_t c0,
                                int64_t n, const float* __restrict__ tl, const float* __restrict__ tr,
                                const float* __restrict__ sl, const float* __restrict__ sr,
                                float* __restrict__ p_tl, float* __restrict__ p_tr, float* __restrict__ p_al,
                                float* __restrict__ p_ar) {
  for (int64_t j = 0; j < n; ++j) p_tl[j] = p_tr[j] = p_al[j] = p_ar[j] = 0.0f;
  tl += c0, tr += c0, sl += c0, sr += c0;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = xs + r * features + c0;
    const float* __restrict__ gr = gs + r * features + c0;
    float* __restrict__ dxr = dxs + r * features + c0;
    for (int64_t j = 0; j < n; ++j) {
      const float v = xr[j], g = gr[j];
      const float below = v < tl[j] ? 1.0f : 0.0f;
      const float above = v > tr[j] ? 1.0f : 0.0f;
      const float cl = below * sl[j], cr = above * sr[j];
      dxr[j] = (g + cl * g) + cr * g;
      p_tl[j] -= cl * g;
      p_tr[j] -= cr * g;
      p_al[j] += (below * (v - tl[j])) * g;
      p_ar[j] += (above * (v - tr[j])) * g;
    }
  }
}

// The 32-bit integer hash "lowbias32" (two xorshift-multiply rounds and a final xorshift):
// vectorises to 32-bit lanes, unlike a 64-bit multiply.
inline uint32_t mix32(uint32_t z) {
  z ^= z >> 16;
  z *= 0x7feb352dU;
  z ^= z >> 15;
  z *= 0x846ca68bU;
  z ^= z >> 16;
  return z;
}

// out[i] = x[i] * (keep(i) ? scale : 0) for i in [i0, i1); keep(i) <=> the 24 high bits of
// mix32(mix32(i_lo ^ k0) + k1) are >= threshold, with k1 depending on i's high 32 bits.
inline void dropout_range(const float* __restrict__ xs, float* __restrict__ ys, int64_t i0, int64_t i1, uint32_t k0, uint32_t k1_base,
                          uint32_t threshold, float scale) {
  int64_t i = i0;
  while (i < i1) {
    // One run of elements with the same high 32 index bits.
    const uint64_t hi = static_cast<uint64_t>(i) >> 32;
    const int64_t end = std::min<int64_t>(i1, static_cast<int64_t>((hi + 1) << 32));
    const uint32_t k1 = k1_base ^ mix32(static_cast<uint32_t>(hi) * 0x9E3779B9U);
    const uint32_t lo0 = static_cast<uint32_t>(i);
    const int64_t count = end - i;
    const float* x = xs + i;
    float* y = ys + i;
    for (int64_t t = 0; t < count; ++t) {
      const uint32_t h = mix32(mix32((lo0 + static_cast<uint32_t>(t)) ^ k0) + k1);
      y[t] = x[t] * ((h >> 8) >= threshold ? scale : 0.0f);
    }
    i = end;
  }
}

}  // namespace SK_POINTWISE_NS
