"""Progress of a long stage, logged every few seconds: images done / total, images/s, ETA."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Progress:
    """Counts work as it is done and hands a one-line status to ``log`` at most every ``every`` seconds.

    ``advance(n)`` is cheap and thread-safe, so it can be called per image or per batch.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        label: str,
        total: int,
        log: Callable[[str], None],
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.log, self.every, self.clock = label, total, log, every, clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last = now
            line = self.status(now)
        self.log(line)

    def status(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {self.done}/{self.total} images ({percent:.0f} %), {rate:.1f} img/s, ETA {eta}"
