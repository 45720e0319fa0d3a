// Block-sparse matmul and convolution kernels, written once and compiled per instruction set.
//
// This file is included inside a namespace by kernels_avx512.cpp and kernels_avx2.cpp (under
// their `#pragma GCC target`) and by kernels_baseline.cpp (default target), with SK_MR /
// SK_NV / SK_VW setting the register tile. It must not include headers: see kernels_api.h.
//
// Every op reduces to one micro-kernel shape,
//
//     C[mr x nc] (+)= sum over segments s of  A_s[mr x kc_s] @ B_s[kc_s x nc],
//
// where C is an output tile kept in registers for the whole reduction, rows of A are read
// one scalar at a time (broadcast) and rows of B one vector at a time. Sparsity lives only
// in the segment list: a segment is one active block (matmul, conv forward / input grad) or
// one image row (conv weight grad). Three kinds of segment cover all six ops:
//
//   * RowSegs: each of the mr rows of A has its own pointer (a block row, or a row of zeros),
//     k-th element at row[k * a_cs]; B rows are b + k * b_rs; kc is the same for all
//     segments (the block size).
//   * StridedSeg: A row i, element k at a + i * a_rs + k * a_cs; kc varies per segment.
//   * TapSegs (conv forward / input grad): a conv tile's per-tap table of row pointers (a
//     shifted pixel, or the zero row standing in for padding) plus each segment's channel
//     offset; the kernel forms a segment's row pointers in registers.
//
// The vector type is GCC's generic vector extension of SK_VW floats: 16 (one zmm register)
// under the AVX-512 target, 8 (one ymm register under AVX2, two SSE registers on the
// baseline) otherwise; `acc += b * scalar` broadcasts the scalar and, with FMA enabled,
// becomes one vfmadd.

#ifndef SK_MR
#error "define SK_MR and SK_NV before including kernels_impl.h"
#endif
#ifndef SK_VW
#define SK_VW 8  // floats per vector: 8 (AVX2, or two SSE registers), 16 (AVX-512)
#endif

typedef float vf __attribute__((vector_size(4 * SK_VW)));
typedef long long i64;

constexpr int VW = SK_VW;    // floats per vector
constexpr int MR = SK_MR;    // rows of the register tile
constexpr int NV = SK_NV;    // vectors per row of the register tile
constexpr int NR = VW * NV;  // columns of the register tile

#define SK_INLINE inline __attribute__((always_inline))

SK_INLINE i64 imin(i64 a, i64 b) { return a < b ? a : b; }
SK_INLINE i64 imax(i64 a, i64 b) { return a > b ? a : b; }
SK_INLINE i64 cdiv(i64 a, i64 b) { return (a + b - 1) / b; }

// Unaligned vector load/store (memcpy compiles to one vmovups); the partial versions handle
// the last < VW columns of an output whose width is not a multiple of VW. A target with
// masked loads (AVX-512) defines SK_MASKED_PART and sk_load_part / sk_store_part (one masked
// instruction each) before including this file; elsewhere they are scalar loops.
SK_INLINE vf loadv(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
SK_INLINE void storev(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
SK_INLINE vf zerov() { return vf{}; }
// Non-temporal store of one aligned vector (a plain store where the target has none); a
// kernel that streams ends with stream_fence() so the stores are visible to other threads.
#ifdef SK_STREAM_STORE
SK_INLINE void stream_store(float* p, vf v) { sk_stream_store(p, v); }
SK_INLINE void stream_fence() { sk_stream_fence(); }
#else
SK_INLINE void stream_store(float* p, vf v) { storev(p, v); }
SK_INLINE void stream_fence() {}
#endif
// Whether rows c, c + ldc, ... of full vectors can be streamed: vector-aligned.
SK_INLINE bool stream_ok(const float* c, i64 ldc, int part) {
  return part == VW && (reinterpret_cast<unsigned long long>(c) % sizeof(vf)) == 0 &&
         (ldc * (i64)sizeof(float)) % (i64)sizeof(vf) == 0;
}
#ifdef SK_MASKED_PART
SK_INLINE vf load_part(const float* p, int n) { return sk_load_part(p, n); }
SK_INLINE void store_part(float* p, vf v, int n) { sk_store_part(p, v, n); }
#else
SK_INLINE vf load_part(const float* p, int n) {
  vf v = zerov();
  for (int q = 0; q < n; ++q) v[q] = p[q];
  return v;
}
SK_INLINE void store_part(float* p, vf v, int n) {
  for (int q = 0; q < n; ++q) p[q] = v[q];
}
#endif

// Software prefetch of a memory range into L2, a few cache lines at a time: a kernel that
// streams activations from memory spreads the lines of its next chunk over the work of the
// current one, so the loads of the next chunk hit L2 instead of waiting on DRAM (the
// hardware prefetchers miss the "some lines of each pixel" patterns of channel blocks).
// Prefetches never fault; the ranges are clamped to the tensors anyway.
struct RangePrefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  SK_INLINE void reset(const float* a, const float* b) {
    p = reinterpret_cast<const char*>(a);
    end = reinterpret_cast<const char*>(b);
  }
  SK_INLINE i64 lines() const { return p < end ? (end - p + 63) / 64 : 0; }
  SK_INLINE void step(i64 n) {
    for (; n > 0 && p < end; --n, p += 64) __builtin_prefetch(p, 0, 2);
  }
};

// ------------------------------------------------------------------------ micro-kernels

// Segments whose A rows are given by pointers: a[s * MR + i] is row i of segment s.
struct RowSegs {
  const float* const* a;  // [nseg][MR]
  const float* const* b;  // [nseg]
  i64 nseg, kc, a_cs, b_rs;
  bool stream = false;  // write the output tile with non-temporal stores (see stream_ok)
};

struct StridedSeg {
  const float* a;
  const float* b;
  i64 kc;
};

struct StridedSegs {
  const StridedSeg* seg;
  i64 nseg, a_rs, a_cs, b_rs;
};

// The accumulator tile of M rows and V vectors (V = 1 with `part` < VW columns for the tail).
template <int M, int V>
struct Tile {
  vf acc[M][V];

  SK_INLINE void start(const float* c, i64 ldc, bool accumulate, int part) {
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < V; ++v) {
        if (!accumulate)
          acc[i][v] = zerov();
        else
          acc[i][v] = part < VW ? load_part(c + i * ldc, part) : loadv(c + i * ldc + VW * v);
      }
  }

  // Non-temporal stores of full, vector-aligned rows (stream_ok checked that).
  SK_INLINE void finish_stream(float* c, i64 ldc) const {
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < V; ++v) stream_store(c + i * ldc + VW * v, acc[i][v]);
  }

  SK_INLINE void finish(float* c, i64 ldc, int part) const {
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < V; ++v) {
        if (part < VW)
          store_part(c + i * ldc, acc[i][v], part);
        else
          storev(c + i * ldc + VW * v, acc[i][v]);
      }
  }

  // acc += A[M x kc] @ B[kc x VW*V]; A row i is rows[i][k * a_cs], B row k is b + k * b_rs.
  SK_INLINE void update(const float* const* rows, i64 a_cs, const float* b, i64 b_rs, i64 kc, int part) {
    const float* r[M];
    for (int i = 0; i < M; ++i) r[i] = rows[i];
    i64 ka = 0;
    for (i64 k = 0; k < kc; ++k, ka += a_cs, b += b_rs) {
      vf bv[V];
      for (int v = 0; v < V; ++v) bv[v] = part < VW ? load_part(b, part) : loadv(b + VW * v);
      for (int i = 0; i < M; ++i) {
        const float ai = r[i][ka];
        for (int v = 0; v < V; ++v) acc[i][v] += bv[v] * ai;
      }
    }
  }
};

