"""Progress on stderr (no tqdm dependency): a carriage-return bar on a terminal, a plain line
every few seconds elsewhere (logs, CI, notebooks)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``epoch 3/30 [#########.........] 120/390  2345 img/s  loss 1.234  acc 56.7%``.

    On a terminal the bar is redrawn in place at most every ``interval`` seconds. When
    ``stream`` is not a terminal (a log file, CI, a notebook) a plain line is written instead,
    at most every ``line_interval`` seconds (first one ``line_interval`` after the start; the
    caller's per-epoch summary closes the epoch), so long epochs are never silent and logs
    get no carriage returns. ``enabled=True`` forces the bar, ``False`` silences both.
    :meth:`due` says whether the next :meth:`update` would write, so the caller decides how
    often to pay for reading device values.
    """

    def __init__(
        self,
        total: int,
        prefix: str = "",
        stream: TextIO | None = None,
        interval: float = 0.5,
        width: int = 24,
        enabled: bool | None = None,
        line_interval: float = 5.0,
    ) -> None:
        self.total = max(1, int(total))
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.width = width
        tty = self.stream.isatty()
        self.enabled = tty if enabled is None else enabled
        # Plain lines: only in automatic mode on a non-terminal.
        self.lines = enabled is None and not tty
        self.line_interval = line_interval
        self._last = time.perf_counter() if self.lines else 0.0
        self._drawn = False

    def due(self, step: int) -> bool:
        """Whether :meth:`update` at ``step`` would write (time passed, or the bar's last step)."""
        now = time.perf_counter()
        if self.lines:
            return step < self.total and now - self._last >= self.line_interval
        return self.enabled and (step >= self.total or now - self._last >= self.interval)

    def update(self, step: int, **stats: float | str) -> None:
        """Show progress ``step/total`` with ``stats`` (floats printed with 4 significant digits)."""
        if not self.due(step):
            return
        self._last = time.perf_counter()
        fields = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        if self.lines:
            self.stream.write(f"{self.prefix} {step}/{self.total}  {fields}\n")
            self.stream.flush()
            return
        filled = int(self.width * min(step, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.prefix} [{bar}] {step}/{self.total}  {fields}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar so the next line starts clean."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
