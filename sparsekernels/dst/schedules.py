"""Update-fraction schedules: how large a share of each layer's active blocks an update swaps.

With ``α = fraction`` and ``T = stop_after`` (optimizer steps), the fraction at step ``t`` is

* ``"constant"``: ``α``
* ``"cosine"``:   ``α · (1 + cos(π t / T)) / 2``  (RigL, Evci et al. 2020, eq. 1)
* ``"linear"``:   ``α · (1 − t / T)``

and 0 for ``t > T`` (the topology is frozen after ``stop_after``). ``"cosine"`` and
``"linear"`` anneal to zero at ``T`` and therefore need ``stop_after``; ``"constant"`` without
``stop_after`` never stops.

A layer with ``nnz`` active blocks out of ``R·C`` then swaps
``k = min(int(fraction(t) · nnz), R·C − nnz)`` blocks: a Python int computed from the step
and the layer's shape alone, so the update needs no value from the device.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float, raising unless it is a number in the open interval (0, 1)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise TypeError(f"fraction must be a float in (0, 1); got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1) (the share of active blocks swapped per update); got {fraction}")
    return float(fraction)


def check_stop_after(stop_after: float | int | None) -> int | None:
    """``stop_after`` floored to an int step count (None: never stop)."""
    if stop_after is None:
        return None
    if isinstance(stop_after, bool) or not isinstance(stop_after, (int, float)) or not math.isfinite(stop_after):
        raise TypeError(f"stop_after must be a step count (int or float) or None; got {stop_after!r}")
    if stop_after < 0:
        raise ValueError(f"stop_after must be >= 0 (a step count); got {stop_after}")
    return int(math.floor(stop_after))


class FractionSchedule:
    """``schedule(t) -> fraction`` for an optimizer step ``t`` (1-based count of steps taken).

    Args:
        name: one of :data:`SCHEDULES`.
        fraction: ``α`` in (0, 1), the fraction at ``t = 0``.
        stop_after: step ``T`` after which the fraction is 0; required by ``"cosine"`` and
            ``"linear"``; a float is floored.
    """

    def __init__(self, name: str, fraction: float, stop_after: float | int | None = None) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {name!r}")
        self.name = name
        self.fraction = check_fraction(fraction)
        self.stop_after = check_stop_after(stop_after)
        if name != "constant" and self.stop_after is None:
            raise ValueError(
                f"schedule={name!r} anneals the fraction to zero at stop_after: pass stop_after "
                "(the step after which the topology freezes) or use schedule='constant'"
            )

    def __call__(self, step: int) -> float:
        T = self.stop_after
        if T is not None and step > T:
            return 0.0
        if self.name == "constant":
            return self.fraction
        if T == 0:
            return 0.0
        progress = step / T
        if self.name == "cosine":
            return self.fraction * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.fraction * (1.0 - progress)

    def swaps(self, step: int, nnz: int, total_blocks: int) -> int:
        """Blocks a layer with ``nnz`` active of ``total_blocks`` swaps at ``step`` (Python int)."""
        return max(0, min(int(self(step) * nnz), total_blocks - nnz))

    def state_dict(self) -> dict:
        return {"name": self.name, "fraction": self.fraction, "stop_after": self.stop_after}

    def __repr__(self) -> str:
        return f"FractionSchedule({self.name!r}, fraction={self.fraction}, stop_after={self.stop_after})"