// One register tile through a list of segments. `part` == VW for full vectors, else the
// number of valid columns (V == 1). noinline keeps one copy per (M, V) shape, whose loops
// the compiler unrolls around M*V accumulators living in registers.
template <int M, int V>
__attribute__((noinline)) void tile_rows(const RowSegs& s, i64 b_off, float* c, i64 ldc, bool accumulate, int part) {
  Tile<M, V> t;
  t.start(c, ldc, accumulate, part);
  for (i64 j = 0; j < s.nseg; ++j) t.update(s.a + j * MR, s.a_cs, s.b[j] + b_off, s.b_rs, s.kc, part);
  if (s.stream && stream_ok(c, ldc, part))
    t.finish_stream(c, ldc);
  else
    t.finish(c, ldc, part);
}

template <int M, int V>
__attribute__((noinline)) void tile_strided(const StridedSegs& s, i64 a_off, i64 b_off, float* c, i64 ldc,
                                            bool accumulate, int part) {
  Tile<M, V> t;
  t.start(c, ldc, accumulate, part);
  for (i64 j = 0; j < s.nseg; ++j) {
    const StridedSeg& g = s.seg[j];
    const float* rows[M];
    for (int i = 0; i < M; ++i) rows[i] = g.a + a_off + i * s.a_rs;
    t.update(rows, s.a_cs, g.b + b_off, s.b_rs, g.kc, part);
  }
  t.finish(c, ldc, part);
}

// A row block of `m` <= MR rows and `n` columns: full-width tiles of NR columns, then
// one-vector (VW-column) tiles, then the < VW column tail.
template <class Call>
SK_INLINE void over_columns(int m, i64 n, Call&& call) {
  i64 col = 0;
  for (; col + NR <= n; col += NR) call.template run<NV>(m, col, VW);
  if (NV > 1)
    for (; col + VW <= n; col += VW) call.template run<1>(m, col, VW);
  if (col < n) call.template run<1>(m, col, (int)(n - col));
}

// Dispatch of a runtime row count in [1, MR] to the template of that height.
#define SK_DISPATCH_ROWS(m, V, FN, ...)                         \
  do {                                                          \
    switch (m) {                                                \
      case 1: FN<1, V>(__VA_ARGS__); break;                     \
      case 2: if (MR >= 2) FN<(MR >= 2 ? 2 : 1), V>(__VA_ARGS__); break; \
      case 3: if (MR >= 3) FN<(MR >= 3 ? 3 : 1), V>(__VA_ARGS__); break; \
      case 4: if (MR >= 4) FN<(MR >= 4 ? 4 : 1), V>(__VA_ARGS__); break; \
      case 5: if (MR >= 5) FN<(MR >= 5 ? 5 : 1), V>(__VA_ARGS__); break; \
      case 6: if (MR >= 6) FN<(MR >= 6 ? 6 : 1), V>(__VA_ARGS__); break; \
      case 7: if (MR >= 7) FN<(MR >= 7 ? 7 : 1), V>(__VA_ARGS__); break; \
      case 8: if (MR >= 8) FN<(MR >= 8 ? 8 : 1), V>(__VA_ARGS__); break; \
      case 9: if (MR >= 9) FN<(MR >= 9 ? 9 : 1), V>(__VA_ARGS__); break; \
      case 10: if (MR >= 10) FN<(MR >= 10 ? 10 : 1), V>(__VA_ARGS__); break; \
      case 11: if (MR >= 11) FN<(MR >= 11 ? 11 : 1), V>(__VA_ARGS__); break; \
      case 12: if (MR >= 12) FN<(MR >= 12 ? 12 : 1), V>(__VA_ARGS__); break; \
      case 13: if (MR >= 13) FN<(MR >= 13 ? 13 : 1), V>(__VA_ARGS__); break; \
      case 14: if (MR >= 14) FN<(MR >= 14 ? 14 : 1), V>(__VA_ARGS__); break; \
    }                                                           \
  } while (0)

// C[m x n] (+)= the row segments, for m <= MR rows.
struct RowsCall {
  const RowSegs& s;
  i64 b_off;
  float* c;
  i64 ldc;
  bool accumulate;
  template <int V>
  SK_INLINE void run(int m, i64 col, int part) const {
    SK_DISPATCH_ROWS(m, V, tile_rows, s, b_off + col, c + col, ldc, accumulate, part);
  }
};

struct StridedCall {
  const StridedSegs& s;
  i64 a_off, b_off;
  float* c;
  i64 ldc;
  bool accumulate;
  template <int V>
  SK_INLINE void run(int m, i64 col, int part) const {
    SK_DISPATCH_ROWS(m, V, tile_strided, s, a_off, b_off + col, c + col, ldc, accumulate, part);
  }
};

SK_INLINE void gemm_rows(int m, i64 n, const RowSegs& s, i64 b_off, float* c, i64 ldc, bool accumulate) {
  over_columns(m, n, RowsCall{s, b_off, c, ldc, accumulate});
}

SK_INLINE void gemm_strided(int m, i64 n, const StridedSegs& s, i64 a_off, i64 b_off, float* c, i64 ldc,
                            bool accumulate) {
  over_columns(m, n, StridedCall{s, a_off, b_off, c, ldc, accumulate});
}

// Height of the next row tile for rows [i0, end): MR, except that a remainder of 1 or 2 rows
// is avoided by splitting the last MR + rem rows in two (32 rows -> 6,6,6,6,4,4, not
// 6,6,6,6,6,2): a 1- or 2-row tile has too few accumulators to hide the FMA latency.
SK_INLINE int rows_next(i64 i0, i64 end) {
  const i64 left = end - i0;
  if (left <= MR) return (int)left;
  if (MR > 4 && left < MR + 3) return (int)((left + 1) / 2);
  return MR;
}

// ------------------------------------------------------------------------ block-sparse matmul

// Scratch of the row-segment ops: an A-row table [nseg][MR] and a B table [nseg].
SK_INLINE i64 row_seg_bytes(i64 max_seg) { return (max_seg * (MR + 1) + 1) * (i64)sizeof(void*); }

// dsd keeps the A-row tables of every row tile of a block-row, [tiles][nseg][MR], then the
// B table [nseg].
SK_INLINE i64 dsd_tiles(i64 h) { return h / MR + 2; }

SK_INLINE i64 dsd_inner(const sk::DsdArgs& p) { return p.transpose ? p.L.R * p.L.bm : p.L.C * p.L.bn; }

