"""Debug checks that synchronise with the device (off by default).

Some validations need device data on the host (e.g. that a mask really has ``nnz`` active
blocks). They are skipped in the training hot path unless requested per call
(``check=True``) or globally, with ``sparsekernels.set_debug_checks(True)`` or the
environment variable ``SPARSEKERNELS_DEBUG_CHECKS=1``.
"""

from __future__ import annotations

import os

_enabled = os.environ.get("SPARSEKERNELS_DEBUG_CHECKS", "0") not in ("", "0")


def set_debug_checks(enabled: bool) -> None:
    """Turn the synchronising debug checks on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def enabled(override: bool | None = None) -> bool:
    """Whether a check runs: the per-call ``override`` if given, else the global switch."""
    return _enabled if override is None else bool(override)
