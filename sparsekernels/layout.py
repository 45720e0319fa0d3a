"""Block layouts: the compressed description of which blocks of a matrix are stored.

A ``BlockLayout`` describes a matrix of shape ``[M, N]`` cut into a grid of ``[R, C]``
blocks of ``[bm, bn]`` elements (``M = R * bm``, ``N = C * bn``), of which ``nnz`` are
active. The values of the active blocks live outside the layout, as a tensor
``values: [nnz, bm, bn]`` in the layout's row-major block order.

Conventions (the contract every kernel and backend reads)::

    block grid (R=3, C=4)     row-major slots     transposed traversal (column by column)
       . X . X                  . 0 . 1           column 0: slot 2 (row 1)
       X X . .                  2 3 . .           column 1: slots 0, 3, 4 (rows 0, 1, 2)
       . X . .                  . 4 . .           column 2: nothing;  column 3: slot 1 (row 0)

    row_offsets = [0, 2, 4, 5]     col_indices = [1, 3, 0, 1, 1]   row_indices = [0, 0, 1, 1, 2]
    col_offsets = [0, 1, 4, 4, 5]  row_indices_t = [1, 0, 1, 2, 0] block_indices_t = [2, 0, 3, 4, 1]

* ``row_offsets``  int32 ``[R + 1]``: slots of block-row ``r`` are ``row_offsets[r]:row_offsets[r+1]``.
* ``col_indices``  int32 ``[nnz]``: block-column of each slot, ascending within a row.
* ``row_indices``  int32 ``[nnz]``: block-row of each slot (non-decreasing).
* ``col_offsets``  int32 ``[C + 1]``: the transposed traversal, column by column; entries
  ``col_offsets[c]:col_offsets[c+1]`` of the two arrays below belong to block-column ``c``.
* ``row_indices_t``   int32 ``[nnz]``: block-row of each entry of the transposed traversal
  (ascending within a column).
* ``block_indices_t`` int32 ``[nnz]``: the row-major slot of each entry of the transposed
  traversal, so ``values[block_indices_t[j]]`` is the block it visits (kernels read the
  block transposed in registers; no transposed copy of the values is ever made).

Every field is built on the mask's device with tensor operations only. When ``nnz`` is
passed as a Python int, building performs no host synchronisation, so a training loop
can rebuild layouts after each topology update without stalling the GPU; the block count
then is trusted (``check=True`` or ``sparsekernels.set_debug_checks(True)`` verifies it,
which synchronises); a wrong one still yields a valid layout, never out-of-range indices.
Layouts made from index tensors (``from_fields``, ``load_state_dict``) are checked by
:meth:`BlockLayout.validate` before any kernel reads them. Because the grid sizes of kernels
depend only on ``nnz``, layouts of equal ``nnz`` never trigger recompilation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sparsekernels import _checks

KERNEL_BLOCK_SIZES = (16, 32, 64, 128)
_INT32_MAX = 2**31 - 1
_INDEX_DTYPE = torch.int32


def normalize_block_size(block_size: int | Sequence[int], name: str = "block_size") -> tuple[int, int]:
    """Return ``(bm, bn)`` from an int or a pair, validating positivity."""
    if isinstance(block_size, bool):
        raise TypeError(f"{name} must be an int or a pair of ints; got {block_size!r}")
    if isinstance(block_size, int):
        pair = (block_size, block_size)
    elif (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in block_size)
    ):
        pair = (int(block_size[0]), int(block_size[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (bm, bn); got {block_size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive; got {pair}")
    return pair


def check_kernel_block_size(block_size: tuple[int, int], name: str = "block_size") -> None:
    """Raise unless both block dimensions are sizes the GPU/native kernels are built for."""
    for b in block_size:
        if b not in KERNEL_BLOCK_SIZES:
            raise ValueError(
                f"{name} must be one of {KERNEL_BLOCK_SIZES} for the kernels; got {block_size} "
                "(the reference backend accepts any block size)"
            )


def _first_active(flat: torch.Tensor, nnz: int) -> torch.Tensor:
    """Linear indices (ascending, int64) of the first ``nnz`` True entries of a bool vector.

    A stable sort on the inverted mask moves active entries to the front in their original
    order. Unlike ``nonzero()`` its output size is static, so nothing waits for the device.
    """
    order = torch.argsort((~flat).to(torch.uint8), stable=True)
    # Sorted again so that a wrong (unchecked) nnz, which mixes inactive entries in after the
    # active ones, still gives ascending distinct indices; a no-op reorder for the right nnz.
    return torch.sort(order[:nnz]).values


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Which blocks of an ``[M, N]`` matrix are stored, in CSR and CSC order.

    Build with :meth:`from_block_mask` or :meth:`from_mask`; see the module docstring for
    the meaning of each field. Instances are immutable; a topology update builds a new one.
    """

    shape: tuple[int, int]
    block_size: tuple[int, int]
    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    row_indices: torch.Tensor
    col_offsets: torch.Tensor
    row_indices_t: torch.Tensor
    block_indices_t: torch.Tensor
    # Whether the index tensors are known to be consistent: built by this module from a mask,
    # or checked by validate(). Layouts that are not (the raw constructor, from_fields with
    # check=False) are validated where they enter a layer or a backend.
    _valid: bool = field(default=False, compare=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_block_mask(
        cls,
        block_mask: torch.Tensor,
        block_size: int | Sequence[int],
        nnz: int | None = None,
        *,
        check: bool | None = None,
    ) -> "BlockLayout":
        """Build from a bool block mask ``[R, C]`` of an ``[R*bm, C*bn]`` matrix.

        ``nnz``: the number of active blocks, if known. Passing it avoids the one host
        synchronisation of the build (counting the mask); the count is then trusted unless
        ``check`` is True (or debug checks are on, see ``sparsekernels.set_debug_checks``),
        in which case a mismatch raises ``ValueError``. An unchecked wrong ``nnz`` still gives a
        valid layout (every index in range; no kernel reads out of bounds), but of other blocks:
        the first ``nnz`` active ones, completed by inactive ones when there are too few.
        """
        if not isinstance(block_mask, torch.Tensor):
            raise TypeError(f"block_mask must be a torch.Tensor; got {type(block_mask).__name__}")
        if block_mask.dtype != torch.bool:
            raise TypeError(f"block_mask must have dtype torch.bool; got {block_mask.dtype}")
        if block_mask.dim() != 2:
            raise ValueError(f"block_mask must be 2-D [R, C]; got shape {tuple(block_mask.shape)}")
        bm, bn = normalize_block_size(block_size)
        R, C = block_mask.shape
        M, N = R * bm, C * bn
        if R * C > _INT32_MAX or M > _INT32_MAX or N > _INT32_MAX:
            raise ValueError(
                f"layout of shape {(M, N)} with block grid {(R, C)} overflows int32 indices "
                f"(at most {_INT32_MAX} blocks and elements per dimension)"
            )
        if nnz is None:
            nnz = int(block_mask.sum())  # the one host sync of an unsized build
        else:
            if isinstance(nnz, bool) or not isinstance(nnz, int):
                raise TypeError(f"nnz must be a Python int or None; got {type(nnz).__name__}")
            if not 0 <= nnz <= R * C:
                raise ValueError(f"nnz must be in [0, {R * C}] for block grid {(R, C)}; got {nnz}")
            if _checks.enabled(check):
                active = int(block_mask.sum())
                if active != nnz:
                    raise ValueError(f"nnz={nnz} but block_mask has {active} active blocks")
        block_mask = block_mask.contiguous()
        return cls._from_slots(_first_active(block_mask.reshape(-1), nnz), (R, C), (bm, bn))

    @classmethod
    def _from_slots(cls, slots: torch.Tensor, grid: tuple[int, int], block_size: tuple[int, int]) -> "BlockLayout":
        """The layout whose active blocks are the distinct cells ``slots`` (int64, row-major
        linear indices of the ``[R, C]`` grid, ascending).

        Every field is derived from ``slots`` alone, so the result is a valid layout even when
        ``slots`` is not exactly the mask's active set (an unchecked wrong ``nnz`` then gives a
        valid layout of other blocks, never out-of-range indices). Sync-free, O(nnz log nnz)."""
        (R, C), (bm, bn) = grid, block_size
        dev = slots.device
        rows = slots // C
        cols = slots % C
        # Offsets by binary search over the sorted keys: static output sizes, no host sync.
        row_offsets = torch.searchsorted(rows, torch.arange(R + 1, device=dev)).to(_INDEX_DTYPE)
        # Transposed traversal: the same cells ordered column-major.
        order_t = torch.argsort(cols * R + rows, stable=True)
        cols_t = cols[order_t]
        col_offsets = torch.searchsorted(cols_t, torch.arange(C + 1, device=dev)).to(_INDEX_DTYPE)
        return cls(
            shape=(R * bm, C * bn),
            block_size=(bm, bn),
            row_offsets=row_offsets,
            col_indices=cols.to(_INDEX_DTYPE),
            row_indices=rows.to(_INDEX_DTYPE),
            col_offsets=col_offsets,
            row_indices_t=rows[order_t].to(_INDEX_DTYPE),
            block_indices_t=order_t.to(_INDEX_DTYPE),
            _valid=True,
        )

    @classmethod
    def from_mask(
        cls,
        mask: torch.Tensor,
        block_size: int | Sequence[int],
        nnz: int | None = None,
        *,
        check: bool | None = None,
    ) -> "BlockLayout":
        """Build from an element mask ``[M, N]`` (bool, or any dtype where nonzero = kept).

        A block is active when any of its elements is.
        """
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor; got {type(mask).__name__}")
        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D [M, N]; got shape {tuple(mask.shape)}")
        bm, bn = normalize_block_size(block_size)
        M, N = mask.shape
        if M % bm or N % bn:
            raise ValueError(f"block_size {(bm, bn)} must divide the mask shape {(M, N)}")
        block_mask = (mask != 0).reshape(M // bm, bm, N // bn, bn).any(dim=3).any(dim=1)
        return cls.from_block_mask(block_mask, (bm, bn), nnz, check=check)

    @classmethod
    def dense(cls, shape: Sequence[int], block_size: int | Sequence[int], device=None) -> "BlockLayout":
        """The layout with every block of ``shape`` active."""
        bm, bn = normalize_block_size(block_size)
        M, N = _check_shape(shape, (bm, bn))
        grid_mask = torch.ones(M // bm, N // bn, dtype=torch.bool, device=device)
        return cls.from_block_mask(grid_mask, (bm, bn), (M // bm) * (N // bn))

    @classmethod
    def random(
        cls,
        shape: Sequence[int],
        block_size: int | Sequence[int],
        density: float,
        *,
        generator: torch.Generator | None = None,
        device=None,
    ) -> "BlockLayout":
        """A layout with ``round(density * R * C)`` blocks drawn uniformly without replacement."""
        bm, bn = normalize_block_size(block_size)
        M, N = _check_shape(shape, (bm, bn))
        R, C = M // bm, N // bn
        nnz = blocks_for_density(density, R * C)
        draw_device = generator.device if generator is not None else device
        scores = torch.rand(R * C, generator=generator, device=draw_device)
        chosen = torch.topk(scores, nnz).indices
        grid_mask = torch.zeros(R * C, dtype=torch.bool, device=scores.device)
        grid_mask[chosen] = True
        target = torch.device(device) if device is not None else scores.device
        return cls.from_block_mask(grid_mask.reshape(R, C).to(target), (bm, bn), nnz)

    # ------------------------------------------------------------------ properties
    @property
    def grid(self) -> tuple[int, int]:
        """``(R, C)``: blocks per column and per row of the matrix."""
        return (self.shape[0] // self.block_size[0], self.shape[1] // self.block_size[1])

    @property
    def nnz(self) -> int:
        """Number of active blocks (a Python int, read from a tensor shape: no sync)."""
        return self.col_indices.shape[0]

    @property
    def device(self) -> torch.device:
        return self.row_offsets.device

    @property
    def density(self) -> float:
        """Fraction of active blocks."""
        R, C = self.grid
        return self.nnz / (R * C) if R * C else 0.0

    def values_shape(self) -> tuple[int, int, int]:
        return (self.nnz, *self.block_size)

    def __repr__(self) -> str:
        return (
            f"BlockLayout(shape={self.shape}, block_size={self.block_size}, grid={self.grid}, "
            f"nnz={self.nnz}, density={self.density:.3f}, device={self.device})"
        )

    def fields(self) -> dict[str, torch.Tensor]:
        """The index tensors by name (what modules store as buffers)."""
        return {name: getattr(self, name) for name in INDEX_FIELDS}

    @classmethod
    def from_fields(
        cls,
        shape: Sequence[int],
        block_size: int | Sequence[int],
        fields: dict[str, torch.Tensor],
        *,
        check: bool = True,
    ) -> "BlockLayout":
        """Rewrap index tensors (no copy): ``fields`` maps each name of :data:`INDEX_FIELDS`
        to its int32 tensor, all on one device.

        ``check`` (default True) runs :meth:`validate` (O(nnz) on the device, one host sync) and
        raises ``ValueError`` naming the bad field; pass ``check=False`` only for tensors this
        library built (the layout is then validated where it enters a layer or a backend)."""
        if not isinstance(fields, dict):
            raise TypeError(f"fields must be a dict of index tensors; got {type(fields).__name__}")
        if sorted(fields) != sorted(INDEX_FIELDS):
            raise ValueError(f"fields must have exactly the keys {list(INDEX_FIELDS)}; got {sorted(fields)}")
        for name, t in fields.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"layout.{name} must be a torch.Tensor; got {type(t).__name__}")
        layout = cls(_check_shape_meta(shape, "shape"), normalize_block_size(block_size), **fields)
        if check:
            layout.validate()  # also marks it valid
        return layout

    @classmethod
    def _wrap(cls, shape: Sequence[int], block_size: Sequence[int], fields: dict[str, torch.Tensor]) -> "BlockLayout":
        """Internal fast path: rewrap fields the library built or validated (no check, no sync)."""
        return cls((int(shape[0]), int(shape[1])), (int(block_size[0]), int(block_size[1])), **fields, _valid=True)

    def to(self, device) -> "BlockLayout":
        moved = {k: v.to(device) for k, v in self.fields().items()}
        return BlockLayout(self.shape, self.block_size, **moved, _valid=self._valid)

    # ------------------------------------------------------------------ conversions
    def to_block_mask(self) -> torch.Tensor:
        """bool ``[R, C]``."""
        if not self._valid:
            self.validate()  # an out-of-range index would otherwise raise a bare IndexError
        R, C = self.grid
        flat = torch.zeros(R * C, dtype=torch.bool, device=self.device)
        flat[self.row_indices.long() * C + self.col_indices.long()] = True
        return flat.reshape(R, C)

    def to_mask(self) -> torch.Tensor:
        """bool element mask ``[M, N]``."""
        bm, bn = self.block_size
        return self.to_block_mask().repeat_interleave(bm, 0).repeat_interleave(bn, 1)

    def dense_to_values(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense: [..., M, N]`` -> ``values: [..., nnz, bm, bn]`` (the active blocks, copied)."""
        self._check_dense(dense, "dense")
        bm, bn = self.block_size
        R, C = self.grid
        blocks = dense.reshape(*dense.shape[:-2], R, bm, C, bn).transpose(-3, -2)
        return blocks[..., self.row_indices.long(), self.col_indices.long(), :, :]

    def values_to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """``values: [..., nnz, bm, bn]`` -> dense ``[..., M, N]`` with zeros outside the blocks.

        Differentiable with respect to ``values``.
        """
        self.check_values(values)
        bm, bn = self.block_size
        R, C = self.grid
        lead = values.shape[:-3]
        grid = values.new_zeros(*lead, R, C, bm, bn)
        grid[..., self.row_indices.long(), self.col_indices.long(), :, :] = values
        return grid.transpose(-3, -2).reshape(*lead, R * bm, C * bn)

    def transpose(self) -> "BlockLayout":
        """Layout of the transposed ``[N, M]`` matrix with blocks ``(bn, bm)``.

        Its row-major slot ``j`` holds the block of slot ``block_indices_t[j]`` of this
        layout, so ``values_t = values[layout.block_indices_t].transpose(-1, -2)``.
        """
        if not self._valid:
            self.validate()
        inverse = torch.empty_like(self.block_indices_t)
        inverse[self.block_indices_t.long()] = torch.arange(self.nnz, dtype=_INDEX_DTYPE, device=self.device)
        return BlockLayout(
            shape=(self.shape[1], self.shape[0]),
            block_size=(self.block_size[1], self.block_size[0]),
            row_offsets=self.col_offsets,
            col_indices=self.row_indices_t,
            row_indices=self.col_indices[self.block_indices_t.long()],
            col_offsets=self.row_offsets,
            row_indices_t=self.col_indices,
            block_indices_t=inverse,
            _valid=self._valid,
        )

    def remap(self, new_layout: "BlockLayout") -> torch.Tensor:
        """int64 ``[new_layout.nnz]``: for each slot of ``new_layout``, the slot of this layout
        holding the same block, or -1 where the block is new (grown).

        Both layouts must describe the same matrix shape and block size. Carry values or
        optimizer state across a topology update with::

            src = old.remap(new); kept = src >= 0
            new_values = torch.where(kept[:, None, None], old_values[src.clamp(min=0)], 0)
        """
        if not isinstance(new_layout, BlockLayout):
            raise TypeError(f"new_layout must be a BlockLayout; got {type(new_layout).__name__}")
        if new_layout.shape != self.shape or new_layout.block_size != self.block_size:
            raise ValueError(
                f"new_layout must have shape {self.shape} and block_size {self.block_size}; "
                f"got shape {new_layout.shape} and block_size {new_layout.block_size}"
            )
        for layout in (self, new_layout):
            if not layout._valid:
                layout.validate()
        R, C = self.grid
        slot_of_cell = torch.full((R * C,), -1, dtype=torch.int64, device=self.device)
        slot_of_cell[self.row_indices.long() * C + self.col_indices.long()] = torch.arange(self.nnz, device=self.device)
        return slot_of_cell[new_layout.row_indices.long() * C + new_layout.col_indices.long()]

    # ------------------------------------------------------------------ validation
    def check_values(self, values: torch.Tensor, name: str = "values") -> None:
        """Raise unless ``values`` is a float tensor ``[..., nnz, bm, bn]`` on the layout's device."""
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(values).__name__}")
        if values.dim() < 3 or tuple(values.shape[-3:]) != self.values_shape():
            raise ValueError(
                f"{name} must have shape [..., nnz, bm, bn] = [..., {self.nnz}, "
                f"{self.block_size[0]}, {self.block_size[1]}]; got {tuple(values.shape)}"
            )
        if not values.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {values.dtype}")
        if values.device != self.device:
            raise ValueError(f"{name} is on {values.device} but the layout is on {self.device}")

    def _check_dense(self, dense: torch.Tensor, name: str) -> None:
        if not isinstance(dense, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(dense).__name__}")
        if dense.dim() < 2 or tuple(dense.shape[-2:]) != self.shape:
            raise ValueError(
                f"{name} must have shape [..., {self.shape[0]}, {self.shape[1]}]; got {tuple(dense.shape)}"
            )
        if dense.device != self.device:
            raise ValueError(f"{name} is on {dense.device} but the layout is on {self.device}")

    def validate(self) -> None:
        """Check every invariant of the layout; raise ``ValueError`` naming the first bad field
        (``layout.<field>``) and the bad value.

        O(nnz log nnz) tensor operations on the layout's device and one host synchronisation
        (two when something is wrong, to fetch the bad value for the message). Run wherever a
        layout comes from outside the library (``from_fields``, ``load_state_dict``, a user's
        ``set_layout``) and before every kernel in debug-checks mode
        (``sparsekernels.set_debug_checks(True)`` or ``SPARSEKERNELS_DEBUG_CHECKS=1``)."""
        _validate(self)
        object.__setattr__(self, "_valid", True)


def _check_shape_meta(shape: Sequence[int], name: str) -> tuple[int, int]:
    """``shape`` as a pair of non-negative ints (the layout's ``[M, N]``)."""
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise ValueError(f"layout.{name} must be a pair of non-negative ints (M, N); got {shape!r}")
    return (int(shape[0]), int(shape[1]))


def _validate(layout: BlockLayout) -> None:
    shape = _check_shape_meta(layout.shape, "shape")
    bm, bn = normalize_block_size(layout.block_size, "layout.block_size")
    if shape[0] % bm or shape[1] % bn:
        raise ValueError(f"layout.block_size {(bm, bn)} must divide layout.shape {shape}")
    R, C = shape[0] // bm, shape[1] // bn
    if R * C > _INT32_MAX or max(shape) > _INT32_MAX:
        raise ValueError(f"layout.shape {shape} with block grid {(R, C)} overflows int32 indices")
    tensors = {}
    device = None
    for name in INDEX_FIELDS:
        t = getattr(layout, name)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"layout.{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype != _INDEX_DTYPE or t.dim() != 1:
            raise ValueError(f"layout.{name} must be a 1-D int32 tensor; got {t.dtype} of shape {tuple(t.shape)}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"layout.{name} is on {t.device}; layout.row_offsets is on {device}")
        tensors[name] = t.long()
    nnz = layout.col_indices.shape[0]
    for name, n in [
        ("row_offsets", R + 1),
        ("col_offsets", C + 1),
        ("row_indices", nnz),
        ("row_indices_t", nnz),
        ("block_indices_t", nnz),
    ]:
        if tensors[name].shape[0] != n:
            what = "R + 1" if name == "row_offsets" else "C + 1" if name == "col_offsets" else "nnz"
            raise ValueError(
                f"layout.{name} must have {what} = {n} entries (grid {(R, C)}, nnz {nnz}); got {tensors[name].shape[0]}"
            )
    if nnz > R * C:
        raise ValueError(f"layout.col_indices has nnz = {nnz} entries, more than the grid's {R * C} blocks")

    # Each check is a bool vector of violations; all of them are reduced on the device and
    # read back once. Indices are clamped before any gather so nothing reads out of range.
    dev = device
    arange = torch.arange(nnz, device=dev)
    ro, co = tensors["row_offsets"], tensors["col_offsets"]
    rows, cols = tensors["row_indices"], tensors["col_indices"]
    rows_t, slots_t = tensors["row_indices_t"], tensors["block_indices_t"]
    zero = torch.zeros(1, dtype=torch.bool, device=dev)
    checks: list[tuple[str, torch.Tensor, torch.Tensor, str]] = []

    def add(name: str, bad: torch.Tensor, values: torch.Tensor, rule: str) -> None:
        checks.append((name, bad, values, rule))

    for name, off in (("row_offsets", ro), ("col_offsets", co)):
        bad = torch.cat([off[:1] != 0, off[1:] < off[:-1], off[-1:] != nnz])
        add(name, bad, off, f"must start at 0, be non-decreasing and end at nnz = {nnz}")
    add("col_indices", (cols < 0) | (cols >= C), cols, f"must be in [0, {C})")
    add("row_indices", (rows < 0) | (rows >= R), rows, f"must be in [0, {R})")
    add("row_indices_t", (rows_t < 0) | (rows_t >= R), rows_t, f"must be in [0, {R})")
    add("block_indices_t", (slots_t < 0) | (slots_t >= nnz), slots_t, f"must be in [0, {nnz})")
    rows_c, cols_c = rows.clamp(0, max(R - 1, 0)), cols.clamp(0, max(C - 1, 0))
    # The block-row of every slot, from the offsets (binary search): must equal row_indices.
    ro_c = torch.cummax(ro.clamp(0, nnz), 0).values
    expected_rows = torch.searchsorted(ro_c, arange, right=True) - 1
    add("row_indices", rows != expected_rows, rows, "must agree with layout.row_offsets")
    keys = rows_c * C + cols_c
    add(
        "col_indices",
        torch.cat([zero, keys[1:] <= keys[:-1]]) if nnz else zero[:0],
        cols,
        "must be strictly ascending within each block-row (no duplicate blocks)",
    )
    co_c = torch.cummax(co.clamp(0, nnz), 0).values
    cols_t = torch.searchsorted(co_c, arange, right=True) - 1
    rows_t_c = rows_t.clamp(0, max(R - 1, 0))
    keys_t = cols_t * R + rows_t_c
    add(
        "row_indices_t",
        torch.cat([zero, keys_t[1:] <= keys_t[:-1]]) if nnz else zero[:0],
        rows_t,
        "must be strictly ascending within each block-column of layout.col_offsets",
    )
    # Each transposed entry must visit the slot holding its (row, column) block; with distinct
    # strictly ordered keys on both sides this makes block_indices_t a permutation.
    s_c = slots_t.clamp(0, max(nnz - 1, 0))
    if nnz:
        add(
            "block_indices_t",
            (rows_c[s_c] != rows_t_c) | (cols_c[s_c] != cols_t),
            slots_t,
            "must point each transposed entry at the slot of the same block",
        )
    flags = torch.stack([bad.any() if bad.numel() else bad.new_zeros(()) for _, bad, _, _ in checks])
    failed = flags.tolist()  # the one host sync
    for (name, bad, values, rule), is_bad in zip(checks, failed):
        if is_bad:
            i = int(bad.nonzero()[0, 0])
            i_val = min(i, values.shape[0] - 1)
            raise ValueError(f"layout.{name} {rule}; got layout.{name}[{i_val}] = {int(values[i_val])}")


INDEX_FIELDS = (
    "row_offsets",
    "col_indices",
    "row_indices",
    "col_offsets",
    "row_indices_t",
    "block_indices_t",
)


def _check_shape(shape: Sequence[int], block_size: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be a pair of positive ints (M, N); got {tuple(shape)}")
    M, N = shape
    if M % block_size[0] or N % block_size[1]:
        raise ValueError(f"block_size {block_size} must divide shape {(M, N)}")
    return M, N


def blocks_for_density(density: float, total_blocks: int, name: str = "density") -> int:
    """Number of active blocks for a density in (0, 1]: ``round(density * total)``, at least 1."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not math.isfinite(density):
        raise TypeError(f"{name} must be a float in (0, 1]; got {density!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"{name} must be in (0, 1]; got {density}")
    return max(1, min(total_blocks, round(density * total_blocks)))