// Bytes of dsd's pointer tables; the packed panel (p.pack_b) follows them, 64-byte aligned.
SK_INLINE i64 dsd_table_bytes(const sk::DsdArgs& p) {
  const i64 max_seg = p.transpose ? p.L.max_col : p.L.max_row;
  const i64 h = p.transpose ? p.L.bn : p.L.bm;
  return (dsd_tiles(h) * max_seg * MR + max_seg + 1) * (i64)sizeof(void*);
}

int64_t dsd_scratch(const sk::DsdArgs& p) {
  const i64 packed = p.pack_b ? dsd_inner(p) * p.panel * (i64)sizeof(float) : 0;
  return dsd_table_bytes(p) + packed + 64;
}

// Output rows of block-row `br` of Y are S rows (or S^T rows) br*h .. br*h + h; segments =
// the active blocks of that block-row, in layout order. Column tile outer, row tile inner:
// the B rows of one column tile (nseg x kc x 16 floats) stay in L1 while all h rows use
// them. (Measured: no gain at P = 256, +30% at P = 1024 over row tile outer; copying the
// B slabs of a narrow B into contiguous scratch first gained nothing.)
//
// Task order. Narrow B: (batch, block-row, panel), the panel fastest (the block-row's values
// stay in L1 across its panels: 5-10 % faster at P <= 512). Wide B (p.panel_outer): (batch,
// panel, block-row), the block-row fastest, so consecutive tasks read the same panel of B
// (inner x panel floats), which stays in L2 across every block-row that reads it; with the
// block-row outermost, each block-row streamed its slabs of all P columns from memory
// (throughput fell 3-5x from P = 256 to P = 8192). With p.pack_b the panel is first copied
// into contiguous scratch ([inner, ncols], once per panel): rows of a wide B lie on
// different pages, and reading one B row per reduction step then misses the first-level TLB
// at every step.
void dsd(const sk::DsdArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const i64 out_blocks = p.transpose ? L.C : L.R;
  const i64 h = p.transpose ? L.bn : L.bm;   // output rows per block-row
  const i64 kc = p.transpose ? L.bm : L.bn;  // reduction length per block
  const i64 rows = out_blocks * h;
  const i64 panels = cdiv(p.P, p.panel);
  const i64 max_seg = p.transpose ? L.max_col : L.max_row;
  const float** a_tab = static_cast<const float**>(scratch);  // [tiles][max_seg][MR]
  const float** b_tab = a_tab + dsd_tiles(h) * max_seg * MR;
  const i64 blk = L.bm * L.bn;
  const unsigned long long after_tables = reinterpret_cast<unsigned long long>(scratch) + dsd_table_bytes(p);
  float* packed = reinterpret_cast<float*>((after_tables + 63) & ~63ull);
  const i64 inner_rows = dsd_inner(p);
  i64 packed_id = -1;

  for (i64 task = begin; task < end; ++task) {
    const i64 bi = task / (panels * out_blocks), within = task % (panels * out_blocks);
    const i64 br = p.panel_outer ? within % out_blocks : within / panels;
    const i64 pn = p.panel_outer ? within / out_blocks : within % panels;
    const i64 col0 = pn * p.panel, ncols = imin(p.panel, p.P - col0);
    const float* b = p.b + bi * p.b_batch_stride + col0;
    i64 ldb = p.ldb;
    if (p.pack_b) {
      if (packed_id != bi * panels + pn) {  // p.pack_b implies p.panel_outer: once per panel
        packed_id = bi * panels + pn;
        for (i64 r = 0; r < inner_rows; ++r)
          __builtin_memcpy(packed + r * ncols, b + r * p.ldb, ncols * sizeof(float));
      }
      b = packed;
      ldb = ncols;
    }
    float* out = p.out + (bi * rows + br * h) * p.P + col0;
    i64 lo, hi;
    if (p.transpose) {
      lo = L.col_offsets[br], hi = L.col_offsets[br + 1];
    } else {
      lo = L.row_offsets[br], hi = L.row_offsets[br + 1];
    }
    const i64 nseg = hi - lo;
    for (i64 s = 0; s < nseg; ++s) {
      // Block row of S^T = block column of S: read block j transposed (A rows stride 1,
      // elements stride bn); B rows come from the block's row in S.
      const i64 j = p.transpose ? L.block_indices_t[lo + s] : lo + s;
      const i64 inner = p.transpose ? L.row_indices_t[lo + s] : L.col_indices[j];
      b_tab[s] = b + inner * kc * ldb;
    }
    i64 ntiles = 0;
    for (i64 i0 = 0, m; i0 < h; i0 += m, ++ntiles) {
      m = rows_next(i0, h);
      const float** a_t = a_tab + ntiles * max_seg * MR;
      for (i64 s = 0; s < nseg; ++s) {
        const i64 j = p.transpose ? L.block_indices_t[lo + s] : lo + s;
        const float* v = p.values + j * blk;
        for (int i = 0; i < m; ++i) a_t[s * MR + i] = p.transpose ? v + i0 + i : v + (i0 + i) * L.bn;
      }
    }
    for (i64 c0 = 0; c0 < ncols; c0 += NR) {
      const i64 nc = imin(NR, ncols - c0);
      i64 t = 0;
      for (i64 i0 = 0, m; i0 < h; i0 += m, ++t) {
        m = rows_next(i0, h);
        const RowSegs segs{a_tab + t * max_seg * MR, b_tab, nseg, kc, p.transpose ? L.bn : 1, ldb};
        gemm_rows((int)m, nc, segs, c0, out + i0 * p.P + c0, p.P, false);
      }
    }
  }
}

int64_t dds_scratch(const sk::DdsArgs& p) { return row_seg_bytes(p.transpose ? p.L.max_row : p.L.max_col); }

// Output block-column `bc` of Y (width w) gathers the blocks of one column of S (or one row
// of S for S^T). A rows are rows of the dense operand, offset to the block's inner range.
// Task = (row chunk, block-column) with the block-column fastest: consecutive tasks read the
// same row_chunk rows of A, which stay in cache across every block-column; with the
// block-column outermost each one re-read its slabs of all P rows from memory (throughput
// fell 3-5x from P = 128 to P = 8192).
void dds(const sk::DdsArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const i64 out_blocks = p.transpose ? L.R : L.C;
  const i64 w = p.transpose ? L.bm : L.bn;   // output columns per block-column
  const i64 kc = p.transpose ? L.bn : L.bm;  // reduction length per block
  const i64 ldy = out_blocks * w;
  const float** a_tab = static_cast<const float**>(scratch);
  const i64 max_seg = p.transpose ? L.max_row : L.max_col;
  const float** b_tab = a_tab + max_seg * MR;
  const i64 blk = L.bm * L.bn;

  for (i64 task = begin; task < end; ++task) {
    const i64 bc = task % out_blocks, ch = task / out_blocks;
    const i64 r0 = ch * p.row_chunk, r1 = imin(p.P, r0 + p.row_chunk);
    i64 lo, hi;
    if (p.transpose) {
      lo = L.row_offsets[bc], hi = L.row_offsets[bc + 1];
    } else {
      lo = L.col_offsets[bc], hi = L.col_offsets[bc + 1];
    }
    const i64 nseg = hi - lo;
    for (i64 s = 0; s < nseg; ++s) {
      // S^T: block j of row bc, transposed copy [bn, bm] so its rows are contiguous.
      b_tab[s] = p.transpose ? p.values_t + (lo + s) * blk : p.values + (i64)L.block_indices_t[lo + s] * blk;
    }
    for (i64 i0 = r0, m; i0 < r1; i0 += m) {
      m = rows_next(i0, r1);
      for (i64 s = 0; s < nseg; ++s) {
        const i64 inner = p.transpose ? L.col_indices[lo + s] : L.row_indices_t[lo + s];
        const float* a = p.a + inner * kc * p.a_cs;
        for (int i = 0; i < m; ++i) a_tab[s * MR + i] = a + (i0 + i) * p.lda;
      }
      const RowSegs segs{a_tab, b_tab, nseg, kc, p.a_cs, w};
      gemm_rows((int)m, w, segs, 0, p.out + i0 * ldy + bc * w, ldy, false);
    }
  }
}

