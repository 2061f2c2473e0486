"""Progress of a long stage, logged every few seconds: images done / total, images/s, ETA.

A process may also show each stage live (``make run`` draws a progress bar in a terminal): within
``with progress_display(factory):`` every new ``Progress`` opens ``factory(label, total)``, tells it
of every ``advance`` and closes it when the stage is done. ``progress_bars()`` gives such a factory
of tqdm bars on the terminal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Display(Protocol):
    """A live view of one stage, e.g. a terminal progress bar; it throttles its own redraws."""

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


DisplayFactory = Callable[[str, int | None], Display]  # (label, total or None) -> display

_display_factory: DisplayFactory | None = None


def rate(count: int, seconds: float) -> float:
    """Images per second, to two decimals (0.0 when no time was measured): what logs and metadata show."""
    return round(count / seconds, 2) if seconds > 0 else 0.0


@contextmanager
def progress_display(factory: DisplayFactory | None) -> Iterator[None]:
    """Within the block, each new ``Progress`` also drives ``factory(label, total)`` (None: none)."""
    global _display_factory
    previous, _display_factory = _display_factory, factory
    try:
        yield
    finally:
        _display_factory = previous


class Progress:
    """Counts work as it is done and hands a one-line status to ``log`` at most every ``every`` seconds.

    ``advance(n)`` is cheap and thread-safe, so it can be called per image or per batch.
    ``close()`` (or leaving ``with Progress(...)``) ends the stage's display, if one is installed.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        label: str,
        total: int | None,  # None: not known in advance (a listing)
        log: Callable[[str], None],
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.log, self.every, self.clock = label, total, log, every, clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._lock = threading.Lock()
        self._display = _display_factory(label, total) if _display_factory is not None else None

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._display is not None:
                self._display.update(n)
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last = now
            line = self.status(now)
        self.log(line)

    def close(self) -> None:
        with self._lock:
            display, self._display = self._display, None
        if display is not None:
            display.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def status(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            return f"{self.label}: {self.done} images, {rate:.1f} img/s"
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {self.done}/{self.total} images ({percent:.0f} %), {rate:.1f} img/s, ETA {eta}"


@contextmanager
def progress_bars() -> Iterator[DisplayFactory]:
    """One tqdm bar per long stage on stderr: done/total, %, images/s, elapsed<ETA.

    The bars write to a duplicate of stderr's file descriptor, taken before any run: while a step
    runs, Dagster points fd 2 at the step's compute log (and copies that back with ``tail``), which
    would put every redraw in the log the UI shows, and late.
    """
    from tqdm import tqdm

    stderr_copy = os.dup(sys.stderr.fileno())
    with open(stderr_copy, "w", buffering=1, encoding=sys.stderr.encoding, errors="replace") as terminal:
        try:
            size = os.get_terminal_size(terminal.fileno())
        except OSError:  # not a terminal (--progress bar into a file): tqdm's default width
            size = os.terminal_size((0, 0))
        if size.columns > 0 and size.lines > 0:  # follow the terminal as it is resized
            shape = {"dynamic_ncols": True}
        elif size.columns > 0:  # a pty that reports no height (tqdm would then draw nothing)
            shape = {"ncols": size.columns, "nrows": 20}
        else:  # a pty nobody sized
            shape = {}
        yield lambda label, total: tqdm(total=total, desc=label, unit="img", file=terminal, mininterval=0.2, **shape)
