"""Corruption fuzz of layouts, run by tests/test_safety_fuzz.py in a subprocess (so that a crash
of a kernel reading out of bounds fails that test instead of killing pytest).

``python -m tests.layout_fuzz CASES SEED`` corrupts random layouts (one random field entry set
to an out-of-range, extreme, negative or neighbouring value, two entries swapped, or a field
truncated) and checks, for every case:

* ``BlockLayout.from_fields`` raises ValueError naming a ``layout.<field>``, or accepts it;
* a rejected layout, built unchecked, is refused with ValueError by every Triton and native
  op (nothing reaches a kernel), and by the public ops in debug-checks mode even when it is
  wrapped as trusted (a layer's buffers edited in place);
* an accepted layout (a corruption that happens to be valid) gives the float64 reference's
  result on the Triton backend.

Also: ``from_block_mask`` with a wrong unchecked ``nnz`` always gives a valid layout on which
Triton agrees with the reference. Prints ``fuzz ok ...`` and exits 0 when every case passes.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import sparsekernels  # noqa: E402
from sparsekernels import ops  # noqa: E402
from sparsekernels.layout import INDEX_FIELDS, BlockLayout  # noqa: E402
from sparsekernels.ops import backends  # noqa: E402
from sparsekernels.ops import reference as ref  # noqa: E402
from sparsekernels.ops import triton_backend as tb  # noqa: E402

BS = 16


def random_layout(g: torch.Generator) -> BlockLayout:
    R, C = (int(torch.randint(1, 5, (), generator=g)) for _ in range(2))
    mask = torch.rand(R, C, generator=g) < 0.6
    mask.view(-1)[int(torch.randint(0, R * C, (), generator=g))] = True  # nnz >= 1
    return BlockLayout.from_block_mask(mask, BS)


def corrupt(layout: BlockLayout, g: torch.Generator) -> dict[str, torch.Tensor]:
    fields = {k: v.clone() for k, v in layout.fields().items()}
    name = INDEX_FIELDS[int(torch.randint(0, len(INDEX_FIELDS), (), generator=g))]
    t = fields[name]
    kind = int(torch.randint(0, 6, (), generator=g))
    i = int(torch.randint(0, t.numel(), (), generator=g))
    if kind == 0:
        t[i] = int(torch.randint(-3, max(layout.grid) + layout.nnz + 3, (), generator=g))
    elif kind == 1:
        t[i] = [2**31 - 1, -(2**31), 2**30, -1][int(torch.randint(0, 4, (), generator=g))]
    elif kind == 2:
        t[i] = t[i] + (1 if bool(torch.rand((), generator=g) < 0.5) else -1)
    elif kind == 3 and t.numel() > 1:
        j = (i + 1) % t.numel()
        t[[i, j]] = t[[j, i]]
    elif kind == 4:
        fields[name] = t[:-1] if t.numel() > 1 else torch.cat([t, t])
    else:
        fields[name] = t.flip(0)
    return fields


def operands(layout: BlockLayout):
    M, N = layout.shape
    return (
        torch.randn(layout.values_shape()),
        torch.randn(N, 3),
        torch.randn(M, 3),
        torch.randn(2, M),
        torch.randn(2, N),
    )


def agree(layout: BlockLayout) -> None:
    v, b, bt, a, at = operands(layout)
    v64 = v.double()
    pairs = [
        (tb.dsd(v, layout, b), ref.dsd(v64, layout, b.double())),
        (tb.dsd(v, layout, bt, True), ref.dsd(v64, layout, bt.double(), True)),
        (tb.dds(a, v, layout), ref.dds(a.double(), v64, layout)),
        (tb.dds(at, v, layout, True), ref.dds(at.double(), v64, layout, True)),
    ]
    for got, want in pairs:
        err = float((got.double() - want).norm() / want.norm().clamp_min(1e-30))
        if not err < 1e-5:
            raise AssertionError(f"triton disagrees with the reference on a valid layout: rel. error {err}")


def refused(fn, args: tuple, what: str, field_named: bool = True, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except ValueError as err:
        if field_named and "layout." not in str(err):
            raise AssertionError(f"{what}: ValueError without the field: {err}") from None
        return
    raise AssertionError(f"{what}: a corrupted layout was accepted")


def main(cases: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_refused = n_valid = 0
    native = backends.native_available()
    for case in range(cases):
        layout = random_layout(g)
        fields = corrupt(layout, g)
        try:
            checked = BlockLayout.from_fields(layout.shape, layout.block_size, fields)
        except ValueError as err:
            assert "layout." in str(err), f"case {case}: {err}"
        else:
            agree(checked)
            n_valid += 1
            continue
        n_refused += 1
        bad = BlockLayout.from_fields(layout.shape, layout.block_size, fields, check=False)
        v, b, bt, a, at = (torch.randn(1) for _ in range(5))
        if bad.col_indices.shape[0] == layout.nnz:
            v, b, bt, a, at = operands(layout)
        modules = [("triton", tb)] + ([("native", backends.module("native"))] if native else [])
        for name, fn in modules:
            # The native backend checks operand shapes before its C++ side checks the layout.
            named = name == "triton"
            refused(fn.dsd, (v, bad, b), f"case {case} {name}.dsd", named)
            refused(fn.dds, (at, v, bad, True), f"case {case} {name}.dds", named)
            refused(fn.sdd, (bt, b.t(), bad), f"case {case} {name}.sdd", named)
        # Trusted wrap (as a layer's in-place edited buffers would be): debug checks catch it.
        trusted = BlockLayout._wrap(layout.shape, layout.block_size, fields)
        with sparsekernels.debug_checks():
            refused(ops.dsd, (v, trusted, b), f"case {case} debug ops.dsd", backend="triton")
    for _ in range(20):
        layout = random_layout(g)
        R, C = layout.grid
        nnz = int(torch.randint(0, R * C + 1, (), generator=g))
        wrong = BlockLayout.from_block_mask(layout.to_block_mask(), BS, nnz=nnz)
        wrong.validate()
        if nnz:
            agree(wrong)
    print(f"fuzz ok: {n_refused} refused, {n_valid} valid and agreeing, 20 unchecked-nnz layouts")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