// Reduction steps per K chunk: the packed B panel (kSddKC x bn) stays in L1/L2 for all blocks
// of a column.
constexpr i64 kSddKC = 256;

int64_t sdd_scratch(const sk::SddArgs& p) { return kSddKC * p.L.bn * (i64)sizeof(float); }

// Tasks are entries of the transposed traversal (blocks grouped by block-column). The loop
// runs K-chunk outer, block inner: for each chunk of kSddKC reduction steps and each column
// c of the task's blocks, B[k0:k0+kc, c*bn:(c+1)*bn] is packed once into a contiguous
// [kc, bn] panel (B may have any strides: a column-major B is common in backward passes),
// then every block of column c accumulates A[rows of its block-row, chunk] @ panel into its
// output. The chunk of A (M x kc) is then shared by every block of its rows; with the chunk
// loop inside each column, every column re-read its block-rows' slabs of all K from memory
// (throughput fell 2-3x from K = 128 to K = 8192). Each block sums its chunks in order, so
// results do not depend on how blocks are split into tasks.
void sdd(const sk::SddArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const i64 bm = L.bm, bn = L.bn, blk = bm * bn;
  float* panel = static_cast<float*>(scratch);
  if (p.K == 0) {
    for (i64 e = begin; e < end; ++e)
      for (i64 q = 0; q < blk; ++q) p.out[(i64)L.block_indices_t[e] * blk + q] = 0.0f;
    return;
  }
  // Block-column of entry `begin`: the last c with col_offsets[c] <= begin.
  i64 lo_c = 0, hi_c = L.C;
  while (hi_c - lo_c > 1) {
    const i64 mid = (lo_c + hi_c) / 2;
    if (L.col_offsets[mid] <= begin) lo_c = mid; else hi_c = mid;
  }
  for (i64 k0 = 0; k0 < p.K; k0 += kSddKC) {
    const i64 kc = imin(kSddKC, p.K - k0);
    for (i64 c = lo_c, e0 = begin; e0 < end; ++c) {
      const i64 e1 = imin(end, (i64)L.col_offsets[c + 1]);
      if (e1 <= e0) continue;
      const float* src = p.b + k0 * p.ldb + c * bn * p.b_cs;
      for (i64 k = 0; k < kc; ++k)
        for (i64 q = 0; q < bn; ++q) panel[k * bn + q] = src[k * p.ldb + q * p.b_cs];
      for (i64 e = e0; e < e1; ++e) {
        const i64 j = L.block_indices_t[e], r = L.row_indices_t[e];
        const StridedSeg seg{p.a + r * bm * p.lda + k0 * p.a_cs, panel, kc};
        const StridedSegs segs{&seg, 1, p.lda, p.a_cs, bn};
        float* out = p.out + j * blk;
        for (i64 i0 = 0, m; i0 < bm; i0 += m) {
          m = rows_next(i0, bm);
          gemm_strided((int)m, bn, segs, i0 * p.lda, 0, out + i0 * bn, bn, k0 > 0);
        }
      }
      e0 = e1;
    }
  }
}

// ------------------------------------------------------------------------ convolution

// The forward pass and the input gradient share one structure. A task is a chunk of pixels
// (output pixels for the forward pass, input pixels for the input gradient), cut into row
// tiles of up to MR pixels, times every channel block of the output:
//
//   1. the segments, one per active block, grouped by output channel block ("group": kb for
//      the forward pass, cb for the input gradient), each tagged with its kernel tap;
//   2. per tile and per tap that has blocks, the activation row each pixel of the tile reads
//      through that tap (or the zero row where it falls in the padding, or where a stride
//      skips it), computed once for all groups;
//   3. per group, per tile: the micro-kernel over the group's segments, skipping taps whose
//      rows are all zero for that tile. The group's blocks stay in L1 across the tiles.
struct ConvSeg {
  i64 tap;         // kernel tap t = r*S + s
  i64 a_off;       // channel offset into the activation row (input / output block * size)
  const float* b;  // the block, rows along the reduction
};

struct ConvTile {
  i64 out;   // output offset of the tile's first pixel (channel 0)
  i64 ldc;   // output row stride between the tile's pixels
  int m;     // pixels
  bool full; // every tap that has blocks has a non-zero row in the tile: no segment is skipped
};

// The segments of one group for one tile: A row i of segment j is
// tap_rows[seg[j].tap * MR + i] + seg[j].a_off (a_cs = 1), B rows b_rs apart. The
// micro-kernel forms the M row pointers of a segment in registers from the tile's per-tap
// row table, instead of the caller writing MR pointers per segment per tile to memory (at
// 32 channels that table was a third of the forward pass's time).
struct TapSegs {
  const ConvSeg* seg;
  i64 nseg;
  const float* const* tap_rows;  // [T][MR]
  i64 kc, b_rs;
  bool stream;
};

template <int M, int V>
__attribute__((noinline)) void tile_taps(const TapSegs& s, i64 b_off, float* c, i64 ldc, int part) {
  Tile<M, V> t;
  t.start(c, ldc, false, part);
  for (i64 j = 0; j < s.nseg; ++j) {
    const ConvSeg& g = s.seg[j];
    const float* const* tap = s.tap_rows + g.tap * MR;
    const float* rows[M];
    for (int i = 0; i < M; ++i) rows[i] = tap[i] + g.a_off;
    t.update(rows, 1, g.b + b_off, s.b_rs, s.kc, part);
  }
  if (s.stream && stream_ok(c, ldc, part))
    t.finish_stream(c, ldc);
  else
    t.finish(c, ldc, part);
}

struct TapsCall {
  const TapSegs& s;
  float* c;
  i64 ldc;
  template <int V>
  SK_INLINE void run(int m, i64 col, int part) const {
    SK_DISPATCH_ROWS(m, V, tile_taps, s, col, c + col, ldc, part);
  }
};

