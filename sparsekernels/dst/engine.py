"""``DynamicSparsity``: the engine that rewires a model's sparse layers during training.

Usage (``evo.step()`` after ``optimizer.step()`` and before ``optimizer.zero_grad()``)::

    model = sparsify(resnet18(num_classes=10), density=0.1, block_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    evo = DynamicSparsity(model, opt, method="rigl", update_every=100, fraction=0.3,
                          schedule="cosine", stop_after=0.75 * total_steps)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()
        opt.step(); evo.step(); opt.zero_grad()

Steps are counted from 1 at the engine's construction: the ``t``-th call of ``step()``
closes optimizer step ``t`` (build the engine before training starts). It is
an *update step* when ``t % update_every == 0``, ``t <= stop_after`` and the schedule gives
some layer ``k > 0`` blocks to swap. On an update step every sparse layer (each
``SparseLinear``/``SparseConv2d`` of the model, weight matrix ``[M, N]`` cut into an
``[R, C]`` block grid with ``nnz`` active blocks):

1. takes ``k = min(int(fraction(t) · nnz), R·C − nnz)`` (a Python int; see
   :mod:`sparsekernels.dst.schedules`), reduced on the device by the adaptive multiplier or
   redistributed across layers when those options are on (below);
2. ranks its active blocks by the method's prune score (ascending) and its inactive blocks
   by the grow score (descending), ties in random order, and prunes the first ``k`` of the
   former and grows the first ``k`` of the latter (``explore × k`` of them drawn uniformly at
   random instead, for methods with ``explore > 0``). Growth only picks blocks that were
   inactive before the update, so exactly ``k`` blocks change and ``nnz`` is constant;
3. rebuilds its layout on the device, ``BlockLayout.from_block_mask(mask, block_size,
   nnz=layer.nnz)``, and installs it with ``layer.set_layout``: kept blocks keep their
   values, pruned ones are dropped, grown ones start at zero;
4. moves optimizer state with the remap index ``src`` that ``set_layout`` returns: **every
   state tensor with the shape of ``weight_values`` (SGD ``momentum_buffer``, Adam/AdamW
   ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, …) is remapped — kept blocks carry their
   state to their new slot, grown blocks get zeros; every other entry (step counts, factored
   or scalar statistics) is left untouched.** The parameter's ``.grad`` and the method's
   per-slot state are remapped the same way.

No host synchronisation happens in ``step()``: counts are Python ints, selection uses
argsort/comparisons/index_put on fixed shapes, statistics stay on the device until
``history`` is read. Where a swap count depends on device data (the adaptive multiplier,
global redistribution), the selection takes a static number of candidates (the Python
bound) and keeps the first ``k`` with a device-side comparison ``arange(bound) < k``.

Options for the evolutionary methods (usable with any method):

* ``adaptive`` (default: on for the evolutionary methods): layer ``l`` swaps
  ``max(1, floor(a_l · k_l))`` blocks. The multiplier starts at ``a_l = 1`` and after each
  update that swapped something becomes ``max(f, (a_l + 1 − ρ_l) / 2)``, where the *revert
  rate* ``ρ_l`` is the share of the blocks pruned at that update that had been grown
  *recently* — at one of the ``grace_updates + 1`` updates before it, i.e. pruned at the
  first update allowed to prune them. Growth that keeps being undone means the structure
  has settled: the rate shrinks (halfway towards ``1 − ρ`` each update, never below the floor
  ``f = adapt_floor``, 0.1 by default, and never below one block, so exploration continues
  until the schedule ends it; ``adapt_floor=0`` lets it fall to one block), and it
  recovers as soon as pruning hits established blocks again. ``ρ`` and ``a`` stay on the
  device: the count is applied by a device comparison, so neither lag nor synchronisation.
* ``global_redistribution``: the per-layer counts are chosen jointly. Every active block of
  every updating layer gets the ratio of its prune score to its layer's mean prune score;
  the ``K = Σ_l k_l`` blocks of smallest ratio over all layers are marked (``floor(a · K)``
  with one global adaptive multiplier ``a``), and layer ``l`` swaps as many blocks as it
  has marked, capped at ``min(2·k_l, nnz_l, R_l·C_l − nnz_l)``. Layers whose blocks are
  globally least fit swap more; each layer's ``nnz`` (and parameter shape) is unchanged.
  Prune scores must be non-negative for the ratios to mean anything (norms, fitness).
* ``grace_updates`` (a method attribute; 1 for the evolutionary methods): blocks grown at one
  of the last ``grace_updates`` updates go to the end of the prune order, so they are pruned
  only if nothing else is left.

Dense gradients (``needs_dense_grad`` methods: RigL, evolutionary-gradient) are computed
only for update steps: at the end of ``step()`` the engine calls
``layer.request_dense_grad(True)`` on every layer when the next step is an update step and
turns it off after the update. Under ``torch.distributed``, see
:mod:`sparsekernels.dst.distributed`.

With gradient accumulation the dense gradient sums every backward of the update step (a
layer's ``dense_grad`` accumulates like ``.grad``); under AMP it is the loss-scaled gradient,
which leaves its ranking unchanged. The
engine's generator lives on the first sparse layer's device; layers elsewhere receive their
random numbers by a device-to-device copy.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from sparsekernels.dst.base import (
    GrowthPruneMethod,
    LayerState,
    build_method,
    cells_of_slots,
    inactive_first,
    method_name,
    ranked,
    smallest_free,
)
from sparsekernels.dst.distributed import all_reduce_mean_, broadcast_seed, world_size
from sparsekernels.dst.history import History
from sparsekernels.dst.schedules import FractionSchedule
from sparsekernels.layout import BlockLayout
from sparsekernels.nn._block_sparse import BlockSparseWeight, gather_blocks

# Default smallest adaptive multiplier: a settled structure still swaps a tenth of the scheduled
# blocks, so exploration never stops before the schedule ends it.
ADAPT_FLOOR = 0.1


class DynamicSparsity:
    """Evolve the block topology of every sparse layer of ``model`` during training.

    Args:
        model: a module containing ``SparseLinear``/``SparseConv2d`` layers (e.g. after
            ``sparsify``), on its final device; a DDP wrapper is fine. A layer module reached
            under several names is one layer; two layers sharing one ``weight_values``
            parameter raise ``ValueError``.
        optimizer: the optimizer holding every sparse layer's ``weight_values``.
        method: a registered name (``"set"``, ``"rigl"``, ``"evolutionary"``,
            ``"evolutionary-gradient"``, or one added with ``register_method``) or a
            ``GrowthPruneMethod`` instance.
        update_every: optimizer steps between topology updates (int >= 1).
        fraction: share of each layer's active blocks swapped at step 0, in (0, 1).
        schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay of the fraction.
        stop_after: step count after which the topology is frozen (float floored); required
            by ``"cosine"``/``"linear"``, which reach zero there. A value below
            ``update_every`` (no update would ever run; e.g. a fraction of training such as
            0.75 instead of a step count) raises ``ValueError``.
        global_redistribution: choose per-layer swap counts jointly (module docstring).
        adaptive: shrink the swap count from the revert rate (module docstring); None: the
            method's default (on for the evolutionary methods).
        adapt_floor: smallest adaptive multiplier, in [0, 1] (default ``ADAPT_FLOOR`` = 0.1:
            a settled structure still swaps a tenth of the scheduled blocks). 0 lets the swap
            count fall to one block per layer and update, so the structure can freeze.
        seed: seed of the engine's ``torch.Generator`` (tie-breaking, random growth), taken
            modulo 2**63; None: ``torch.initial_seed()``. Under ``torch.distributed`` rank 0's
            seed is used.
        process_group: the group whose ranks must agree on the topology (default group).
        **method_options: passed to the method's constructor (e.g. ``explore=0.25``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        method: str | GrowthPruneMethod = "rigl",
        update_every: int = 100,
        fraction: float = 0.3,
        schedule: str = "constant",
        stop_after: float | int | None = None,
        *,
        global_redistribution: bool = False,
        adaptive: bool | None = None,
        adapt_floor: float = ADAPT_FLOOR,
        seed: int | None = None,
        process_group=None,
        **method_options,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(
                f"update_every must be an int >= 1 (optimizer steps between updates); got {update_every!r}"
            )
        self.schedule = FractionSchedule(schedule, fraction, stop_after)
        _check_stop_after(self.schedule.stop_after, stop_after, update_every)
        # named_modules lists a module reachable under two names once: it is one layer.
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BlockSparseWeight)]
        if not layers:
            raise ValueError(
                "model has no sparse layers (SparseLinear/SparseConv2d): sparsify it first, "
                "e.g. sparsekernels.sparsify(model, density=0.1)"
            )
        owner: dict[int, str] = {}
        for name, layer in layers:
            first = owner.setdefault(id(layer.weight_values), name)
            if first != name:
                # Two layouts over one parameter: the first update would rewire the values for
                # one layout and silently scramble them for the other.
                raise ValueError(
                    f"sparse layers {first!r} and {name!r} share one weight_values parameter; DynamicSparsity "
                    "needs one parameter per sparse layer (reuse the same layer module instead, which counts once)"
                )
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, layer in layers:
            if id(layer.weight_values) not in held:
                raise ValueError(
                    f"optimizer does not hold the weight_values parameter of sparse layer {name!r}: "
                    "build the optimizer from model.parameters() (after sparsify) before DynamicSparsity"
                )
        self.method = build_method(method, method_options)
        self.model = model
        self.optimizer = optimizer
        self.update_every = update_every
        self.global_redistribution = bool(global_redistribution)
        self.adaptive = self.method.adaptive_default if adaptive is None else bool(adaptive)
        self.adapt_floor = _check_floor(adapt_floor, "adapt_floor")
        self.process_group = process_group

        device = layers[0][1].weight_values.device
        if seed is None:
            seed = torch.initial_seed()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        # initial_seed() may use all 64 bits; the broadcast travels as int64.
        self.seed = broadcast_seed(seed % 2**63, device, process_group)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed)

        self._states = [LayerState(name, layer, self._generator) for name, layer in layers]
        for st in self._states:
            dev = st.layer.weight_values.device
            st.born = torch.zeros(st.nnz, dtype=torch.int64, device=dev)
            st.ever_active = torch.zeros(st.total_blocks, dtype=torch.bool, device=dev)
            st.ever_active[cells_of_slots(st)] = True
            st.adapt = torch.ones((), dtype=torch.float32, device=dev)
            st.grown_total = torch.zeros((), dtype=torch.int64, device=dev)
            st.pruned_grown_total = torch.zeros((), dtype=torch.int64, device=dev)
        self.method.configure(self)
        for st in self._states:
            self.method.init_layer(st)
        self._global_adapt = torch.ones((), dtype=torch.float32, device=device)
        self._step = 0
        self._updates = 0
        self._history = History()
        self._armed = False

        # A post-accumulate-grad hook tells step() whether a backward reached the sparse
        # layers since the last step (gradient methods need one). It holds the engine weakly:
        # a discarded engine's hooks become no-ops instead of keeping it alive.
        self._backward_seen = False
        ref = weakref.ref(self)

        def _seen(_param: torch.Tensor) -> None:
            engine = ref()
            if engine is not None:
                engine._backward_seen = True

        self._hooks = [st.layer.weight_values.register_post_accumulate_grad_hook(_seen) for st in self._states]
        self._arm(1)

    # ------------------------------------------------------------------ public
    @property
    def layers(self) -> dict[str, BlockSparseWeight]:
        """The sparse layers the engine rewires, by module name."""
        return {st.name: st.layer for st in self._states}

    def layer_state(self, name: str) -> LayerState:
        """The engine's per-layer state (method slots such as ``fitness``, ``born``,
        ``ever_active``, ``adapt``) for the sparse layer called ``name``."""
        for st in self._states:
            if st.name == name:
                return st
        raise KeyError(f"no sparse layer named {name!r}; the engine rewires {[st.name for st in self._states]}")

    @property
    def step_count(self) -> int:
        """Calls of :meth:`step` so far."""
        return self._step

    @property
    def num_updates(self) -> int:
        """Topology updates performed so far."""
        return self._updates

    @property
    def history(self) -> list[dict]:
        """One record per update (fields: :meth:`sparsekernels.dst.history.History.records`).
        Reading it synchronises once to convert the records not yet read."""
        return self._history.records()

    def fraction_at(self, step: int) -> float:
        """The scheduled fraction at optimizer step ``step`` (before adaptive scaling)."""
        return self.schedule(step)

    def is_update_step(self, step: int) -> bool:
        """Whether ``step()`` closing optimizer step ``step`` rewires the topology."""
        if step < 1 or step % self.update_every or not self._live(step):
            return False
        return any(self.schedule.swaps(step, st.nnz, st.total_blocks) > 0 for st in self._states)

    @torch.no_grad()
    def step(self) -> None:
        """Close one optimizer step: update fitness statistics and, on update steps, rewire.

        Raises RuntimeError for gradient-based methods when no backward pass reached the
        sparse layers since the previous call, or on an update step without dense gradients.
        """
        t = self._step + 1
        if self._live(t):
            if self.method.gradient_based and not self._backward_seen:
                raise RuntimeError(
                    f"DynamicSparsity.step() with method={method_name(self.method)!r} needs gradients, but no "
                    "backward pass reached the sparse layers since the previous step(): call loss.backward() "
                    "and optimizer.step() before evo.step()"
                )
            for st in self._states:
                if self.method.needs_grad and st.layer.weight_values.grad is None:
                    raise RuntimeError(
                        f"method={method_name(self.method)!r} reads weight_values.grad, which is None for layer "
                        f"{st.name!r}: call evo.step() after optimizer.step() and before optimizer.zero_grad()"
                    )
                self.method.observe(st)
            if self.is_update_step(t):
                self._update(t)
        self._step = t
        self._backward_seen = False
        self._arm(t + 1)

    # ------------------------------------------------------------------ update
    def _live(self, step: int) -> bool:
        stop = self.schedule.stop_after
        return stop is None or step <= stop

    def _arm(self, next_step: int) -> None:
        """Request dense gradients for the forward/backward of ``next_step`` iff it updates."""
        want = self.method.needs_dense_grad and self.is_update_step(next_step)
        if want != self._armed:
            for st in self._states:
                st.layer.request_dense_grad(want)
            self._armed = want

    def _update(self, t: int) -> None:
        u = self._updates + 1
        bases = [self.schedule.swaps(t, st.nnz, st.total_blocks) for st in self._states]
        updating = [(st, k) for st, k in zip(self._states, bases) if k > 0]
        states = [st for st, _ in updating]

        if self.method.needs_dense_grad:
            for st in states:
                if st.layer.dense_grad is None:
                    raise RuntimeError(
                        f"step {t} is a topology update but sparse layer {st.name!r} has no dense gradient: "
                        "run the forward and loss.backward() of this step before evo.step() "
                        f"(method={method_name(self.method)!r} grows by the dense gradient)"
                    )
            all_reduce_mean_([st.layer.dense_grad for st in states], self.process_group)
        prune = [self._check_scores(self.method.prune_scores(st), st.nnz, "prune_scores", st) for st in states]
        grow = []
        for st in states:
            g = self.method.grow_scores(st)
            grow.append(None if g is None else self._check_scores(g, st.total_blocks, "grow_scores", st))
        if world_size(self.process_group) > 1:
            # Clones: the averaging is in place and scores may alias method state.
            prune = [p.clone() for p in prune]
            grow = [None if g is None else g.clone() for g in grow]
            all_reduce_mean_(prune + [g for g in grow if g is not None], self.process_group)

        caps, counts = self._swap_counts(updating, prune)
        results = {}
        for st, p, g, cap, k in zip(states, prune, grow, caps, counts):
            results[st.name] = self._rewire(st, p, g, cap, k, u)

        if self.adaptive and self.global_redistribution and results:
            changed = torch.stack([r[0] for r in results.values()]).sum()
            reverted = torch.stack([r[2] for r in results.values()]).sum()
            self._global_adapt = _adapt(self._global_adapt, changed, reverted, self.adapt_floor)

        rows = []
        for st in self._states:
            zero = torch.zeros((), dtype=torch.int64, device=st.born.device)
            changed, pruned_grown, reverted = results.get(st.name, (zero, zero, zero))
            rows.append(
                torch.stack(
                    [changed, pruned_grown, reverted, st.grown_total, st.pruned_grown_total, st.ever_active.sum()]
                ).to(self._global_adapt.device)
            )
        self._history.append(
            t,
            u,
            self.schedule(t),
            [(st.name, st.nnz, st.total_blocks) for st in self._states],
            torch.stack(rows),
        )
        if self.method.needs_dense_grad:
            for st in self._states:
                st.layer.request_dense_grad(False)  # also drops the consumed dense_grad
            self._armed = False
        self._updates = u

    @staticmethod
    def _check_scores(scores: torch.Tensor, n: int, what: str, st: LayerState) -> torch.Tensor:
        if not isinstance(scores, torch.Tensor) or scores.shape != (n,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"{what} of layer {st.name!r} must be a tensor of shape ({n},); got {shape}")
        return scores.detach().float()

    def _swap_counts(
        self, updating: list[tuple[LayerState, int]], prune: list[torch.Tensor]
    ) -> tuple[list[int], list[int | torch.Tensor]]:
        """Per updating layer: the Python bound on its swap count and the count itself (a
        Python int, or an int64 device scalar when it depends on device data)."""
        if not self.global_redistribution:
            caps = [k for _, k in updating]
            if not self.adaptive:
                return caps, list(caps)
            return caps, [torch.floor(st.adapt * k).long().clamp(min=1) for st, k in updating]
        caps = [min(2 * k, st.nnz, st.total_blocks - st.nnz) for st, k in updating]
        budget = sum(k for _, k in updating)
        tiny = torch.finfo(torch.float32).tiny
        ratios = torch.cat([(p / p.mean().clamp_min(tiny)).to(prune[0].device) for p in prune])
        born = torch.cat([st.born.to(ratios.device) for st, _ in updating])
        order = self._protected_last(ranked(ratios, self._generator, descending=False), born, self._updates + 1)
        order = order[:budget]
        marked = torch.zeros(ratios.shape[0], dtype=torch.bool, device=ratios.device)
        if self.adaptive:
            keep = torch.floor(self._global_adapt * budget).long().clamp(min=1)
            marked[order] = torch.arange(budget, device=ratios.device) < keep
        else:
            marked[order] = True
        per_layer = marked.split([st.nnz for st, _ in updating])
        counts = [part.sum().clamp(max=cap).to(st.born.device) for part, cap, (st, _) in zip(per_layer, caps, updating)]
        return caps, counts

    def _rewire(
        self,
        st: LayerState,
        prune_scores: torch.Tensor,
        grow_scores: torch.Tensor | None,
        cap: int,
        k: int | torch.Tensor,
        u: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Swap ``k`` (<= ``cap``) blocks of one layer; returns int64 device scalars
        (changed, pruned blocks an earlier update had grown, pruned blocks grown at ``u - 1``)."""
        layer = st.layer
        R, C = st.grid
        nnz = st.nnz
        dev = layer.weight_values.device
        gen = self._generator
        cells = cells_of_slots(st)
        old_mask = torch.zeros(R * C, dtype=torch.bool, device=dev)
        old_mask[cells] = True
        new_mask = old_mask.clone()
        first = torch.arange(cap, device=dev)

        # Prune: the k lowest-scoring active slots among the `cap` candidates, blocks still in
        # their grace period last.
        prune_slots = self._protected_last(ranked(prune_scores.to(dev), gen, descending=False), st.born, u)[:cap]
        pruned = first < k
        new_mask[cells[prune_slots]] = ~pruned

        # Grow among cells inactive before the update: the best by score, then `explore` of
        # them uniformly at random among the inactive cells not chosen yet.
        explore = 1.0 if grow_scores is None else float(self.method.explore)
        k_explore = _floor_mul(k, explore)
        if grow_scores is not None and explore < 1.0:
            best = inactive_first(ranked(grow_scores.to(dev), gen, descending=True), old_mask)[:cap]
            new_mask[best] = first < (k - k_explore)
        if explore > 0.0:
            # The k_explore free cells (inactive before, not grown above) of smallest random
            # key: a top-`cap` selection over the grid, O(R·C) instead of the O(R·C log R·C)
            # of sorting every cell (at block 1 a 3072x4000 layer has 12 M cells).
            keys = torch.rand(R * C, generator=gen, device=gen.device).to(dev)
            blocked = old_mask | new_mask
            chosen = smallest_free(keys, blocked, min(cap, R * C))
            take = (first[: chosen.numel()] < k_explore) & ~blocked[chosen]
            new_mask[chosen] = new_mask[chosen] | take

        src = layer.set_layout(BlockLayout.from_block_mask(new_mask.view(R, C), layer.block_size, nnz=nnz))
        grown = src < 0
        param = layer.weight_values
        self._remap_optimizer_state(param, src)
        if param.grad is not None:
            param.grad.copy_(gather_blocks(param.grad, src))
        before = dict(st.slots)
        for key, value in before.items():
            if value.dim() >= 1 and value.shape[0] == nnz:
                st.slots[key] = gather_blocks(value, src)
        self.method.on_grown(st, grown, before)

        born_pruned = st.born[prune_slots]
        was_grown = pruned & (born_pruned > 0)
        # "Recently grown": at one of the grace_updates + 1 updates before this one, i.e. pruned
        # at the first update that could prune it.
        reverted = pruned & (born_pruned > 0) & (born_pruned >= u - 1 - self._grace)
        changed = k.long() if isinstance(k, torch.Tensor) else torch.full((), k, dtype=torch.int64, device=dev)
        st.born = torch.where(grown, u, st.born[src.clamp(min=0)])
        st.ever_active |= new_mask
        st.grown_total += changed
        n_was_grown = was_grown.sum()
        n_reverted = reverted.sum()
        st.pruned_grown_total += n_was_grown
        if self.adaptive and not self.global_redistribution:
            st.adapt = _adapt(st.adapt, changed, n_reverted, self.adapt_floor)
        return changed, n_was_grown, n_reverted

    @property
    def _grace(self) -> int:
        return int(self.method.grace_updates)

    def _protected_last(self, order: torch.Tensor, born: torch.Tensor, u: int) -> torch.Tensor:
        """Move slots grown within the last ``grace_updates`` updates to the end of the prune
        order (stable: the score order is kept within both groups)."""
        if self._grace <= 0:
            return order
        protected = (born > 0) & (born >= u - self._grace)
        return order[torch.argsort(protected[order].to(torch.uint8), stable=True)]

    def _remap_optimizer_state(self, param: torch.Tensor, src: torch.Tensor) -> None:
        """Remap every optimizer state tensor shaped like ``param``; leave the rest."""
        state = self.optimizer.state.get(param)
        if not state:
            return
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                index = src if value.device == src.device else src.to(value.device)
                value.copy_(gather_blocks(value, index))

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to resume bit-identically, except the model (its ``layout_*``
        buffers hold the topology) and the optimizer: step and update counters, schedule,
        generator state, per-layer tracking tensors and method state, history."""
        return {
            "method": method_name(self.method),
            "step": self._step,
            "updates": self._updates,
            "update_every": self.update_every,
            "schedule": self.schedule.state_dict(),
            "global_redistribution": self.global_redistribution,
            "adaptive": self.adaptive,
            "adapt_floor": self.adapt_floor,
            "seed": self.seed,
            "generator": self._generator.get_state(),
            "global_adapt": self._global_adapt.clone(),
            "layers": {
                st.name: {
                    "nnz": st.nnz,
                    "grid": st.grid,
                    "born": st.born.clone(),
                    "ever_active": st.ever_active.clone(),
                    "adapt": st.adapt.clone(),
                    "grown_total": st.grown_total.clone(),
                    "pruned_grown_total": st.pruned_grown_total.clone(),
                    "slots": {k: v.clone() for k, v in st.slots.items()},
                }
                for st in self._states
            },
            "history": self._history.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s output (load the model's state_dict too: the
        layouts live there). The schedule and ``update_every`` are taken from the checkpoint.

        All or nothing: every entry is validated (types, shapes, ranges, the layers' names,
        block counts and grids) before any is installed; a malformed or inconsistent state
        raises ``ValueError`` naming the entry and leaves the engine as it was."""
        new = self._parse_state(state_dict)
        self.schedule = new["schedule"]
        self.update_every = new["update_every"]
        self.global_redistribution = new["global_redistribution"]
        self.adaptive = new["adaptive"]
        self.adapt_floor = new["adapt_floor"]
        self.seed = new["seed"]
        self._generator.set_state(new["generator"])
        self._global_adapt = new["global_adapt"]
        for st in self._states:
            for key, value in new["layers"][st.name].items():
                setattr(st, key, value)
        self._step = new["step"]
        self._updates = new["updates"]
        self._history = new["history"]
        self.method.configure(self)  # methods may derive settings from update_every
        self._armed = None  # force _arm to (re)set every layer's request
        self._arm(self._step + 1)

    def _parse_state(self, sd: object) -> dict:
        """Validated copies of everything :meth:`load_state_dict` installs (nothing is changed here)."""

        def bad(where: str, what: str) -> ValueError:
            return ValueError(f"DynamicSparsity state_dict[{where}] {what}")

        def count(where: str, value: object, low: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(where, f"must be an int >= {low}; got {value!r}")
            return value

        def flag(where: str, value: object) -> bool:
            if not isinstance(value, bool):
                raise bad(where, f"must be a bool; got {value!r}")
            return value

        def tensor(where: str, value: object, shape: tuple, dtypes: tuple, device) -> torch.Tensor:
            if not isinstance(value, torch.Tensor):
                raise bad(where, f"must be a tensor; got {type(value).__name__}")
            if tuple(value.shape) != shape or value.dtype not in dtypes:
                raise bad(
                    where,
                    f"must be {'/'.join(map(str, dtypes))} of shape {shape}; got {value.dtype} {tuple(value.shape)}",
                )
            return value.detach().to(device).clone()

        if not isinstance(sd, dict):
            raise TypeError(f"DynamicSparsity state_dict must be a dict; got {type(sd).__name__}")
        missing = [k for k in _STATE_KEYS if k not in sd]
        if missing:
            raise ValueError(f"DynamicSparsity state_dict is missing {missing} (not a state_dict() of this engine?)")
        name = method_name(self.method)
        if sd["method"] != name:
            raise ValueError(f"state_dict was saved with method {sd['method']!r}; this engine uses {name!r}")
        out: dict = {}
        out["step"] = count("'step'", sd["step"], 0)
        out["updates"] = count("'updates'", sd["updates"], 0)
        if out["updates"] > out["step"]:
            raise bad("'updates'", f"({out['updates']}) cannot exceed 'step' ({out['step']})")
        out["update_every"] = count("'update_every'", sd["update_every"], 1)
        sched = sd["schedule"]
        if not isinstance(sched, dict) or sorted(sched) != ["fraction", "name", "stop_after"]:
            raise bad("'schedule'", f"must be a dict with keys name, fraction, stop_after; got {sched!r}")
        try:
            out["schedule"] = FractionSchedule(sched["name"], sched["fraction"], sched["stop_after"])
            _check_stop_after(out["schedule"].stop_after, sched["stop_after"], out["update_every"])
        except (TypeError, ValueError) as err:
            raise bad("'schedule'", f"is invalid: {err}") from None
        out["global_redistribution"] = flag("'global_redistribution'", sd["global_redistribution"])
        out["adaptive"] = flag("'adaptive'", sd["adaptive"])
        # State dicts from before the option trained with the fixed floor.
        floor = _check_floor(sd.get("adapt_floor", ADAPT_FLOOR), "DynamicSparsity state_dict['adapt_floor']")
        out["adapt_floor"] = floor
        if isinstance(sd["seed"], bool) or not isinstance(sd["seed"], int):
            raise bad("'seed'", f"must be an int; got {sd['seed']!r}")
        out["seed"] = sd["seed"]
        gen = sd["generator"]
        probe = torch.Generator(device=self._generator.device)
        try:
            probe.set_state(gen)
        except (TypeError, RuntimeError, ValueError) as err:
            raise bad(
                "'generator'", f"is not a generator state of a {self._generator.device} generator: {err}"
            ) from None
        out["generator"] = gen
        out["global_adapt"] = _multiplier(
            "'global_adapt'",
            tensor("'global_adapt'", sd["global_adapt"], (), (torch.float32,), self._global_adapt.device),
            floor,
            bad,
        )

        saved = sd["layers"]
        names = [st.name for st in self._states]
        if not isinstance(saved, dict) or sorted(saved) != sorted(names):
            held = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"state_dict holds sparse layers {held}; the model has {sorted(names)}")
        out["layers"] = {}
        for st in self._states:
            try:
                st.layer.layout.validate()  # the topology lives in the model: check it was not tampered with
            except ValueError as err:
                raise ValueError(f"sparse layer {st.name!r} of the model holds an invalid layout: {err}") from None
            entry = saved[st.name]
            w = f"'layers'][{st.name!r}"
            if not isinstance(entry, dict) or any(k not in entry for k in _LAYER_KEYS):
                raise bad(w, f"must be a dict with keys {list(_LAYER_KEYS)}; got {type(entry).__name__}")
            grid = entry["grid"]
            if entry["nnz"] != st.nnz or not isinstance(grid, (tuple, list)) or tuple(grid) != st.grid:
                raise ValueError(
                    f"layer {st.name!r}: state_dict has nnz={entry['nnz']}, grid={grid}; "
                    f"the model has nnz={st.nnz}, grid={st.grid}"
                )
            dev = st.layer.weight_values.device
            R, C = st.grid
            new = {
                "born": tensor(f"{w}]['born'", entry["born"], (st.nnz,), (torch.int64,), dev),
                "ever_active": tensor(f"{w}]['ever_active'", entry["ever_active"], (R * C,), (torch.bool,), dev),
                "adapt": tensor(f"{w}]['adapt'", entry["adapt"], (), (torch.float32,), dev),
                "grown_total": tensor(f"{w}]['grown_total'", entry["grown_total"], (), (torch.int64,), dev),
                "pruned_grown_total": tensor(
                    f"{w}]['pruned_grown_total'", entry["pruned_grown_total"], (), (torch.int64,), dev
                ),
            }
            born = new["born"]
            if bool(((born < 0) | (born > out["updates"])).any()):
                raise bad(f"{w}]['born'", f"must hold update numbers in [0, {out['updates']}]; got {born.tolist()}")
            _multiplier(f"{w}]['adapt'", new["adapt"], floor, bad)
            grown, pruned_grown = int(new["grown_total"]), int(new["pruned_grown_total"])
            if not 0 <= pruned_grown <= grown:
                raise bad(f"{w}]['pruned_grown_total'", f"must be in [0, grown_total = {grown}]; got {pruned_grown}")
            slots = entry["slots"]
            if not isinstance(slots, dict) or sorted(slots) != sorted(st.slots):
                keys = sorted(slots) if isinstance(slots, dict) else type(slots).__name__
                raise bad(f"{w}]['slots'", f"must hold the method's per-slot state {sorted(st.slots)}; got {keys}")
            new["slots"] = {
                k: tensor(f"{w}]['slots'][{k!r}", v, tuple(st.slots[k].shape), (st.slots[k].dtype,), dev)
                for k, v in slots.items()
            }
            out["layers"][st.name] = new
        history = History()
        try:
            if not isinstance(sd["history"], list) or not all(isinstance(r, dict) for r in sd["history"]):
                raise TypeError("a list of dicts is expected")
            history.load_state_dict(sd["history"])
        except (TypeError, ValueError, KeyError) as err:
            raise bad("'history'", f"is not a history of this engine: {err}") from None
        out["history"] = history
        return out

    def __repr__(self) -> str:
        return (
            f"DynamicSparsity(method={method_name(self.method)!r}, layers={len(self._states)}, "
            f"update_every={self.update_every}, schedule={self.schedule!r}, "
            f"global_redistribution={self.global_redistribution}, adaptive={self.adaptive}, "
            f"adapt_floor={self.adapt_floor}, step={self._step})"
        )


_STATE_KEYS = (
    "method",
    "step",
    "updates",
    "update_every",
    "schedule",
    "global_redistribution",
    "adaptive",
    "seed",
    "generator",
    "global_adapt",
    "layers",
    "history",
)
_LAYER_KEYS = ("nnz", "grid", "born", "ever_active", "adapt", "grown_total", "pruned_grown_total", "slots")


def _check_floor(value: object, where: str) -> float:
    """The adaptive floor as a float; ``ValueError`` naming ``where`` unless a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where} must be a number in [0, 1] (the smallest adaptive multiplier); got {value!r}")
    return float(value)


def _multiplier(where: str, value: torch.Tensor, floor: float, bad) -> torch.Tensor:
    """An adaptive multiplier must lie in [floor, 1] (it starts at 1 and only shrinks to the floor)."""
    a = float(value)
    if not floor - 1e-6 <= a <= 1.0 + 1e-6:
        raise bad(where, f"must be an adaptive multiplier in [{floor}, 1]; got {a}")
    return value


def _check_stop_after(steps: int | None, given: object, update_every: int) -> None:
    """Refuse a ``stop_after`` that leaves no update step: the first update is at step
    ``update_every``, so ``stop_after < update_every`` would silently disable every update (a
    fraction such as 0.75, which the CLI's --stop-after takes, is the usual cause)."""
    if steps is not None and steps < update_every:
        hint = (
            " stop_after is a step count, not a fraction of training: multiply by the run's total steps"
            if isinstance(given, float) and 0 < given < 1
            else ""
        )
        raise ValueError(
            f"stop_after={given!r} (step {steps}) is before the first update step (update_every={update_every}): "
            f"no topology update would ever run.{hint} Pass stop_after=None to never stop"
        )


def _floor_mul(k: int | torch.Tensor, factor: float) -> int | torch.Tensor:
    """``floor(factor · k)`` for a Python int or an int64 device scalar."""
    if isinstance(k, torch.Tensor):
        return torch.floor(k * factor).long()
    return math.floor(k * factor)


def _adapt(current: torch.Tensor, changed: torch.Tensor, reverted: torch.Tensor, floor: float) -> torch.Tensor:
    """Next adaptive multiplier ``max(floor, (a + 1 − ρ) / 2)`` with the revert rate
    ``ρ = reverted / changed``: halfway from the current ``a`` towards ``1 − ρ``, so one
    update's rate (often over a handful of blocks) moves it only part of the way. Unchanged
    when nothing was swapped."""
    rate = reverted.float() / changed.clamp(min=1).float()
    return torch.where(changed > 0, (0.5 * (current + 1.0 - rate)).clamp(min=floor), current)
