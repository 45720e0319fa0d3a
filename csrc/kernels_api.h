// The interface between the ATen-facing glue (native.cpp) and the compute kernels
// (kernels_impl.h, compiled once per instruction set).
//
// Everything here is plain data: the kernel translation units are compiled with different
// target options (AVX2+FMA or the baseline), so they must not share any inline function
// with the rest of the extension. An inline function instantiated in both worlds would be
// merged by the linker, and the baseline build could end up running AVX2 code.
//
// Work is split into "tasks" (independent output tiles, see each op); the glue runs
// [begin, end) ranges of tasks on ATen's thread pool, and each task is computed by exactly
// one thread in a fixed order, so results do not depend on the number of threads.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sk {

// A BlockLayout (sparsekernels/layout.py) as raw pointers; the glue has validated every index.
struct Layout {
  const int32_t* row_offsets;      // [R + 1]
  const int32_t* col_indices;      // [nnz]
  const int32_t* row_indices;      // [nnz]
  const int32_t* col_offsets;      // [C + 1]
  const int32_t* row_indices_t;    // [nnz]
  const int32_t* block_indices_t;  // [nnz]
  int64_t R, C, nnz, bm, bn;       // block grid, block count, block shape
  int64_t max_row, max_col;        // most blocks in one block-row / block-column
};

// Y[b] = S @ B[b] (or S^T @ B[b]); B: [batch, inner, P] with unit column stride,
// Y: contiguous [batch, rows, P]. Task = (batch, output block-row, column panel), or with
// panel_outer (wide B) (batch, column panel, output block-row).
struct DsdArgs {
  Layout L;
  const float* values;  // [nnz, bm, bn] contiguous
  const float* b;
  int64_t b_batch_stride, ldb;
  int64_t batch, P, panel;
  float* out;
  bool transpose;
  bool panel_outer;  // block-row fastest: each panel of B is shared by consecutive tasks
  bool pack_b;       // (panel_outer only) copy each panel of B into contiguous scratch first
};

// Y = A @ S (or A @ S^T); A: [P, inner] with any strides, Y: contiguous [P, cols].
// Task = (chunk of `row_chunk` rows of Y, output block-column), the block-column fastest.
struct DdsArgs {
  Layout L;
  const float* values;    // [nnz, bm, bn]: the blocks read as they are (not transposed)
  const float* values_t;  // [nnz, bn, bm]: the blocks transposed (transpose case only)
  const float* a;
  int64_t lda, a_cs;
  int64_t P, row_chunk;
  float* out;
  bool transpose;
};

// values[j] = A[rows of block j] @ B[:, cols of block j]; A: [M, K] and B: [K, N] with any
// strides. Task = one entry of the transposed traversal (a block); K is reduced in order.
struct SddArgs {
  Layout L;
  const float* a;
  int64_t lda, a_cs;
  const float* b;
  int64_t ldb, b_cs;
  int64_t K;
  float* out;  // [nnz, bm, bn] contiguous
};

// Convolution geometry; activations are channels-last (NHWC) and contiguous.
struct ConvGeom {
  int64_t N, C, H, W;      // input
  int64_t K, Ho, Wo;       // output channels and size
  int64_t R, S;            // kernel taps
  int64_t sh, sw, ph, pw, dh, dw;
};

// y = conv(x, W): Y[pixel, k]. Task = `pix_chunk` output pixels x all channels
// (conv_fwd_tasks gives the count).
struct ConvFwdArgs {
  Layout L;   // shape [R*S*K, C], block (bk, bc)
  ConvGeom g;
  const float* x;         // [N, H, W, C]
  const float* values_t;  // [nnz, bc, bk]: blocks transposed, so output channels are contiguous
  const float* zeros;     // >= C zeros: the row read for padded input pixels
  int64_t pix_chunk;
  int64_t group_split;    // tasks per pixel chunk, each a range of output channel blocks (1 ..= K / bk)
  float* y;               // [N, Ho, Wo, K]
  bool stream_out;        // write y with non-temporal stores (large outputs: no read-for-ownership)
};

// dx = conv_input_grad(dy, W): DX[pixel, c]. Task = a group of input pixels x all channels
// (conv_dx_tasks gives the count: pixel groups depend on the stride).
struct ConvDxArgs {
  Layout L;
  ConvGeom g;
  const float* dy;      // [N, Ho, Wo, K]
  const float* values;  // [nnz, bk, bc]
  const float* zeros;   // >= K zeros
  int64_t pix_chunk;
  int64_t group_split;  // tasks per pixel group, each a range of input channel blocks (1 ..= C / bc)
  float* dx;            // [N, H, W, C]
  bool stream_out;      // as ConvFwdArgs::stream_out
};

// dvalues[j] = sum over output pixels of dy[p, k-block]^T x[shifted p, c-block].
// Task = one block; pixels are reduced in order.
struct ConvDwArgs {
  Layout L;
  ConvGeom g;
  const float* x;   // [N, H, W, C]
  const float* dy;  // [N, Ho, Wo, K]
  float* out;       // [nnz, bk, bc]
};

// One implementation of every op for one instruction set. `scratch` is memory private to
// the calling thread, at least as many bytes as the matching *_scratch function asks for.
struct Kernels {
  const char* name;
  int64_t (*dsd_scratch)(const DsdArgs&);
  int64_t (*dds_scratch)(const DdsArgs&);
  int64_t (*sdd_scratch)(const SddArgs&);
  int64_t (*conv_fwd_scratch)(const ConvFwdArgs&);
  int64_t (*conv_dx_scratch)(const ConvDxArgs&);
  int64_t (*conv_dw_scratch)(const ConvDwArgs&);
  int64_t (*conv_fwd_tasks)(const ConvFwdArgs&);
  int64_t (*conv_dx_tasks)(const ConvDxArgs&);
  void (*dsd)(const DsdArgs&, int64_t begin, int64_t end, void* scratch);
  void (*dds)(const DdsArgs&, int64_t begin, int64_t end, void* scratch);
  void (*sdd)(const SddArgs&, int64_t begin, int64_t end, void* scratch);
  void (*conv_fwd)(const ConvFwdArgs&, int64_t begin, int64_t end, void* scratch);
  void (*conv_dx)(const ConvDxArgs&, int64_t begin, int64_t end, void* scratch);
  void (*conv_dw)(const ConvDwArgs&, int64_t begin, int64_t end, void* scratch);
};

extern const Kernels kernels_avx512;    // kernels_avx512.cpp: AVX-512F, 12x32 register tiles
extern const Kernels kernels_avx2;      // kernels_avx2.cpp: AVX2 + FMA, 6x16 register tiles
extern const Kernels kernels_baseline;  // kernels_baseline.cpp: any x86-64 / other CPU

}  // namespace sk