// Pixel coordinates of a tile. Tiles of a task are mostly consecutive in the flattened
// [N, H, W] grid, so coordinates advance without divisions after the first.
struct PixelTile {
  i64 H, W;
  i64 next = -1;   // flat index following the last tile
  i64 nq, hq, wq;  // coordinates of `next`
  i64 n[MR], h[MR], w[MR];
  SK_INLINE PixelTile(i64 H_, i64 W_) : H(H_), W(W_), nq(0), hq(0), wq(0) {}
  SK_INLINE void load(i64 i0, int rows) {
    if (i0 != next) wq = i0 % W, hq = (i0 / W) % H, nq = i0 / (W * H);
    for (int i = 0; i < rows; ++i) {
      n[i] = nq, h[i] = hq, w[i] = wq;
      if (++wq == W) {
        wq = 0;
        if (++hq == H) hq = 0, ++nq;
      }
    }
    next = i0 + rows;
  }
};

SK_INLINE i64 conv_taps(const sk::ConvGeom& g) { return g.R * g.S; }

// Unit-step source coordinates of a tile's pixels: pixel i reads, through a tap shifted by
// (dr, ds), pixel (h[i] + dr, w[i] + ds) of a [.., Hs, Ws, ch] tensor, at element offset
// base[i] + (dr * Ws + ds) * ch. Computed once per tile, so that each tap costs an add and two
// unsigned compares per pixel instead of the full index arithmetic.
struct TileSources {
  i64 base[MR], h[MR], w[MR];
  i64 Hs, Ws, ch;

  // rows[i] = the row pixel i reads through tap (dr, ds), or `zeros` outside the tensor;
  // returns whether any pixel reads inside it.
  SK_INLINE bool tap_rows(int m, i64 dr, i64 ds, const float* src, const float* zeros, const float** rows) const {
    const i64 shift = (dr * Ws + ds) * ch;
    bool found = false;
    for (int i = 0; i < m; ++i) {
      const bool ok = (uint64_t)(h[i] + dr) < (uint64_t)Hs && (uint64_t)(w[i] + ds) < (uint64_t)Ws;
      rows[i] = ok ? src + (base[i] + shift) : zeros;
      found |= ok;
    }
    return found;
  }
};

// Prefetch of the activations a task reads that the previous task of the same thread did not:
// rows [lo, hi] (clamped to [0, rows)) of images n0 .. n1 of a [N, rows, cols, ch] tensor,
// from the end of what was already prefetched.
struct TaskPrefetch {
  RangePrefetch pf;
  const float* done = nullptr;
  SK_INLINE void next(const float* base, i64 rows, i64 cols, i64 ch, i64 n0, i64 lo, i64 n1, i64 hi) {
    lo = imin(rows - 1, imax(0, lo));
    hi = imin(rows - 1, imax(0, hi));
    const float* a = base + (n0 * rows + lo) * cols * ch;
    const float* b = base + (n1 * rows + hi + 1) * cols * ch;
    if (done != nullptr && a < done && done <= b) a = done;
    pf.reset(a, b);
    done = b;
  }
  SK_INLINE void none() { pf.reset(nullptr, nullptr); }
};

// Per-task scratch, carved from one buffer (pointer-aligned parts first, bytes last).
struct ConvScratch {
  ConvSeg* seg;           // [nnz]
  i64* group;             // [groups + 1]: segments of group q are seg[group[q] .. group[q+1])
  ConvSeg* kept;          // [nnz]: a group's segments whose tap has rows in a tile that is not full
  i64* tap_dr;            // [T]: row shift of each tap (per op: see conv_fwd / conv_dx)
  i64* tap_ds;            // [T]: column shift
  ConvTile* tiles;        // [max_tiles]
  const float** rows;     // [max_tiles][T][MR]: activation row of each pixel, per tap
  char* any;              // [max_tiles][T]: tap has at least one non-zero row in the tile
  char* tap_used;         // [T]: tap has blocks

  static i64 bytes(i64 nnz, i64 groups, i64 max_tiles, i64 T) {
    return 2 * nnz * (i64)sizeof(ConvSeg) + (groups + 1 + 2 * T) * (i64)sizeof(i64) + max_tiles * (i64)sizeof(ConvTile) +
           max_tiles * T * MR * (i64)sizeof(void*) + max_tiles * T + T + 16;
  }
  ConvScratch(void* p, i64 nnz, i64 groups, i64 max_tiles, i64 T) {
    seg = static_cast<ConvSeg*>(p);
    kept = seg + nnz;
    group = reinterpret_cast<i64*>(kept + nnz);
    tap_dr = group + groups + 1;
    tap_ds = tap_dr + T;
    tiles = reinterpret_cast<ConvTile*>(tap_ds + T);
    rows = reinterpret_cast<const float**>(tiles + max_tiles);
    any = reinterpret_cast<char*>(rows + max_tiles * T * MR);
    tap_used = any + max_tiles * T;
  }

  // Whether every tap that has blocks has a non-zero row in tile `t` (after its `any` is set).
  SK_INLINE bool full(i64 t, i64 T) const {
    const char* a = any + t * T;
    for (i64 k = 0; k < T; ++k)
      if (tap_used[k] && !a[k]) return false;
    return true;
  }

  // Runs groups [q0, q1) over every tile: group q writes channels [q*width, (q+1)*width).
  // `pf` (the next task's activations) advances a share of its lines per tile.
  SK_INLINE void run(i64 q0, i64 q1, i64 ntiles, i64 T, i64 kc, i64 width, float* out, bool stream,
                     RangePrefetch& pf) const {
    const i64 per_tile = cdiv(pf.lines(), imax(1, (q1 - q0) * ntiles));
    for (i64 q = q0; q < q1; ++q) {
      for (i64 t = 0; t < ntiles; ++t) {
        pf.step(per_tile);
        const ConvTile& tile = tiles[t];
        const float* const* tile_rows = rows + t * T * MR;
        // A tap whose rows are all zero rows in this tile (padding, or skipped by a stride)
        // contributes nothing: its segments are left out, as a dense product of zeros would
        // only add zeros.
        const ConvSeg* first = seg + group[q];
        i64 nseg = group[q + 1] - group[q];
        if (!tile.full) {
          const char* tile_any = any + t * T;
          i64 used = 0;
          for (i64 e = 0; e < nseg; ++e)
            if (tile_any[first[e].tap]) kept[used++] = first[e];
          first = kept, nseg = used;
        }
        const TapSegs segs{first, nseg, tile_rows, kc, width, stream};
        over_columns(tile.m, width, TapsCall{segs, out + tile.out + q * width, tile.ldc});
      }
    }
    if (stream) stream_fence();
  }
};

// ---- forward

// Row tiles that rows_next cuts `count` pixels into: all MR high except that the last MR + 1
// or MR + 2 may become two.
SK_INLINE i64 max_row_tiles(i64 count) { return cdiv(count, MR) + 1; }

SK_INLINE i64 fwd_max_tiles(const sk::ConvFwdArgs& p) { return max_row_tiles(p.pix_chunk); }

int64_t conv_fwd_tasks(const sk::ConvFwdArgs& p) {
  return cdiv(p.g.N * p.g.Ho * p.g.Wo, p.pix_chunk) * p.group_split;
}

int64_t conv_fwd_scratch(const sk::ConvFwdArgs& p) {
  return ConvScratch::bytes(p.L.nnz, p.g.K / p.L.bm, fwd_max_tiles(p), conv_taps(p.g));
}

