// The ATen-facing half of the native CPU backend: argument and layout validation, output
// checks, the choice of instruction set, the thread pool, and the op registration.
//
// The ops are registered as `torch.ops.sparsekernels_native.*` (CPU dispatch key). They are
// internal: sparsekernels/ops/native_backend.py calls them from inside the public
// `sparsekernels::*` custom ops, allocating every output (poisoned in tests) and passing it
// in, so the compute functions only ever write into a buffer they are given.
//
// Safety contract: every index read from a layout is checked here, in one pass over the
// index arrays (O(R + C + nnz), no allocation), before any kernel runs. A corrupted layout
// raises ValueError and is never used to address memory.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "isa.h"
#include "kernels_api.h"
#include "unstructured.h"

namespace sk {
namespace {

// ------------------------------------------------------------------ instruction set

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also requires the OS to save the ymm registers (XCR0).
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  // The zmm state saved by the OS is part of what __builtin_cpu_supports checks (XCR0).
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

const Kernels* select_default() {
  // SPARSEKERNELS_NATIVE_ISA=baseline / avx2 caps the instruction set (for testing the
  // portable kernels, or comparing).
  const char* env = std::getenv("SPARSEKERNELS_NATIVE_ISA");
  if (env != nullptr && std::strcmp(env, "baseline") == 0) return &kernels_baseline;
  if (env != nullptr && std::strcmp(env, "avx2") == 0 && cpu_has_avx2_fma()) return &kernels_avx2;
  if (cpu_has_avx512()) return &kernels_avx512;
  return cpu_has_avx2_fma() ? &kernels_avx2 : &kernels_baseline;
}

std::atomic<const Kernels*> g_kernels{nullptr};

const Kernels& kernels() {
  const Kernels* k = g_kernels.load();
  if (k == nullptr) {
    k = select_default();
    g_kernels.store(k);
  }
  return *k;
}

// The table for an op whose register tiles are `width` columns wide (the output columns a
// tile covers: a block width, or dsd's column panel). The AVX-512 tiles are two zmm vectors
// wide; a narrower output (blocks of 16 or less) would leave one vector per row, one
// broadcast per FMA, and measured 2x slower than the AVX2 6x16 tile (dds b16 2048x2048 at
// 256 rows 4.3 -> 8.2 ms, conv forward b16 7.5 -> 14 ms), so such ops run the AVX2 table.
const Kernels& kernels_for(int64_t width) {
  const Kernels& k = kernels();
  return (&k == &kernels_avx512 && width < 32) ? kernels_avx2 : k;
}

std::string isa() { return kernels().name; }

void set_isa(const std::string& name) {
  if (name == "baseline") {
    g_kernels.store(&kernels_baseline);
  } else if (name == "avx2") {
    TORCH_CHECK_VALUE(cpu_has_avx2_fma(), "isa 'avx2' requested but this CPU lacks AVX2/FMA");
    g_kernels.store(&kernels_avx2);
  } else if (name == "avx512") {
    TORCH_CHECK_VALUE(cpu_has_avx512(), "isa 'avx512' requested but this CPU lacks AVX-512 (F, VL, DQ)");
    g_kernels.store(&kernels_avx512);
  } else if (name == "auto") {
    g_kernels.store(select_default());
  } else {
    TORCH_CHECK_VALUE(false, "isa must be 'auto', 'avx512', 'avx2' or 'baseline'; got '", name, "'");
  }
}

// ------------------------------------------------------------------ build and runtime facts

// How this binary was built, as "key=value" lines (sparsekernels.native_info() parses them).
// The parallel backend is a property of the build: at::parallel_for is inlined from ATen's
// headers, so without -fopenmp it silently runs every task on the calling thread.
std::string build_info() {
  std::string s = "isa=" + isa() + "\n";
#ifdef _OPENMP
  s += "parallel_backend=openmp\nopenmp_version=" + std::to_string(_OPENMP) + "\n";
  // Which OpenMP runtime our calls bind to: it must be the one torch loaded, otherwise
  // torch.set_num_threads would not govern our kernels.
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) != 0 && info.dli_fname != nullptr) {
    s += std::string("openmp_runtime=") + info.dli_fname + "\n";
  }
#else
  s += "parallel_backend=none\n";
#endif
#if defined(__clang__)
  s += "compiler=clang " __clang_version__ "\n";
#elif defined(__GNUC__)
  s += "compiler=gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "\n";
#endif
  return s;
}

