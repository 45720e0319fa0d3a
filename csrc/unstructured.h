// Small-block matmuls (element sparsity and blocks of at most kSmallBlock weights): native.cpp
// routes dds and sdd here for such layouts (after validating the layout and the operands).
#pragma once

#include <ATen/ATen.h>

#include "kernels_api.h"

namespace sk {

// Blocks of at most this many weights take the small-block path.
constexpr int64_t kSmallBlock = 16;

// out[P, cols] = a @ S (a @ S^T when `transpose`); a: [P, inner], any strides; out contiguous.
void unstructured_dds(const Layout& L, const float* values, const at::Tensor& a, bool transpose, at::Tensor& out,
                      bool avx2);

// out[nnz] = (a @ b) at the layout's entries; a: [M, K], b: [K, N], any strides.
void unstructured_sdd(const Layout& L, const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool avx2);

}  // namespace sk