// Task = pix_chunk consecutive output pixels (flattened n, oh, ow; tiles cross image rows)
// x one of group_split ranges of output channel blocks (consecutive tasks of one pixel chunk
// reuse its row tables). Group kb = the active blocks of block-rows t*Kb + kb over taps t;
// tap t of output pixel (oh, ow) reads input pixel (oh*sh - ph + r*dh, ow*sw - pw + s*dw).
void conv_fwd(const sk::ConvFwdArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const sk::ConvGeom& g = p.g;
  const i64 T = conv_taps(g), bk = L.bm, bc = L.bn, Kb = g.K / bk;
  const i64 npix = g.N * g.Ho * g.Wo;
  const ConvScratch sc(scratch, L.nnz, Kb, fwd_max_tiles(p), T);

  // Segments and tap shifts do not depend on the pixels: once per call of this function.
  for (i64 t = 0; t < T; ++t) {
    sc.tap_used[t] = 0;
    sc.tap_dr[t] = (t / g.S) * g.dh - g.ph, sc.tap_ds[t] = (t % g.S) * g.dw - g.pw;
  }
  i64 nseg = 0;
  for (i64 kb = 0; kb < Kb; ++kb) {
    sc.group[kb] = nseg;
    for (i64 t = 0; t < T; ++t) {
      const i64 brow = t * Kb + kb;
      for (i64 j = L.row_offsets[brow]; j < L.row_offsets[brow + 1]; ++j) {
        sc.seg[nseg++] = ConvSeg{t, (i64)L.col_indices[j] * bc, p.values_t + j * bk * bc};
        sc.tap_used[t] = 1;
      }
    }
  }
  sc.group[Kb] = nseg;

  TaskPrefetch tp;
  const i64 gsplit = p.group_split;
  i64 ntiles = 0, loaded = -1;
  for (i64 task = begin; task < end; ++task) {
    const i64 pt = task / gsplit, gs = task % gsplit;
    const i64 p0 = pt * p.pix_chunk, p1 = imin(npix, p0 + p.pix_chunk);
    if (task + 1 < end && (task + 1) / gsplit != pt) {  // input rows of the next chunk's pixels [p1, q1)
      const i64 q1 = imin(npix, p1 + p.pix_chunk) - 1, hw = g.Ho * g.Wo;
      tp.next(p.x, g.H, g.W, g.C, p1 / hw, (p1 % hw) / g.Wo * g.sh - g.ph, q1 / hw,
              (q1 % hw) / g.Wo * g.sh - g.ph + (g.R - 1) * g.dh);
    } else {
      tp.none();
    }
    if (pt != loaded) {
      loaded = pt;
      ntiles = 0;
      PixelTile px(g.Ho, g.Wo);
      TileSources src;
      src.Hs = g.H, src.Ws = g.W, src.ch = g.C;
      for (i64 i0 = p0, m; i0 < p1; i0 += m, ++ntiles) {
        m = rows_next(i0, p1);
        px.load(i0, (int)m);
        const float** rows = sc.rows + ntiles * T * MR;
        char* any = sc.any + ntiles * T;
        for (int i = 0; i < m; ++i) {  // the input pixel under tap (0, 0) without padding
          src.h[i] = px.h[i] * g.sh, src.w[i] = px.w[i] * g.sw;
          src.base[i] = ((px.n[i] * g.H + src.h[i]) * g.W + src.w[i]) * g.C;
        }
        for (i64 t = 0; t < T; ++t)
          if (sc.tap_used[t]) any[t] = src.tap_rows((int)m, sc.tap_dr[t], sc.tap_ds[t], p.x, p.zeros, rows + t * MR);
        sc.tiles[ntiles] = ConvTile{i0 * g.K, g.K, (int)m, sc.full(ntiles, T)};
      }
    }
    sc.run(gs * Kb / gsplit, (gs + 1) * Kb / gsplit, ntiles, T, bc, bk, p.y, p.stream_out, tp.pf);
  }
}

// ---- input gradient

// Work is cut into "lines" of input pixels: with unit stride, runs of pix_chunk consecutive
// pixels of the flattened [N, H, W] grid (tiles cross image rows freely); with a stride, the
// pixels of one image row that share a column phase iw % sw, iw = phase, phase + sw, ... A
// stride-2 tile then holds pixels that all receive from the same taps (the others are
// skipped for the whole tile) instead of half of its rows multiplying zero rows.
SK_INLINE i64 dx_lines_per_task(const sk::ConvDxArgs& p) {
  return imax(1, p.pix_chunk / imax(1, cdiv(p.g.W, p.g.sw)));
}

SK_INLINE i64 dx_max_tiles(const sk::ConvDxArgs& p) {
  if (p.g.sh == 1 && p.g.sw == 1) return max_row_tiles(p.pix_chunk);
  return dx_lines_per_task(p) * max_row_tiles(cdiv(p.g.W, p.g.sw));
}

int64_t conv_dx_tasks(const sk::ConvDxArgs& p) {
  const sk::ConvGeom& g = p.g;
  if (g.sh == 1 && g.sw == 1) return cdiv(g.N * g.H * g.W, p.pix_chunk) * p.group_split;
  return cdiv(g.N * g.H * g.sw, dx_lines_per_task(p)) * p.group_split;
}

int64_t conv_dx_scratch(const sk::ConvDxArgs& p) {
  return ConvScratch::bytes(p.L.nnz, p.g.C / p.L.bn, dx_max_tiles(p), conv_taps(p.g));
}