// The threads our kernels would use now (at::get_num_threads as seen from this binary).
int64_t num_threads() { return at::get_num_threads(); }

// Runs one task per thread through the same at::parallel_for path as the kernels and returns
// how many distinct OS threads executed them: a functional check (not a timing) that the
// parallel backend really spreads tasks over threads. A serial backend reports 1.
int64_t parallel_probe() {
  const int64_t threads = at::get_num_threads();
  std::mutex mu;
  std::set<std::thread::id> seen;
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}

// ------------------------------------------------------------------ validation

constexpr const char* kFieldNames[6] = {"row_offsets",   "col_indices",   "row_indices",
                                        "col_offsets",   "row_indices_t", "block_indices_t"};

// Checks the index tensors of a BlockLayout of shape meta = [M, N, bm, bn] and returns them
// as raw pointers. Beyond ranges it checks that the CSR and CSC traversals describe the same
// set of distinct blocks (each row's columns strictly ascending, each transposed entry
// pointing at a slot with its row and column), which is what every kernel assumes.
Layout check_layout(at::TensorList t, at::IntArrayRef meta) {
  TORCH_CHECK_VALUE(t.size() == 6, "layout must be 6 index tensors; got ", t.size());
  TORCH_CHECK_VALUE(meta.size() == 4, "layout meta must be [M, N, bm, bn]; got ", meta);
  const int64_t M = meta[0], N = meta[1], bm = meta[2], bn = meta[3];
  TORCH_CHECK_VALUE(bm > 0 && bn > 0 && M >= 0 && N >= 0 && M % bm == 0 && N % bn == 0,
                    "layout shape ", M, "x", N, " is not a whole number of ", bm, "x", bn, " blocks");
  Layout L{};
  L.R = M / bm;
  L.C = N / bn;
  L.bm = bm;
  L.bn = bn;
  L.nnz = t[1].numel();
  const int64_t expected[6] = {L.R + 1, L.nnz, L.nnz, L.C + 1, L.nnz, L.nnz};
  const int32_t* p[6];
  for (int f = 0; f < 6; ++f) {
    TORCH_CHECK_VALUE(t[f].device().is_cpu(), "layout.", kFieldNames[f], " must be a CPU tensor");
    TORCH_CHECK_VALUE(t[f].scalar_type() == at::kInt && t[f].dim() == 1 && t[f].numel() == expected[f],
                      "layout.", kFieldNames[f], " must be int32 [", expected[f], "]; got ", t[f].scalar_type(),
                      " ", t[f].sizes());
    TORCH_CHECK_VALUE(t[f].is_contiguous(), "layout.", kFieldNames[f], " must be contiguous");
    p[f] = t[f].data_ptr<int32_t>();
  }
  L.row_offsets = p[0];
  L.col_indices = p[1];
  L.row_indices = p[2];
  L.col_offsets = p[3];
  L.row_indices_t = p[4];
  L.block_indices_t = p[5];

  TORCH_CHECK_VALUE(L.row_offsets[0] == 0 && L.row_offsets[L.R] == L.nnz, "layout.row_offsets must run from 0 to nnz (",
                    L.nnz, "); got ", L.row_offsets[0], " .. ", L.row_offsets[L.R]);
  for (int64_t r = 0; r < L.R; ++r) {
    const int64_t lo = L.row_offsets[r], hi = L.row_offsets[r + 1];
    // Checked before the row's entries are read: a huge offset must not walk off the arrays.
    TORCH_CHECK_VALUE(lo <= hi && hi <= L.nnz, "layout.row_offsets must be non-decreasing and at most nnz (", L.nnz,
                      "); row_offsets[", r, "] = ", lo, ", row_offsets[", r + 1, "] = ", hi);
    L.max_row = std::max(L.max_row, hi - lo);
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t c = L.col_indices[j];
      TORCH_CHECK_VALUE(c >= 0 && c < L.C, "layout.col_indices[", j, "] = ", c, " is out of range [0, ", L.C, ")");
      TORCH_CHECK_VALUE(j == lo || c > L.col_indices[j - 1], "layout.col_indices must be strictly ascending within a ",
                        "block-row; row ", r, " repeats or reorders column ", c);
      TORCH_CHECK_VALUE(L.row_indices[j] == r, "layout.row_indices[", j, "] = ", L.row_indices[j],
                        " disagrees with row_offsets (block-row ", r, ")");
    }
  }
  TORCH_CHECK_VALUE(L.col_offsets[0] == 0 && L.col_offsets[L.C] == L.nnz, "layout.col_offsets must run from 0 to nnz (",
                    L.nnz, "); got ", L.col_offsets[0], " .. ", L.col_offsets[L.C]);
  for (int64_t c = 0; c < L.C; ++c) {
    const int64_t lo = L.col_offsets[c], hi = L.col_offsets[c + 1];
      TORCH_CHECK_VALUE(lo <= hi && hi <= L.nnz, "layout.col_offsets must be non-decreasing and at most nnz (", L.nnz,
                      "); col_offsets[", c, "] = ", lo, ", col_offsets[", c + 1, "] = ", hi);
    L.max_col = std::max(L.max_col, hi - lo);
    for (int64_t e = lo; e < hi; ++e) {
      const int64_t r = L.row_indices_t[e], j = L.block_indices_t[e];
      TORCH_CHECK_VALUE(r >= 0 && r < L.R, "layout.row_indices_t[", e, "] = ", r, " is out of range [0, ", L.R, ")");
      TORCH_CHECK_VALUE(e == lo || r > L.row_indices_t[e - 1], "layout.row_indices_t must be strictly ascending ",
                        "within a block-column; column ", c, " repeats or reorders row ", r);
      TORCH_CHECK_VALUE(j >= 0 && j < L.nnz, "layout.block_indices_t[", e, "] = ", j, " is out of range [0, ", L.nnz,
                        ")");
      TORCH_CHECK_VALUE(L.col_indices[j] == c && L.row_indices[j] == r, "layout.block_indices_t[", e, "] = ", j,
                        " points at block (", L.row_indices[j], ", ", L.col_indices[j], ") but the transposed ",
                        "traversal is at (", r, ", ", c, ")");
    }
  }
  return L;
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "native backend: ", name, " must be float32; got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "native backend: ", name, " must be a CPU tensor; got ", t.device());
}

