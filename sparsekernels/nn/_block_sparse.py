"""What SparseLinear and SparseConv2d share: a compressed weight over a swappable layout.

The weight matrix ``[M, N]`` (``[out, in]`` for linear layers, ``[R*S*K, C]`` for
convolutions) is held as

* ``weight_values``: ``nn.Parameter [nnz, bm, bn]``, the active blocks;
* the layout's six index tensors as buffers ``layout_<field>`` (so ``.to()``, ``state_dict``
  and checkpoints carry the topology with the values).

``set_layout`` swaps the topology in place with tensor copies only: the parameter object,
its shape and every buffer shape stay the same (constant ``nnz``), nothing waits for the
device, and compiled graphs or CUDA graphs that captured the buffers stay valid.

What differs from ``nn.Linear``/``nn.Conv2d`` (the sparse layers are not subclasses of them):

* the trainable parameter is ``weight_values``; ``weight`` is a *property* that materialises
  the dense weight (a new tensor on every read, differentiable with respect to
  ``weight_values``; editing it in place changes nothing). Assigning ``layer.weight = w``
  (dense shape) writes ``w`` into the active blocks and keeps the layout: entries of ``w``
  outside the active blocks are dropped. ``layer.weight.grad`` does not exist: the gradient is
  ``layer.weight_values.grad``.
* find them with :func:`sparse_modules` (``isinstance(m, nn.Conv2d)`` is False for them).
* ``torch.jit.script`` is not supported (the forward passes a Python ``BlockLayout`` object to
  ``torch.library`` custom ops, which TorchScript cannot type) and will not be: torch itself
  deprecates TorchScript. ``torch.compile`` and ``torch.export`` work (``torch.jit.trace`` too,
  with torch's deprecation warning).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from sparsekernels import _checks
from sparsekernels.layout import INDEX_FIELDS, BlockLayout, blocks_for_density, normalize_block_size
from sparsekernels.ops import backends
from sparsekernels.ops.backends import check_backend

_BUFFER_NAMES = tuple(f"layout_{f}" for f in INDEX_FIELDS)


def top_blocks_layout(dense: torch.Tensor, block_size: tuple[int, int], density: float) -> BlockLayout:
    """Layout keeping the ``round(density * blocks)`` blocks of ``dense [M, N]`` with the
    largest L2 norm (ties broken by position, via a stable sort)."""
    bm, bn = block_size
    M, N = dense.shape
    R, C = M // bm, N // bn
    norms = dense.detach().float().reshape(R, bm, C, bn).pow(2).sum(dim=(1, 3)).reshape(-1)
    nnz = blocks_for_density(density, R * C)
    keep = torch.argsort(norms, descending=True, stable=True)[:nnz]
    block_mask = torch.zeros(R * C, dtype=torch.bool, device=dense.device)
    block_mask[keep] = True
    return BlockLayout.from_block_mask(block_mask.reshape(R, C), block_size, nnz)


class BlockSparseWeight(nn.Module):
    """Base of the sparse layers (not used directly).

    Subclasses call :meth:`_init_weight` from ``__init__`` and implement
    ``_dense_weight_grad(saved_input, grad_output) -> [M, N]`` for gradient-based growth.
    """

    weight_values: nn.Parameter

    def _init_weight(
        self,
        matrix_shape: tuple[int, int],
        block_size: int | tuple[int, int],
        density: float | None,
        layout: BlockLayout | None,
        device,
        dtype,
    ) -> None:
        block_size = normalize_block_size(block_size)
        M, N = matrix_shape
        if layout is not None:
            if not isinstance(layout, BlockLayout):
                raise TypeError(f"layout must be a BlockLayout; got {type(layout).__name__}")
            if layout.shape != (M, N):
                raise ValueError(f"layout must have shape {(M, N)} for this layer; got {layout.shape}")
            if density is not None:
                raise ValueError("pass either density or layout, not both")
            if not layout._valid:
                layout.validate()  # a layout from user tensors: ValueError naming the bad field
            if device is not None:
                layout = layout.to(device)
        elif density is not None:
            layout = BlockLayout.random((M, N), block_size, density, device=device)
        else:
            layout = BlockLayout.dense((M, N), block_size, device=device)
        self.matrix_shape = (M, N)
        self.block_size = layout.block_size
        for name, tensor in layout.fields().items():
            self.register_buffer(f"layout_{name}", tensor.clone())
        self.weight_values = nn.Parameter(torch.empty(layout.values_shape(), device=layout.device, dtype=dtype))
        self.backend = "auto"
        self._dense_grad_requested = False
        self.dense_grad: torch.Tensor | None = None

    @property
    def backend(self) -> str:
        """The ops backend of this layer: ``"auto"``, ``"reference"``, ``"triton"`` or ``"native"``."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    # --------------------------------------------------------------- topology
    @property
    def layout(self) -> BlockLayout:
        """The current layout (a view of the ``layout_*`` buffers; no copy). The buffers were
        validated when they entered (construction, ``set_layout``, ``load_state_dict``); in-place
        edits of them are caught in debug-checks mode only."""
        buffers = self._buffers
        fields = tuple(buffers[name] for name in _BUFFER_NAMES)
        if torch.compiler.is_compiling():  # traced code: no Python-side cache to guard on
            return BlockLayout._wrap(self.matrix_shape, self.block_size, dict(zip(INDEX_FIELDS, fields)))
        cached = self.__dict__.get("_layout_cache")
        # The wrapper over the same buffer objects is reused (set_layout and load_state_dict copy
        # into them in place); .to(), .half() or assigning a buffer replace an object: rewrap.
        if cached is not None and all(a is b for a, b in zip(cached[0], fields)):
            return cached[1]
        layout = BlockLayout._wrap(self.matrix_shape, self.block_size, dict(zip(INDEX_FIELDS, fields)))
        self.__dict__["_layout_cache"] = (fields, layout)
        return layout

    @property
    def nnz(self) -> int:
        return self.weight_values.shape[0]

    @property
    def density(self) -> float:
        return self.layout.density

    def active_fan_in(self) -> float:
        """Mean number of active inputs per output unit (the init scale's fan-in)."""
        return self._dense_fan_in() * self.layout.density

    def _dense_fan_in(self) -> int:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Uniform init with ``nn.Linear``/``nn.Conv2d``'s bound ``1/sqrt(fan_in)``, where fan_in is
        the mean *active* fan-in (dense fan-in × density), so outputs keep the dense layer's scale."""
        bound = 1.0 / math.sqrt(max(self.active_fan_in(), 1.0))
        nn.init.uniform_(self.weight_values, -bound, bound)
        if getattr(self, "bias", None) is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def set_layout(self, new_layout: BlockLayout) -> torch.Tensor:
        """Swap the topology in place; returns the remap index (see ``BlockLayout.remap``).

        Blocks active in both layouts keep their values, grown blocks start at zero. The
        new layout must have the same shape, block size and ``nnz`` (the parameter keeps its
        shape). Only device-side copies: no host synchronisation for layouts the library built
        (``BlockLayout.from_block_mask`` and friends); a layout made from raw index tensors
        (``from_fields(check=False)``, the dataclass constructor) is validated first, as is every
        layout in debug-checks mode.
        """
        old = self.layout
        if not isinstance(new_layout, BlockLayout):
            raise TypeError(f"new_layout must be a BlockLayout; got {type(new_layout).__name__}")
        if not new_layout._valid or _checks.enabled():
            new_layout.validate()
        if new_layout.nnz != old.nnz:
            raise ValueError(
                f"new_layout must keep nnz = {old.nnz} (the parameter's shape); got nnz = {new_layout.nnz}"
            )
        if new_layout.device != old.device:
            raise ValueError(f"new_layout is on {new_layout.device} but the layer is on {old.device}")
        src = old.remap(new_layout)  # also checks shape and block size
        self.weight_values.copy_(gather_blocks(self.weight_values, src))
        for name, tensor in new_layout.fields().items():
            getattr(self, f"layout_{name}").copy_(tensor)
        return src

    def to_block_mask(self) -> torch.Tensor:
        return self.layout.to_block_mask()

    # --------------------------------------------------------------- dense view
    def _dense_matrix(self) -> torch.Tensor:
        """The weight matrix ``[M, N]`` with zeros outside the active blocks (differentiable)."""
        return self.layout.values_to_dense(self.weight_values)

    def _matrix_to_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix  # overridden by conv: [R*S*K, C] -> [K, C, R, S]

    def _weight_to_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (``nn.Linear``/``nn.Conv2d`` shape) as a **new tensor**: zeros outside
        the active blocks, differentiable with respect to ``weight_values`` (the parameter that
        trains). In-place edits of the returned tensor do not reach the layer; assign instead:
        ``layer.weight = w`` writes ``w`` into the active blocks (layout unchanged, entries
        outside it dropped)."""
        return self._matrix_to_weight(self._dense_matrix())

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        self._assign_weight(value)

    @torch.no_grad()
    def _assign_weight(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor; got {type(value).__name__}")
        expected = tuple(self._matrix_to_weight(torch.empty(self.matrix_shape, device="meta")).shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"weight must have shape {expected}; got {tuple(value.shape)}")
        matrix = self._weight_to_matrix(value.detach().to(self.weight_values))
        self.weight_values.copy_(self.layout.dense_to_values(matrix))

    def __setattr__(self, name: str, value) -> None:
        # nn.Module.__setattr__ would try to register an nn.Parameter named "weight" (and fail
        # with "attribute 'weight' already exists"): route every assignment to the setter.
        if name == "weight":
            self._assign_weight(value)
            return
        super().__setattr__(name, value)

    # --------------------------------------------------------------- torch.sparse bridge
    def _matrix_to_sparse_bsr(self) -> torch.Tensor:
        """The weight matrix ``[M, N]`` as a torch BSR tensor sharing this layout's order
        (values detached and copied; index dtype int32 as in the layout)."""
        layout = self.layout
        return torch.sparse_bsr_tensor(
            layout.row_offsets.clone(),
            layout.col_indices.clone(),
            self.weight_values.detach().clone(),
            size=layout.shape,
            check_invariants=False,  # a layout's row offsets and sorted columns are BSR by construction
        )

    @staticmethod
    def _layout_from_sparse_bsr(matrix: torch.Tensor, shape: tuple[int, int], name: str) -> BlockLayout:
        """The :class:`BlockLayout` of a torch BSR tensor ``[M, N]`` (blocks ``[bm, bn]``)."""
        if not isinstance(matrix, torch.Tensor) or matrix.layout != torch.sparse_bsr:
            got = matrix.layout if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise TypeError(f"{name} must be a torch.sparse_bsr tensor (Tensor.to_sparse_bsr); got {got}")
        if tuple(matrix.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(matrix.shape)}")
        values = matrix.values()
        if values.dim() != 3:
            raise ValueError(f"{name} must have 2-D blocks (values [nnz, bm, bn]); got values {tuple(values.shape)}")
        bm, bn = values.shape[1:]
        R, C = shape[0] // bm, shape[1] // bn
        crow, col = matrix.crow_indices().long(), matrix.col_indices().long()
        nnz = values.shape[0]
        if nnz == 0:
            raise ValueError(f"{name} has no stored block: a sparse layer needs at least one")
        rows = torch.repeat_interleave(torch.arange(R, device=crow.device), crow.diff())
        block_mask = torch.zeros(R * C, dtype=torch.bool, device=crow.device)
        block_mask[rows * C + col] = True
        # torch keeps BSR columns sorted within a row, the layout's slot order: values map 1:1.
        return BlockLayout.from_block_mask(block_mask.reshape(R, C), (bm, bn), nnz)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Validate the incoming layout before anything is copied: a tampered or corrupted
        ``layout_*`` buffer raises ``ValueError`` naming the key and the bad value, and the layer
        is left as it was (all-or-nothing for this layer)."""
        keys = {f: prefix + f"layout_{f}" for f in INDEX_FIELDS}
        present = {f: state_dict[k] for f, k in keys.items() if k in state_dict}
        if present:
            fields = {f: present.get(f, getattr(self, f"layout_{f}")) for f in INDEX_FIELDS}
            for f, t in fields.items():
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"state_dict[{keys[f]!r}] must be a tensor; got {type(t).__name__}")
            try:
                incoming = BlockLayout.from_fields(self.matrix_shape, self.block_size, fields, check=False)
                incoming.validate()
            except ValueError as err:
                raise ValueError(f"state_dict for sparse layer {prefix.rstrip('.') or '<root>'!r}: {err}") from None
            values = state_dict.get(prefix + "weight_values")
            if isinstance(values, torch.Tensor) and tuple(values.shape) != incoming.values_shape():
                raise ValueError(
                    f"state_dict[{prefix + 'weight_values'!r}] has shape {tuple(values.shape)}; its layout "
                    f"(nnz = {incoming.nnz}) needs {incoming.values_shape()}"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # --------------------------------------------------------------- dense gradient (RigL)
    def request_dense_grad(self, enabled: bool = True) -> None:
        """Ask the following forwards to also produce ``self.dense_grad``: the gradient of the
        loss with respect to the whole dense weight matrix ``[M, N]`` (fp32; one dense
        matmul/conv on the saved input during backward), accumulated over backwards until the
        next call of this method, which clears it. Off on ordinary steps: it costs a dense product."""
        self._dense_grad_requested = bool(enabled)
        self.dense_grad = None

    def _maybe_hook_dense_grad(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not (self._dense_grad_requested and torch.is_grad_enabled() and y.requires_grad):
            return
        saved = x.detach()

        def hook(grad_output: torch.Tensor) -> None:
            # Accumulate like .grad does: several backwards (gradient accumulation) or a
            # layer applied twice in one forward all contribute.
            grad = self._dense_weight_grad(saved, grad_output.detach()).float()
            self.dense_grad = grad if self.dense_grad is None else self.dense_grad + grad

        y.register_hook(hook)

    def _dense_weight_grad(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def resolved_backend(self) -> str:
        """The backend that runs for this layer's device: ``backend="auto"`` resolved (``"triton"``
        on CUDA, ``"native"`` on CPU when the C++ extension is built, else ``"reference"``); an
        explicit backend is returned as set (its availability is checked at the first forward)."""
        if self.backend == "auto":
            return backends.resolve("auto", self.weight_values.device)
        return self.backend

    def extra_repr(self) -> str:
        runs = self.resolved_backend()
        if runs == "triton" and self.weight_values.device.type == "cpu":
            runs = "triton (interpreter)"
        backend = repr(self.backend) if runs == self.backend else f"{self.backend!r} -> {runs!r}"
        return f"block_size={self.block_size}, nnz={self.nnz}, density={self.density:.3f}, backend={backend}"


def sparse_modules(model: nn.Module) -> Iterator[tuple[str, BlockSparseWeight]]:
    """``(name, module)`` for every :class:`SparseLinear`/:class:`SparseConv2d` in ``model``
    (``model.named_modules()`` filtered): the sparse layers that ``isinstance(m, nn.Linear)``
    and ``isinstance(m, nn.Conv2d)`` loops miss.

    Example: ``for name, m in sparse_modules(model): m.reset_parameters()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, BlockSparseWeight):
            yield name, module


def gather_blocks(values: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``values[src]`` with zeros where ``src == -1`` (the remap rule for values and state).

    values: ``[nnz_old, ...]``; src: int64 ``[nnz_new]`` -> ``[nnz_new, ...]``.
    """
    kept = (src >= 0).reshape(-1, *([1] * (values.dim() - 1)))
    return torch.where(kept, values[src.clamp(min=0)], torch.zeros((), dtype=values.dtype, device=values.device))


def autocast_inputs(x: torch.Tensor, *tensors: torch.Tensor | None) -> tuple:
    """Cast ``x`` and parameters to the autocast dtype when autocast is on (``nn.Linear``'s rule:
    matmul-like ops run in the lower precision), else return them unchanged."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in (x, *tensors))
