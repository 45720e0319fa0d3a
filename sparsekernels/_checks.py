"""Debug checks that synchronise with the device (off by default).

Some validations need device data on the host (e.g. that a mask really has ``nnz`` active
blocks, or that a layer's layout buffers, edited in place, are still a valid layout). They
are skipped in the training hot path unless requested per call (``check=True``) or globally,
with ``sparsekernels.set_debug_checks(True)``, the context manager
``with sparsekernels.debug_checks(): ...``, or the environment variable
``SPARSEKERNELS_DEBUG_CHECKS=1`` (read at import). In debug-checks mode every layout is
validated (:meth:`sparsekernels.BlockLayout.validate`) before every kernel, backward kernels
included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_enabled = os.environ.get("SPARSEKERNELS_DEBUG_CHECKS", "0") not in ("", "0")


def set_debug_checks(enabled: bool) -> None:
    """Turn the synchronising debug checks on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def debug_checks(enabled: bool = True) -> Iterator[None]:
    """Debug checks on (or off) inside the ``with`` block; the previous setting is restored."""
    global _enabled
    saved = _enabled
    _enabled = bool(enabled)
    try:
        yield
    finally:
        _enabled = saved


def enabled(override: bool | None = None) -> bool:
    """Whether a check runs: the per-call ``override`` if given, else the global switch."""
    return _enabled if override is None else bool(override)
