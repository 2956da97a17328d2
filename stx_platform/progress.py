"""Progress lines for long work: ``prefix: message (elapsed)``, fractions reported every 10%."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """Callable reporter; ``Progress(None)`` is silent so library code can always call it."""

    def __init__(self, prefix: str | None, stream=None):
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.prefix is None:
            return
        print(f"  {self.prefix}: {message} ({time.perf_counter() - self.t0:.0f} s)", file=self.stream, flush=True)

    def fraction(self, what: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that reports ``what`` at each further 10%."""
        last = [-1]

        def report(done: int, total: int) -> None:
            step = int(10 * done / max(total, 1))
            if step > last[0]:
                last[0] = step
                self(f"{what} {done}/{total}")
        return report
