"""Structure-convergence records, kept on the device and converted to Python lazily.

Each topology update appends one record per call: Python numbers known on the host (step,
update index, scheduled fraction, layer sizes) and one int64 device tensor ``[L, 6]`` of
per-layer counts (:data:`STAT_FIELDS`). Nothing is read back during training; reading
``DynamicSparsity.history`` converts every pending record with a single device-to-host copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Columns of a record's stats tensor, per layer.
STAT_FIELDS = ("changed", "pruned_grown", "reverted", "grown_total", "pruned_grown_total", "ever_active")


@dataclass
class _Pending:
    step: int
    update: int
    fraction: float
    layers: list[tuple[str, int, int]]  # (name, nnz, total blocks)
    stats: torch.Tensor  # int64 [L, len(STAT_FIELDS)] on the device


class History:
    """The list of update records (see :meth:`records` for their fields)."""

    def __init__(self) -> None:
        self._done: list[dict] = []
        self._pending: list[_Pending] = []

    def append(
        self, step: int, update: int, fraction: float, layers: list[tuple[str, int, int]], stats: torch.Tensor
    ) -> None:
        self._pending.append(_Pending(step, update, fraction, layers, stats))

    def records(self) -> list[dict]:
        """One dict per update (converting pending ones: one host synchronisation)::

            {"step": t, "update": u, "fraction": scheduled fraction,
             "churn": blocks swapped / active blocks, over all sparse layers,
             "layers": {name: {
                 "changed": blocks pruned (= grown) in this layer,
                 "fraction": changed / nnz,
                 "pruned_grown": pruned blocks that an earlier update had grown,
                 "reverted": pruned blocks grown at the previous update,
                 "grown_later_pruned": of all blocks grown so far, the share pruned again since,
                 "ever_active": share of the layer's grid cells active at some point so far
                                (in-time over-parameterisation)}}}
        """
        if self._pending:
            flat = torch.cat([p.stats.reshape(-1) for p in self._pending]).cpu().tolist()
            offset = 0
            for p in self._pending:
                width = len(STAT_FIELDS)
                rows = [flat[offset + i * width : offset + (i + 1) * width] for i in range(len(p.layers))]
                offset += width * len(p.layers)
                self._done.append(_record(p, rows))
            self._pending.clear()
        return list(self._done)

    def state_dict(self) -> list[dict]:
        return self.records()

    def load_state_dict(self, records: list[dict]) -> None:
        self._done = [dict(r) for r in records]
        self._pending = []

    def __len__(self) -> int:
        return len(self._done) + len(self._pending)


def _record(p: _Pending, rows: list[list[int]]) -> dict:
    layers = {}
    changed_total = nnz_total = 0
    for (name, nnz, total), row in zip(p.layers, rows):
        s = dict(zip(STAT_FIELDS, row))
        layers[name] = {
            "changed": s["changed"],
            "fraction": s["changed"] / nnz if nnz else 0.0,
            "pruned_grown": s["pruned_grown"],
            "reverted": s["reverted"],
            "grown_later_pruned": s["pruned_grown_total"] / s["grown_total"] if s["grown_total"] else 0.0,
            "ever_active": s["ever_active"] / total if total else 0.0,
        }
        changed_total += s["changed"]
        nnz_total += nnz
    return {
        "step": p.step,
        "update": p.update,
        "fraction": p.fraction,
        "churn": changed_total / nnz_total if nnz_total else 0.0,
        "layers": layers,
    }
