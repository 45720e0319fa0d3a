"""Build hook for the optional native CPU extension (csrc/); metadata lives in pyproject.toml.

The extension ``sparsekernels._native`` (the ``backend="native"`` kernels) is built with
torch's ``CppExtension`` against the torch already installed in the environment. Install with

    pip install --no-build-isolation -e ".[test]"      # or without -e

``--no-build-isolation`` is required for the extension: a C++ extension must be compiled
against the exact torch it will be loaded into, and an isolated build would instead download
a fresh torch from PyPI into a temporary environment (on Linux, the multi-gigabyte CUDA
build) and compile against that. For the same reason torch is deliberately *not* listed in
pyproject's ``[build-system] requires``.

The extension is optional and never breaks the install: it is skipped, with the reason
printed, when ``SPARSEKERNELS_NATIVE=0`` is set, when torch cannot be imported at build time
(for example in an isolated build), when no C++ compiler is found, or when compilation fails.
``sparsekernels.native_available()`` then returns False and ``backend="auto"`` uses the
reference backend on CPU tensors.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import warnings

import setuptools
from setuptools import setup

# pyproject.toml's SPDX `license` string needs setuptools >= 77. With --no-build-isolation
# pip uses the environment's setuptools (a fresh venv may ship 65), whose error would be a
# schema dump: say what to do instead.
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(
        f"sparsekernels needs setuptools >= 77 to build; this environment has {setuptools.__version__}. "
        "Run `pip install --upgrade pip setuptools wheel` first (the README's install command does)."
    )

SOURCES = [
    "csrc/native.cpp",
    "csrc/kernels_avx2.cpp",
    "csrc/kernels_avx512.cpp",
    "csrc/kernels_baseline.cpp",
    "csrc/pointwise.cpp",
    "csrc/batchnorm.cpp",
    "csrc/unstructured.cpp",
]


def _skip(reason: str) -> None:
    print(f"sparsekernels: installing without the native CPU extension: {reason}", file=sys.stderr)


def _compiler_found() -> bool:
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return shutil.which(cxx.split()[0]) is not None


def _optional(build_ext_cls):
    """``build_ext_cls`` whose failures skip the extension instead of failing the install."""

    class OptionalBuildExt(build_ext_cls):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any build failure means "no extension"
                _skip(f"the build failed ({type(exc).__name__}: {exc})")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                _skip(f"compiling {ext.name} failed ({type(exc).__name__}: {exc})")

    return OptionalBuildExt


def _openmp_flags() -> list[str]:
    """OpenMP flags matching torch's own parallel backend (empty when torch was built without it)."""
    if os.environ.get("SPARSEKERNELS_OPENMP", "1").strip() == "0":
        return []
    import torch

    return ["-fopenmp"] if torch._C.has_openmp else []


def _native_extension() -> dict:
    if os.environ.get("SPARSEKERNELS_NATIVE", "1").strip() == "0":
        _skip("SPARSEKERNELS_NATIVE=0")
        return {}
    try:
        with warnings.catch_warnings():
            # pip builds this package before installing its dependencies, so numpy (ours, not
            # torch's) is usually absent here and importing torch warns "Failed to initialize
            # NumPy". The build only needs torch's headers and flags, never numpy: drop that one
            # message, nothing else.
            warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
            from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # noqa: BLE001 - torch missing or broken: build without it
        _skip(
            f"torch is not importable at build time ({type(exc).__name__}: {exc}); install torch first, "
            "then install this package with `pip install --no-build-isolation`"
        )
        return {}
    if not _compiler_found():
        _skip("no C++ compiler found (set CXX or install g++/clang++)")
        return {}
    extension = CppExtension(
        "sparsekernels._native",
        SOURCES,
        # Portable flags only: AVX2/FMA code is compiled per function (csrc/kernels_avx2.cpp)
        # and chosen at run time, so the binary runs on any x86-64. -g0 halves the build time.
        # -fopenmp: at::parallel_for is inlined from ATen's headers, so the extension must be
        # compiled with OpenMP itself to run in parallel; linking libgomp by its soname binds it to
        # the libgomp that torch already loaded (torch/lib/libgomp.so.1), so torch.set_num_threads
        # governs our kernels too (checked by tests/ops/test_native_threads.py).
        extra_compile_args={"cxx": ["-O3", "-g0", "-Wno-psabi", *_openmp_flags()]},
        extra_link_args=_openmp_flags(),
        depends=[
            "csrc/isa.h",
            "csrc/kernels_api.h",
            "csrc/kernels_impl.h",
            "csrc/pointwise_impl.h",
            "csrc/batchnorm_impl.h",
            "csrc/unstructured.h",
            "csrc/unstructured_impl.h",
        ],
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": _optional(BuildExtension)}}


setup(**_native_extension())