// Task = a group of input pixels x all C input channels. Group cb = the active blocks of
// block-column cb (all taps: the transposed traversal's block-row t*Kb + kb gives the tap and
// the output block). Input pixel (ih, iw) receives from output pixel ((ih + ph - r*dh) / sh,
// (iw + pw - s*dw) / sw) through tap (r, s) when both divisions are exact and in range.
void conv_dx(const sk::ConvDxArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const sk::ConvGeom& g = p.g;
  const i64 T = conv_taps(g), bk = L.bm, bc = L.bn, Kb = g.K / bk, Cb = g.C / bc;
  const ConvScratch sc(scratch, L.nnz, Cb, dx_max_tiles(p), T);
  const bool unit_stride = g.sh == 1 && g.sw == 1;

  // Entries of the transposed traversal, column by column; within a column in block-row
  // order, so tap-major.
  for (i64 t = 0; t < T; ++t) {
    sc.tap_used[t] = 0;
    sc.tap_dr[t] = g.ph - (t / g.S) * g.dh, sc.tap_ds[t] = g.pw - (t % g.S) * g.dw;
  }
  for (i64 cb = 0; cb <= Cb; ++cb) sc.group[cb] = L.col_offsets[cb];
  for (i64 e = 0; e < L.nnz; ++e) {
    const i64 brow = L.row_indices_t[e], t = brow / Kb;
    sc.seg[e] = ConvSeg{t, (brow % Kb) * bk, p.values + (i64)L.block_indices_t[e] * bk * bc};
    sc.tap_used[t] = 1;
  }

  // Rows for one tile of pixels px (m of them) whose outputs start at `out`, `ldc` apart.
  PixelTile px(g.H, g.W);
  i64 ntiles = 0;
  TileSources src;  // unit stride: input pixel (h, w) receives through tap (dr, ds) from (h + dr, w + ds)
  src.Hs = g.Ho, src.Ws = g.Wo, src.ch = g.K;
  auto add_tile = [&](int m, i64 out, i64 ldc) {
    const float** rows = sc.rows + ntiles * T * MR;
    char* any = sc.any + ntiles * T;
    if (unit_stride)
      for (int i = 0; i < m; ++i) src.h[i] = px.h[i], src.w[i] = px.w[i], src.base[i] = ((px.n[i] * g.Ho + px.h[i]) * g.Wo + px.w[i]) * g.K;
    for (i64 t = 0; t < T; ++t) {
      if (!sc.tap_used[t]) continue;
      const i64 dr = sc.tap_dr[t], ds = sc.tap_ds[t];
      if (unit_stride) {
        any[t] = src.tap_rows(m, dr, ds, p.dy, p.zeros, rows + t * MR);
        continue;
      }
      bool found = false;
      for (int i = 0; i < m; ++i) {
        const i64 hn = px.h[i] + dr, wn = px.w[i] + ds;
        bool ok = hn >= 0 && wn >= 0;
        const i64 oh = ok ? hn / g.sh : 0, ow = ok ? wn / g.sw : 0;
        ok = ok && oh * g.sh == hn && ow * g.sw == wn && oh < g.Ho && ow < g.Wo;
        rows[t * MR + i] = ok ? p.dy + ((px.n[i] * g.Ho + oh) * g.Wo + ow) * g.K : p.zeros;
        found |= ok;
      }
      any[t] = found;
    }
    sc.tiles[ntiles] = ConvTile{out, ldc, m, sc.full(ntiles, T)};
    ++ntiles;
  };

  const i64 lines_per_task = dx_lines_per_task(p);
  const i64 nlines = g.N * g.H * g.sw;
  TaskPrefetch tp;
  const i64 gsplit = p.group_split;
  i64 loaded = -1;
  for (i64 pos = begin; pos < end; ++pos) {
    // Task `pos` = pixel group `task` x channel-block range `gs`.
    const i64 task = pos / gsplit, gs = pos % gsplit;
    const bool next_new = pos + 1 < end && (pos + 1) / gsplit != task;
    // dy rows the next task's input pixels receive from: output rows (ih + ph - r*dh) / sh.
    i64 n0 = -1, ih0 = 0, n1 = 0, ih1 = 0;
    if (next_new && unit_stride) {
      const i64 q0 = (task + 1) * p.pix_chunk, q1 = imin(g.N * g.H * g.W, q0 + p.pix_chunk) - 1;
      if (q0 <= q1) n0 = q0 / (g.H * g.W), ih0 = (q0 / g.W) % g.H, n1 = q1 / (g.H * g.W), ih1 = (q1 / g.W) % g.H;
    } else if (next_new) {
      const i64 l0 = (task + 1) * lines_per_task, l1 = imin(nlines, l0 + lines_per_task) - 1;
      if (l0 <= l1) n0 = l0 / (g.sw * g.H), ih0 = (l0 / g.sw) % g.H, n1 = l1 / (g.sw * g.H), ih1 = (l1 / g.sw) % g.H;
    }
    if (n0 >= 0) {
      const i64 lo = ih0 + g.ph - (g.R - 1) * g.dh, hi = ih1 + g.ph;
      tp.next(p.dy, g.Ho, g.Wo, g.K, n0, lo < 0 ? 0 : lo / g.sh, n1, hi / g.sh);
    } else {
      tp.none();
    }
    if (task == loaded) {
      // Row tables of this pixel group are still in the scratch.
    } else if (unit_stride) {
      ntiles = 0;
      const i64 p0 = task * p.pix_chunk, p1 = imin(g.N * g.H * g.W, p0 + p.pix_chunk);
      for (i64 i0 = p0, m; i0 < p1; i0 += m) {
        m = rows_next(i0, p1);
        px.load(i0, (int)m);
        add_tile((int)m, i0 * g.C, g.C);
      }
    } else {
      ntiles = 0;
      const i64 l0 = task * lines_per_task, l1 = imin(nlines, l0 + lines_per_task);
      for (i64 line = l0; line < l1; ++line) {
        const i64 phase = line % g.sw, ih = (line / g.sw) % g.H, n = line / (g.sw * g.H);
        const i64 count = phase < g.W ? cdiv(g.W - phase, g.sw) : 0;
        for (i64 j0 = 0, m; j0 < count; j0 += m) {
          m = rows_next(j0, count);
          for (int i = 0; i < m; ++i) px.n[i] = n, px.h[i] = ih, px.w[i] = phase + (j0 + i) * g.sw;
          add_tile((int)m, ((n * g.H + ih) * g.W + phase + j0 * g.sw) * g.C, g.sw * g.C);
        }
      }
    }
    loaded = task;
    sc.run(gs * Cb / gsplit, (gs + 1) * Cb / gsplit, ntiles, T, bk, bc, p.dx, p.stream_out, tp.pf);
  }
}

// Weight gradient: image rows per chunk of the pixel reduction. A chunk's dy and x rows
// (~100 pixels) stay in L1/L2 while every register tile of every block of the task runs
// over them.
SK_INLINE i64 dw_rows_per_chunk(const sk::ConvGeom& g) { return imax(1, 96 / imax(1, g.Wo)); }

int64_t conv_dw_scratch(const sk::ConvDwArgs& p) {
  return dw_rows_per_chunk(p.g) * (i64)sizeof(StridedSeg) + p.L.nnz + 1;
}

