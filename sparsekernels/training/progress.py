"""A one-line carriage-return progress bar on stderr (no tqdm dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``epoch 3/30 [#########.........] 120/390  2345 img/s  loss 1.234  acc 56.7%``.

    Drawn only when ``stream`` is a terminal (logs redirected to a file get the per-epoch
    summary lines instead of thousands of carriage returns). Redraws at most every
    ``interval`` seconds, so the caller decides how often to pay for reading device values:
    :meth:`due` says whether the next :meth:`update` would draw.
    """

    def __init__(
        self,
        total: int,
        prefix: str = "",
        stream: TextIO | None = None,
        interval: float = 0.5,
        width: int = 24,
        enabled: bool | None = None,
    ) -> None:
        self.total = max(1, int(total))
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.width = width
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._drawn = False

    def due(self, step: int) -> bool:
        """Whether :meth:`update` at ``step`` would draw (time passed, or the last step)."""
        return self.enabled and (step >= self.total or time.perf_counter() - self._last >= self.interval)

    def update(self, step: int, **stats: float | str) -> None:
        """Draw progress ``step/total`` with ``stats`` (floats printed with 4 significant digits)."""
        if not self.due(step):
            return
        self._last = time.perf_counter()
        filled = int(self.width * min(step, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        fields = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        self.stream.write(f"\r{self.prefix} [{bar}] {step}/{self.total}  {fields}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar so the next line starts clean."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