// Output buffers come from the Python wrapper: right shape, dense in the expected format.
void check_out(const at::Tensor& out, at::IntArrayRef shape, at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  check_float(out, "out");
  TORCH_CHECK_VALUE(out.sizes() == shape, "native backend: out must have shape ", shape, "; got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(fmt), "native backend: out must be dense (", fmt, ")");
}

// values [nnz, bm, bn] as a contiguous float tensor.
at::Tensor checked_values(const at::Tensor& values, const Layout& L, const char* name = "values") {
  check_float(values, name);
  TORCH_CHECK_VALUE(values.dim() == 3 && values.size(0) == L.nnz && values.size(1) == L.bm && values.size(2) == L.bn,
                    "native backend: ", name, " must have shape [", L.nnz, ", ", L.bm, ", ", L.bn, "]; got ",
                    values.sizes());
  return values.contiguous();
}

// ------------------------------------------------------------------ threading

// Runs tasks [0, ntasks) on ATen's thread pool. Threads take ranges of `chunk` tasks from a
// shared counter (dynamic scheduling: blocks per row vary; chunk 0 = automatic), each with
// its own scratch buffer. Every task writes outputs no other task writes, and computes them
// the same way whichever thread runs it and whatever range it comes in, so results are
// identical for any number of threads. `work` ~ flops, to keep tiny problems on the calling
// thread.
template <class F>
void run_tasks(int64_t ntasks, int64_t scratch_bytes, double work, const F& fn, int64_t chunk = 0) {
  if (ntasks <= 0) return;
  const int64_t threads = work < 2e5 ? 1 : std::min<int64_t>(at::get_num_threads(), ntasks);
  if (chunk <= 0) chunk = std::max<int64_t>(1, ntasks / (threads * 8));
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t, int64_t) {
    std::unique_ptr<char[]> scratch(new char[std::max<int64_t>(scratch_bytes, 16)]);
    for (;;) {
      const int64_t b = next.fetch_add(chunk);
      if (b >= ntasks) break;
      fn(b, std::min(ntasks, b + chunk), scratch.get());
    }
  };
  if (threads <= 1) {
    worker(0, 1);
  } else {
    at::parallel_for(0, threads, 1, worker);
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------ matmul ops

// out[batch, rows, P] = S @ b (S^T @ b); b: [batch, inner, P].
void dsd(const at::Tensor& values, at::TensorList layout, at::IntArrayRef meta, const at::Tensor& b_in,
         bool transpose_sparse, at::Tensor& out) {
  const Layout L = check_layout(layout, meta);
  const at::Tensor v = checked_values(values, L);
  check_float(b_in, "b");
  const int64_t inner = transpose_sparse ? L.R * L.bm : L.C * L.bn;
  const int64_t rows = transpose_sparse ? L.C * L.bn : L.R * L.bm;
  TORCH_CHECK_VALUE(b_in.dim() == 3 && b_in.size(1) == inner, "native dsd: b must be [batch, ", inner, ", P]; got ",
                    b_in.sizes());
  const int64_t batch = b_in.size(0), P = b_in.size(2);
  check_out(out, {batch, rows, P});
  // Rows of b are read as vectors: they need unit stride (a copy otherwise).
  const at::Tensor b = (b_in.stride(2) == 1 || P <= 1) ? b_in : b_in.contiguous();

  DsdArgs a{};
  a.L = L;
  a.values = v.data_ptr<float>();
  a.b = b.data_ptr<float>();
  a.b_batch_stride = b.stride(0);
  a.ldb = b.stride(1);
  a.batch = batch;
  a.P = P;
  // Panels of 64 columns: a task reads nnz_row slabs of kc x 64 floats of B (L2-sized at
  // moderate density), and P = 256 still gives 4 tasks per block-row to balance threads.
  a.panel = std::max<int64_t>(1, std::min<int64_t>(P, 64));
  a.out = out.data_ptr<float>();
  a.transpose = transpose_sparse;
  // From P = 1024 the panels are the outer loop (see the kernel), and rows of B 4 KB or more
  // apart (one page each) are packed per panel: measured at P = 8192, inner 4096, block 16,
  // one thread, 31 -> 53 GFLOP/s.
  a.panel_outer = P >= 1024;
  a.pack_b = a.panel_outer && a.ldb * (int64_t)sizeof(float) >= 4096;
  const Kernels& k = kernels_for(a.panel);
  const int64_t tasks = batch * (transpose_sparse ? L.C : L.R) * cdiv(P, a.panel);
  const double work = 2.0 * L.nnz * L.bm * L.bn * P * batch;
  run_tasks(tasks, k.dsd_scratch(a), work, [&](int64_t s, int64_t e, void* scr) { k.dsd(a, s, e, scr); });
}

// out[P, cols] = a @ S (a @ S^T); a: [P, inner] with any strides.
void dds(const at::Tensor& a_in, const at::Tensor& values, at::TensorList layout, at::IntArrayRef meta,
         bool transpose_sparse, at::Tensor& out) {
  const Layout L = check_layout(layout, meta);
  const at::Tensor v = checked_values(values, L);
  check_float(a_in, "a");
  const int64_t inner = transpose_sparse ? L.C * L.bn : L.R * L.bm;
  const int64_t cols = transpose_sparse ? L.R * L.bm : L.C * L.bn;
  TORCH_CHECK_VALUE(a_in.dim() == 2 && a_in.size(1) == inner, "native dds: a must be [P, ", inner, "]; got ",
                    a_in.sizes());
  const int64_t P = a_in.size(0);
  check_out(out, {P, cols});
  if (L.bm * L.bn <= kSmallBlock) {  // element sparsity and tiny blocks: unstructured.cpp
    if (P > 0) {
      unstructured_dds(L, v.data_ptr<float>(), a_in, transpose_sparse, out, simd_enabled());
    }
    return;
  }
  // A is read one scalar at a time, so any strides work; the transposed case reads each block
  // transposed and wants its rows contiguous: one small transposed copy of the values.
  const at::Tensor vt = transpose_sparse ? v.transpose(1, 2).contiguous() : at::Tensor();

  DdsArgs d{};
  d.L = L;
  d.values = v.data_ptr<float>();
  d.values_t = transpose_sparse ? vt.data_ptr<float>() : nullptr;
  d.a = a_in.data_ptr<float>();
  d.lda = a_in.stride(0);
  d.a_cs = a_in.stride(1);
  d.P = P;
  // 16 tiles of 6 rows per task; consecutive tasks share the chunk of A across block-columns.
  // (Chunks sized to 256 KB of A, 24-96 rows, measured no faster at inner 1024-4096.)
  d.row_chunk = 96;
  d.out = out.data_ptr<float>();
  d.transpose = transpose_sparse;
  const Kernels& k = kernels_for(transpose_sparse ? L.bm : L.bn);
  if (P == 0) return;
  const int64_t tasks = (transpose_sparse ? L.R : L.C) * cdiv(P, d.row_chunk);
  const double work = 2.0 * L.nnz * L.bm * L.bn * P;
  // Block-columns without blocks still own their output columns: the kernel writes zeros there.
  run_tasks(tasks, k.dds_scratch(d), work, [&](int64_t s, int64_t e, void* scr) { k.dds(d, s, e, scr); });
}

// out[nnz, bm, bn] = blocks of a @ b; a: [M, K] any strides, b: [K, N].
void sdd(const at::Tensor& a_in, const at::Tensor& b_in, at::TensorList layout, at::IntArrayRef meta, at::Tensor& out) {
  const Layout L = check_layout(layout, meta);
  check_float(a_in, "a");
  check_float(b_in, "b");
  TORCH_CHECK_VALUE(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(0) == L.R * L.bm && b_in.size(1) == L.C * L.bn &&
                        a_in.size(1) == b_in.size(0),
                    "native sdd: a [", L.R * L.bm, ", K] and b [K, ", L.C * L.bn, "] expected; got ", a_in.sizes(),
                    " and ", b_in.sizes());
  check_out(out, {L.nnz, L.bm, L.bn});
  if (L.bm * L.bn <= kSmallBlock) {  // element sparsity and tiny blocks: unstructured.cpp
    unstructured_sdd(L, a_in, b_in, out, simd_enabled());
    return;
  }
  // Both operands are read in place, whatever their strides: A one scalar at a time, B through
  // the kernel's packed per-column panels.
  SddArgs s{};
  s.L = L;
  s.a = a_in.data_ptr<float>();
  s.lda = a_in.stride(0);
  s.a_cs = a_in.stride(1);
  s.b = b_in.data_ptr<float>();
  s.ldb = b_in.stride(0);
  s.b_cs = b_in.stride(1);
  s.K = a_in.size(1);
  s.out = out.data_ptr<float>();
  const Kernels& k = kernels_for(L.bn);
  const double work = 2.0 * L.nnz * L.bm * L.bn * s.K;
  // Few, long ranges of blocks: a range shares each K chunk of A and B among all its blocks
  // (the default 8 ranges per thread would each re-read them); two per thread still let a
  // thread that finishes early take over.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  run_tasks(
      L.nnz, k.sdd_scratch(s), work, [&](int64_t b0, int64_t e, void* scr) { k.sdd(s, b0, e, scr); },
      threads > 1 ? cdiv(L.nnz, 2 * threads) : L.nnz);
}

// ------------------------------------------------------------------ convolution ops

ConvGeom conv_geom(const Layout& L, int64_t N, int64_t C, int64_t H, int64_t W, at::IntArrayRef ks,
                   at::IntArrayRef st, at::IntArrayRef pd, at::IntArrayRef dl) {
  TORCH_CHECK_VALUE(ks.size() == 2 && st.size() == 2 && pd.size() == 2 && dl.size() == 2,
                    "native conv: kernel_size, stride, padding, dilation must be pairs");
  ConvGeom g{};
  g.N = N, g.C = C, g.H = H, g.W = W;
  g.R = ks[0], g.S = ks[1], g.sh = st[0], g.sw = st[1], g.ph = pd[0], g.pw = pd[1], g.dh = dl[0], g.dw = dl[1];
  TORCH_CHECK_VALUE(g.R >= 1 && g.S >= 1 && g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1 && g.ph >= 0 && g.pw >= 0,
                    "native conv: invalid kernel_size/stride/padding/dilation");
  const int64_t T = g.R * g.S;
  TORCH_CHECK_VALUE(L.R * L.bm % T == 0, "native conv: layout rows (", L.R * L.bm, ") must be a multiple of R*S = ", T);
  g.K = L.R * L.bm / T;
  // Tap-major stacking: block-row t*Kb + kb must not straddle two taps.
  TORCH_CHECK_VALUE(g.K % L.bm == 0, "native conv: block size ", L.bm, " must divide out_channels (", g.K, ")");
  TORCH_CHECK_VALUE(C == L.C * L.bn, "native conv: x has ", C, " channels but the layout has ", L.C * L.bn);
  g.Ho = (H + 2 * g.ph - g.dh * (g.R - 1) - 1) / g.sh + 1;
  g.Wo = (W + 2 * g.pw - g.dw * (g.S - 1) - 1) / g.sw + 1;
  TORCH_CHECK_VALUE(H + 2 * g.ph >= g.dh * (g.R - 1) + 1 && W + 2 * g.pw >= g.dw * (g.S - 1) + 1,
                    "native conv: input smaller than the dilated kernel");
  return g;
}

constexpr auto kNHWC = at::MemoryFormat::ChannelsLast;

// Whether the forward / input-gradient kernels write `out` with non-temporal stores. Both
// write each output element exactly once, so an output that cannot stay in the core's L2
// anyway is streamed to memory instead of first being read for ownership: measured on the
// ResNet-18 step (1 thread, batch 64, b32), conv forward 131 -> 104 ms and input gradient 142
// -> 107 ms per step, the following BatchNorm no slower. Small outputs (inference at batch
// 1, late layers) stay in cache for the next op. SPARSEKERNELS_NATIVE_STREAM=0/1 forces it.
bool stream_output(const at::Tensor& out) {
  static const int64_t limit = [] {
    const char* env = std::getenv("SPARSEKERNELS_NATIVE_STREAM");
    if (env != nullptr && env[0] == '0') return std::numeric_limits<int64_t>::max();
    if (env != nullptr && env[0] == '1') return int64_t{0};
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? int64_t{l2} : int64_t{1} << 20;
  }();
  return out.numel() * int64_t{sizeof(float)} > limit;
}

// Conv tasks cover 144 pixels: a multiple of every register-tile height (12, 6 and 4), and
// small enough that a 32x32 image batch of 32 still gives hundreds of tasks per channel block.
constexpr int64_t kPixChunk = 144;

// Small problems (late layers, inference at batch 1) would give a handful of 144-pixel tasks,
// too few to balance two threads (512 channels at 4x4, batch 64: 7 tasks of 144 pixels and
// one of 16). They get smaller pixel chunks (down to 48) and then split the channel blocks of
// each chunk into ranges, aiming at kMinTasks tasks. The partition depends on the problem
// shape only, never on the thread count, so results stay identical for any thread count.
constexpr int64_t kMinTasks = 32;

struct ConvSplit {
  int64_t pix_chunk, group_split;
};

ConvSplit conv_split(int64_t npix, int64_t groups) {
  ConvSplit s{kPixChunk, 1};
  if (cdiv(npix, s.pix_chunk) < kMinTasks) s.pix_chunk = std::max<int64_t>(48, cdiv(cdiv(npix, kMinTasks), 12) * 12);
  const int64_t chunks = cdiv(npix, s.pix_chunk);
  if (chunks < kMinTasks) s.group_split = std::max<int64_t>(1, std::min(groups, cdiv(kMinTasks, chunks)));
  return s;
}

void conv2d_forward(const at::Tensor& x_in, const at::Tensor& values, at::TensorList layout, at::IntArrayRef meta,
                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, at::Tensor& y) {
  const Layout L = check_layout(layout, meta);
  const at::Tensor v = checked_values(values, L);
  check_float(x_in, "x");
  TORCH_CHECK_VALUE(x_in.dim() == 4, "native conv: x must be [N, C, H, W]; got ", x_in.sizes());
  const ConvGeom g = conv_geom(L, x_in.size(0), x_in.size(1), x_in.size(2), x_in.size(3), kernel_size, stride,
                               padding, dilation);
  check_out(y, {g.N, g.K, g.Ho, g.Wo}, kNHWC);
  const at::Tensor x = x_in.contiguous(kNHWC);
  // Output channels are the vector dimension: each block [bk, bc] is read transposed.
  const at::Tensor vt = v.transpose(1, 2).contiguous();
  const at::Tensor zeros = at::zeros({std::max<int64_t>(g.C, 1)}, x.options());
  ConvFwdArgs a{};
  a.L = L;
  a.g = g;
  a.x = x.data_ptr<float>();
  a.values_t = vt.data_ptr<float>();
  a.zeros = zeros.data_ptr<float>();
  const ConvSplit split = conv_split(g.N * g.Ho * g.Wo, g.K / L.bm);
  a.pix_chunk = split.pix_chunk;
  a.group_split = split.group_split;
  a.y = y.data_ptr<float>();
  a.stream_out = stream_output(y);
  const Kernels& k = kernels_for(L.bm);
  const int64_t tasks = k.conv_fwd_tasks(a);
  const double work = 2.0 * L.nnz * L.bm * L.bn * g.N * g.Ho * g.Wo;
  run_tasks(tasks, k.conv_fwd_scratch(a), work, [&](int64_t s, int64_t e, void* scr) { k.conv_fwd(a, s, e, scr); });
}

void conv2d_input_grad(const at::Tensor& dy_in, const at::Tensor& values, at::TensorList layout,
                       at::IntArrayRef meta, at::IntArrayRef input_shape, at::IntArrayRef kernel_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& dx) {
  const Layout L = check_layout(layout, meta);
  const at::Tensor v = checked_values(values, L);
  check_float(dy_in, "dy");
  TORCH_CHECK_VALUE(input_shape.size() == 4, "native conv: input_shape must be [N, C, H, W]; got ", input_shape);
  const ConvGeom g = conv_geom(L, input_shape[0], input_shape[1], input_shape[2], input_shape[3], kernel_size, stride,
                               padding, dilation);
  TORCH_CHECK_VALUE(dy_in.sizes() == at::IntArrayRef({g.N, g.K, g.Ho, g.Wo}), "native conv: dy must have shape [", g.N,
                    ", ", g.K, ", ", g.Ho, ", ", g.Wo, "]; got ", dy_in.sizes());
  check_out(dx, input_shape, kNHWC);
  const at::Tensor dy = dy_in.contiguous(kNHWC);
  const at::Tensor zeros = at::zeros({std::max<int64_t>(g.K, 1)}, dy.options());
  ConvDxArgs a{};
  a.L = L;
  a.g = g;
  a.dy = dy.data_ptr<float>();
  a.values = v.data_ptr<float>();
  a.zeros = zeros.data_ptr<float>();
  const ConvSplit split = conv_split(g.N * g.H * g.W, g.C / L.bn);
  a.pix_chunk = split.pix_chunk;
  a.group_split = split.group_split;
  a.dx = dx.data_ptr<float>();
  a.stream_out = stream_output(dx);
  const Kernels& k = kernels_for(L.bn);
  const int64_t tasks = k.conv_dx_tasks(a);
  const double work = 2.0 * L.nnz * L.bm * L.bn * g.N * g.Ho * g.Wo;
  run_tasks(tasks, k.conv_dx_scratch(a), work, [&](int64_t s, int64_t e, void* scr) { k.conv_dx(a, s, e, scr); });
}

void conv2d_weight_grad(const at::Tensor& x_in, const at::Tensor& dy_in, at::TensorList layout, at::IntArrayRef meta,
                        at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, at::Tensor& out) {
  const Layout L = check_layout(layout, meta);
  check_float(x_in, "x");
  check_float(dy_in, "dy");
  TORCH_CHECK_VALUE(x_in.dim() == 4, "native conv: x must be [N, C, H, W]; got ", x_in.sizes());
  const ConvGeom g = conv_geom(L, x_in.size(0), x_in.size(1), x_in.size(2), x_in.size(3), kernel_size, stride,
                               padding, dilation);
  TORCH_CHECK_VALUE(dy_in.sizes() == at::IntArrayRef({g.N, g.K, g.Ho, g.Wo}), "native conv: dy must have shape [", g.N,
                    ", ", g.K, ", ", g.Ho, ", ", g.Wo, "]; got ", dy_in.sizes());
  check_out(out, {L.nnz, L.bm, L.bn});
  const at::Tensor x = x_in.contiguous(kNHWC);
  const at::Tensor dy = dy_in.contiguous(kNHWC);
  ConvDwArgs a{};
  a.L = L;
  a.g = g;
  a.x = x.data_ptr<float>();
  a.dy = dy.data_ptr<float>();
  a.out = out.data_ptr<float>();
  const Kernels& k = kernels_for(L.bn);
  const double work = 2.0 * L.nnz * L.bm * L.bn * g.N * g.Ho * g.Wo;
  // One contiguous range of blocks per thread: the kernel streams the activations once per
  // range, so the fewer ranges the less memory traffic (blocks cost about the same).
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), L.nnz));
  run_tasks(
      L.nnz, k.conv_dw_scratch(a), work, [&](int64_t s, int64_t e, void* scr) { k.conv_dw(a, s, e, scr); },
      cdiv(L.nnz, threads));
}

}  // namespace

