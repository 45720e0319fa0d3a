// Loops of the small-block matmuls (csrc/unstructured.cpp: element sparsity and blocks of at
// most kSmallBlock weights), included twice by that file: for the baseline x86-64 target and
// under `#pragma GCC target("avx2,fma")`, each time inside its own namespace
// (SK_UNSTRUCTURED_NS). No include guard on purpose.
//
// With tiny blocks the block kernels pay a register tile's setup per handful of multiply-adds.
// Here the dense operand is read transposed, so every weight touches one contiguous row of it:
// a gather-axpy (forward, input gradient) or a dot product (weight gradient) of length P or K
// (the batch), vectorised along it. Every output element is computed by one call, in a fixed
// order of its terms.
namespace SK_UNSTRUCTURED_NS {

constexpr int64_t kPanel = 64;  // floats of P per accumulator panel (8 AVX2 registers)
// Floats of the transposed operand x ([inner, P]) that one P-chunk may span: the chunk of x
// all outputs of a task read (inner x chunk floats) stays in L2. Without it, every output
// row streamed its terms' rows of all P from memory (dds at P = 4096 fell to a third of its
// P = 128 throughput).
constexpr int64_t kChunkFloats = 64 * 1024;

// Columns of P per chunk for an x of `inner` rows: a multiple of kPanel, at least one panel;
// all of P below 256 (the SET MLP's batch of 100 measured 10-20 % slower in two passes).
inline int64_t p_chunk(int64_t inner, int64_t P) {
  if (P < 4 * kPanel) return std::max<int64_t>(P, int64_t{1});
  const int64_t c = std::max<int64_t>(kPanel, kChunkFloats / std::max<int64_t>(int64_t{1}, inner) / kPanel * kPanel);
  return std::min(c, P);
}

// acc[0:n] += w * x[0:n] over the (weight, row) pairs a `Terms` functor enumerates: columns
// [0, n) of rows of x (row stride ldx), written to yo[0:n].
template <class Terms>
inline void accumulate_row(const float* __restrict__ x, int64_t ldx, int64_t n_cols, float* __restrict__ yo,
                           const Terms& terms) {
  int64_t p0 = 0;
  for (; p0 + kPanel <= n_cols; p0 += kPanel) {
    float acc[kPanel] = {};
    terms([&](float w, int64_t row) {
      const float* __restrict__ xr = x + row * ldx + p0;
      for (int64_t q = 0; q < kPanel; ++q) acc[q] += w * xr[q];
    });
    for (int64_t q = 0; q < kPanel; ++q) yo[p0 + q] = acc[q];
  }
  if (p0 < n_cols) {
    const int64_t n = n_cols - p0;
    float acc[kPanel] = {};
    terms([&](float w, int64_t row) {
      const float* __restrict__ xr = x + row * ldx + p0;
      for (int64_t q = 0; q < n; ++q) acc[q] += w * xr[q];
    });
    for (int64_t q = 0; q < n; ++q) yo[p0 + q] = acc[q];
  }
}

// y[o, :] = sum over the blocks j of block-row o / bm, columns lc: S[o, col] * x[col, :] with
// col = col_indices[j] * bn + lc (the rows of S); o in [o0, o1). x: [N, P], y: [M, P]. P is
// walked in chunks (outer loop; each element's terms keep their order).
inline void rows_times(const float* __restrict__ x, float* __restrict__ y, int64_t P, int64_t o0, int64_t o1,
                       const sk::Layout& L, const float* __restrict__ values) {
  const int64_t bm = L.bm, bn = L.bn, chunk = p_chunk(L.C * bn, P);
  for (int64_t c0 = 0; c0 < P; c0 += chunk) {
    const int64_t nc = std::min(chunk, P - c0);
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t br = o / bm, lr = o % bm;
      const int64_t lo = L.row_offsets[br], hi = L.row_offsets[br + 1];
      accumulate_row(x + c0, P, nc, y + o * P + c0, [&](auto&& add) {
        for (int64_t j = lo; j < hi; ++j) {
          const float* w = values + (j * bm + lr) * bn;
          const int64_t col0 = int64_t{L.col_indices[j]} * bn;
          for (int64_t lc = 0; lc < bn; ++lc) add(w[lc], col0 + lc);
        }
      });
    }
  }
}

// y[o, :] = sum over the blocks of block-column o / bn, rows lr: S[row, o] * x[row, :] (the
// columns of S); o in [o0, o1). x: [M, P], y: [N, P]. P in chunks as in rows_times.
inline void cols_times(const float* __restrict__ x, float* __restrict__ y, int64_t P, int64_t o0, int64_t o1,
                       const sk::Layout& L, const float* __restrict__ values) {
  const int64_t bm = L.bm, bn = L.bn, chunk = p_chunk(L.R * bm, P);
  for (int64_t c0 = 0; c0 < P; c0 += chunk) {
    const int64_t nc = std::min(chunk, P - c0);
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t bc = o / bn, lc = o % bn;
      const int64_t lo = L.col_offsets[bc], hi = L.col_offsets[bc + 1];
      accumulate_row(x + c0, P, nc, y + o * P + c0, [&](auto&& add) {
        for (int64_t e = lo; e < hi; ++e) {
          const int64_t j = L.block_indices_t[e];
          const int64_t r0 = int64_t{L.row_indices_t[e]} * bm;
          for (int64_t lr = 0; lr < bm; ++lr) add(values[(j * bm + lr) * bn + lc], r0 + lr);
        }
      });
    }
  }
}

// Dot product of two contiguous rows of length K: eight interleaved partial sums (one vector
// register), added in a fixed order.
inline float dot(const float* __restrict__ a, const float* __restrict__ b, int64_t K) {
  float s[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int q = 0; q < 8; ++q) s[q] += a[k + q] * b[k + q];
  float tail = 0.0f;
  for (; k < K; ++k) tail += a[k] * b[k];
  return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + tail;
}

// out[j, lr, lc] = dot(a[row lr of block j], b[column lc of block j]) for blocks j in [j0, j1);
// a: [M, K], b: [N, K] (B transposed), contiguous.
inline void block_dots(const float* __restrict__ a, const float* __restrict__ b, int64_t K, int64_t j0, int64_t j1,
                       const sk::Layout& L, float* __restrict__ out) {
  const int64_t bm = L.bm, bn = L.bn;
  for (int64_t j = j0; j < j1; ++j) {
    const float* ar = a + int64_t{L.row_indices[j]} * bm * K;
    const float* br = b + int64_t{L.col_indices[j]} * bn * K;
    for (int64_t lr = 0; lr < bm; ++lr)
      for (int64_t lc = 0; lc < bn; ++lc) out[(j * bm + lr) * bn + lc] = dot(ar + lr * K, br + lc * K, K);
  }
}

}  // namespace SK_UNSTRUCTURED_NS