// Block j = (tap t, output block kb, input block cb): dV[k, c] = sum over output pixels of
// dy[pixel, kb*bk + k] * x[input pixel of tap t, cb*bc + c]. Each output image row
// (n, oh) whose input row is inside the image is one strided segment over its valid ow
// range: A = dy (rows k stride 1, pixels stride K), B = x (pixels stride sw*C).
//
// The loop runs chunk-outer, block-inner: the blocks of a task share each chunk of
// activations while it is in cache, instead of each block streaming all of x and dy from
// memory. Each block still sums its chunks in order, whichever task it falls in.
// NaN/Inf semantics of zero padding. A dense convolution multiplies the padding zeros by dy,
// so a non-finite dy at a position where block j's tap sees only padding makes the dense
// gradient NaN for that output channel (0 * NaN = 0 * Inf = NaN). The reduction skips those
// positions; this pass reads dy at them only (border pixels: a few % of dy for 3x3 kernels)
// and sets the affected output rows of the block to NaN, as F.conv2d's gradient has them.
// Whether dy holds a NaN/Inf at any position where some tap sees only padding (the union of
// the positions dw_padding_nonfinite reads for any block): one vectorised pass over that
// border ring of dy (all channels), so the common all-finite case costs a few % of a dy read.
SK_INLINE bool dw_border_has_nonfinite(const sk::ConvDwArgs& p) {
  const sk::ConvGeom& g = p.g;
  // Output columns [0, lo) and [hi, Wo) see padding through some tap s; rows likewise.
  i64 lo = 0, hi = g.Wo;
  for (i64 s = 0; s < g.S; ++s) {
    const i64 off_w = s * g.dw - g.pw;
    lo = imax(lo, imin(g.Wo, off_w >= 0 ? 0 : cdiv(-off_w, g.sw)));
    hi = imin(hi, imax(0, imin(g.Wo, off_w >= g.W ? 0 : cdiv(g.W - off_w, g.sw))));
  }
  hi = imax(hi, lo);
  vf acc = zerov();
  float tail = 0.0f;
  auto scan = [&](const float* d, i64 n) {  // x * 0 is 0 for finite x, NaN for NaN/Inf
    i64 q = 0;
    for (; q + VW <= n; q += VW) acc += loadv(d + q) * 0.0f;
    for (; q < n; ++q) tail += d[q] * 0.0f;
  };
  for (i64 row = 0; row < g.N * g.Ho; ++row) {
    const i64 oh = row % g.Ho;
    bool border_row = false;
    for (i64 r = 0; r < g.R; ++r) {
      const i64 ih = oh * g.sh - g.ph + r * g.dh;
      border_row |= ih < 0 || ih >= g.H;
    }
    const float* d = p.dy + row * g.Wo * g.K;
    if (border_row) {
      scan(d, g.Wo * g.K);
    } else {
      scan(d, lo * g.K);
      scan(d + hi * g.K, (g.Wo - hi) * g.K);
    }
  }
  for (int q = 0; q < VW; ++q) tail += acc[q];
  return tail != tail;
}

SK_INLINE void dw_padding_nonfinite(const sk::ConvDwArgs& p, i64 j) {
  const sk::Layout& L = p.L;
  const sk::ConvGeom& g = p.g;
  const i64 bk = L.bm, bc = L.bn, Kb = g.K / bk;
  const i64 brow = L.row_indices[j], t = brow / Kb, kb = brow % Kb;
  const i64 r = t / g.S, s = t % g.S;
  const i64 off_w = s * g.dw - g.pw;
  const i64 ow_lo = imin(g.Wo, off_w >= 0 ? 0 : cdiv(-off_w, g.sw));
  const i64 ow_hi = imax(ow_lo, imin(g.Wo, off_w >= g.W ? 0 : cdiv(g.W - off_w, g.sw)));
  float* out = p.out + j * bk * bc;
  auto scan = [&](i64 row, i64 ow0, i64 ow1) {
    for (i64 ow = ow0; ow < ow1; ++ow) {
      const float* d = p.dy + (row * g.Wo + ow) * g.K + kb * bk;
      for (i64 i = 0; i < bk; ++i)
        if (!__builtin_isfinite(d[i]))
          for (i64 c = 0; c < bc; ++c) out[i * bc + c] = __builtin_nanf("");
    }
  };
  for (i64 row = 0; row < g.N * g.Ho; ++row) {
    const i64 ih = (row % g.Ho) * g.sh - g.ph + r * g.dh;
    if (ih < 0 || ih >= g.H) {
      scan(row, 0, g.Wo);
    } else {
      scan(row, 0, ow_lo);
      scan(row, ow_hi, g.Wo);
    }
  }
}

void conv_dw(const sk::ConvDwArgs& p, int64_t begin, int64_t end, void* scratch) {
  const sk::Layout& L = p.L;
  const sk::ConvGeom& g = p.g;
  const i64 bk = L.bm, bc = L.bn, Kb = g.K / bk;
  const i64 rows_per_chunk = dw_rows_per_chunk(g);
  StridedSeg* seg = static_cast<StridedSeg*>(scratch);
  char* started = reinterpret_cast<char*>(seg + rows_per_chunk);  // [end - begin]
  for (i64 j = begin; j < end; ++j) started[j - begin] = 0;

  const i64 nrows = g.N * g.Ho;
  RangePrefetch pf_dy, pf_x;
  for (i64 row0 = 0; row0 < nrows; row0 += rows_per_chunk) {
    const i64 row1 = imin(nrows, row0 + rows_per_chunk);
    // The next chunk's dy rows and the x rows its taps read (all channels, whole rows).
    const i64 row2 = imin(nrows, row1 + rows_per_chunk);
    pf_dy.reset(p.dy + row1 * g.Wo * g.K, p.dy + row2 * g.Wo * g.K);
    if (row1 < row2) {
      const i64 ih_lo = imin(g.H - 1, imax(0, (row1 % g.Ho) * g.sh - g.ph));
      const i64 ih_hi = imin(g.H - 1, imax(0, ((row2 - 1) % g.Ho) * g.sh - g.ph + (g.R - 1) * g.dh));
      pf_x.reset(p.x + ((row1 / g.Ho) * g.H + ih_lo) * g.W * g.C, p.x + (((row2 - 1) / g.Ho) * g.H + ih_hi + 1) * g.W * g.C);
    } else {
      pf_x.reset(p.x, p.x);
    }
    const i64 per_block_dy = cdiv(pf_dy.lines(), end - begin), per_block_x = cdiv(pf_x.lines(), end - begin);
    for (i64 j = begin; j < end; ++j) {
      pf_dy.step(per_block_dy);
      pf_x.step(per_block_x);
      const i64 brow = L.row_indices[j], t = brow / Kb, kb = brow % Kb, cb = L.col_indices[j];
      const i64 r = t / g.S, s = t % g.S;
      // Valid ow: 0 <= ow*sw - pw + s*dw < W.
      const i64 off_w = s * g.dw - g.pw;
      const i64 ow_lo = off_w >= 0 ? 0 : cdiv(-off_w, g.sw);
      const i64 ow_hi = imin(g.Wo, off_w >= g.W ? 0 : cdiv(g.W - off_w, g.sw));
      if (ow_lo >= ow_hi) continue;
      i64 nseg = 0;
      for (i64 row = row0; row < row1; ++row) {
        const i64 n = row / g.Ho, oh = row % g.Ho;
        const i64 ih = oh * g.sh - g.ph + r * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const i64 iw = ow_lo * g.sw + off_w;
        seg[nseg++] = StridedSeg{p.dy + (row * g.Wo + ow_lo) * g.K + kb * bk,
                                 p.x + ((n * g.H + ih) * g.W + iw) * g.C + cb * bc, ow_hi - ow_lo};
      }
      if (nseg == 0) continue;
      const StridedSegs segs{seg, nseg, 1, g.K, g.sw * g.C};
      float* out = p.out + j * bk * bc;
      for (i64 i0 = 0, m; i0 < bk; i0 += m) {
        m = rows_next(i0, bk);
        gemm_strided((int)m, bc, segs, i0, 0, out + i0 * bc, bc, started[j - begin]);
      }
      started[j - begin] = 1;
    }
  }
  for (i64 j = begin; j < end; ++j)
    if (!started[j - begin])
      for (i64 e = 0; e < bk * bc; ++e) p.out[j * bk * bc + e] = 0.0f;
  if (dw_border_has_nonfinite(p))
    for (i64 j = begin; j < end; ++j) dw_padding_nonfinite(p, j);
}