bool simd_enabled() { return &kernels() != &kernels_baseline; }

}  // namespace sk

TORCH_LIBRARY(sparsekernels_native, m) {
  m.def("isa() -> str", &sk::isa);
  m.def("set_isa(str name) -> ()", &sk::set_isa);
  m.def("build_info() -> str", &sk::build_info);
  m.def("num_threads() -> int", &sk::num_threads);
  m.def("parallel_probe() -> int", &sk::parallel_probe);
  m.def("dsd(Tensor values, Tensor[] layout, int[] meta, Tensor b, bool transpose_sparse, Tensor(a!) out) -> ()");
  m.def("dds(Tensor a, Tensor values, Tensor[] layout, int[] meta, bool transpose_sparse, Tensor(a!) out) -> ()");
  m.def("sdd(Tensor a, Tensor b, Tensor[] layout, int[] meta, Tensor(a!) out) -> ()");
  m.def(
      "conv2d_forward(Tensor x, Tensor values, Tensor[] layout, int[] meta, int[] kernel_size, int[] stride, "
      "int[] padding, int[] dilation, Tensor(a!) out) -> ()");
  m.def(
      "conv2d_input_grad(Tensor dy, Tensor values, Tensor[] layout, int[] meta, int[] input_shape, "
      "int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor(a!) out) -> ()");
  m.def(
      "conv2d_weight_grad(Tensor x, Tensor dy, Tensor[] layout, int[] meta, int[] kernel_size, int[] stride, "
      "int[] padding, int[] dilation, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(sparsekernels_native, CPU, m) {
  m.impl("dsd", &sk::dsd);
  m.impl("dds", &sk::dds);
  m.impl("sdd", &sk::sdd);
  m.impl("conv2d_forward", &sk::conv2d_forward);
  m.impl("conv2d_input_grad", &sk::conv2d_input_grad);
  m.impl("conv2d_weight_grad", &sk::conv2d_weight_grad);
}

// `import sparsekernels._native` loads this library, which runs the registrations above; the
// module itself is empty (the ops are reached through torch.ops.sparsekernels_native).
extern "C" PyObject* PyInit__native(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_native", "sparsekernels native CPU kernels", -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
