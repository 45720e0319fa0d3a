// The instruction-set choice of the native extension, shared by its translation units.
#pragma once

namespace sk {

// Whether the kernels run with SIMD tables (AVX2 or AVX-512), i.e. the selected table is not
// the baseline one: follows SPARSEKERNELS_NATIVE_ISA and set_isa() (native.cpp). The
// pointwise and small-block loops use their AVX2 copies exactly when this holds.
bool simd_enabled();

}  // namespace sk
