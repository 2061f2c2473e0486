"""`make run`'s live progress: the display hook in core.system.progress, and the bars in a real terminal."""

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from inference_assets.core.system.progress import Progress, progress_display

from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env


class FakeDisplay:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.updates, self.closed = label, total, [], 0

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def displays():
    """Installs a display factory for the test; the list of displays it opened, in order."""
    opened: list[FakeDisplay] = []

    def factory(label: str, total: int) -> FakeDisplay:
        opened.append(FakeDisplay(label, total))
        return opened[-1]

    with progress_display(factory):
        yield opened


@pytest.mark.fast
def test_every_advance_reaches_the_display_and_the_stage_closes_it(displays):
    now = [100.0]
    lines: list[str] = []
    with Progress("predictions", 6, lines.append, every=5.0, clock=lambda: now[0]) as progress:
        for _ in range(3):
            now[0] += 1.0
            progress.advance(2)
        assert [(d.label, d.total, d.updates, d.closed) for d in displays] == [("predictions", 6, [2, 2, 2], 0)]
    assert displays[0].closed == 1
    assert lines == []  # the log is throttled as before (3 s < every 5 s); the display throttles itself
    progress.close()  # closing again, or advancing after, does nothing more
    progress.advance(1)
    assert (displays[0].updates, displays[0].closed) == ([2, 2, 2], 1)


@pytest.mark.fast
def test_a_failing_stage_still_closes_its_display(displays):
    with pytest.raises(RuntimeError):
        with Progress("preprocessing", 10, lambda line: None) as progress:
            progress.advance(3)
            raise RuntimeError("decoder crashed")
    assert (displays[0].updates, displays[0].closed) == ([3], 1)


@pytest.mark.fast
def test_advances_from_many_threads_all_reach_the_display(displays):
    with Progress("preprocessing", 8000, lambda line: None, every=0.0) as progress:
        threads = [threading.Thread(target=lambda: [progress.advance(1) for _ in range(1000)]) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert progress.done == sum(displays[0].updates) == 8000


@pytest.mark.fast
def test_no_display_outside_the_block():
    opened = []
    with progress_display(lambda label, total: opened.append(label) or FakeDisplay(label, total)):
        with progress_display(None):  # nested: none inside, the outer one back after
            Progress("inner", 1, lambda line: None).close()
        Progress("outer", 1, lambda line: None).close()
    Progress("after", 1, lambda line: None).close()
    assert opened == ["outer"]


@pytest.mark.fast
def test_the_bar_factory_draws_done_total_rate_and_eta(tmp_path, monkeypatch):
    from inference_assets.core.system.progress import progress_bars

    log = tmp_path / "stderr.txt"
    with open(log, "w", encoding="utf-8") as stderr, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stderr)
        with progress_bars() as bar_for, progress_display(bar_for):
            with Progress("predictions", 6, lambda line: None) as progress:
                progress.advance(6)
    drawn = log.read_bytes().decode()
    assert "\r" in drawn and re.search(r"predictions: 100%\|.*\| 6/6 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s\]", drawn)


@pytest.mark.parametrize("columns, rows", [(100, 30), (100, 0), (0, 0)])
@pytest.mark.fast
def test_the_bar_is_drawn_whatever_size_the_terminal_reports(columns, rows, monkeypatch):
    """A terminal may report no height (tqdm would then draw an empty line) or no size at all."""
    from inference_assets.core.system.progress import progress_bars

    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    with open(terminal, "w", encoding="utf-8") as stderr, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stderr)
        with progress_bars() as bar_for, progress_display(bar_for):
            with Progress("predictions", 6, lambda line: None) as progress:
                progress.advance(6)
    try:
        drawn = read_until_closed(controller, timeout=30).decode()  # the terminal side is closed already
    finally:
        os.close(controller)
    bar = re.search(r"predictions: 100%\|(█+)\| 6/6", drawn)
    assert bar, repr(drawn)
    assert len(bar.group(1)) == 10 if columns == 0 else columns - 60 < len(bar.group(1)) < columns - 30


# --- make run in a terminal ---------------------------------------------------------------


def run_in_terminal(args, env, columns=120, rows=40, timeout=300) -> tuple[int, str]:
    """Run ``args`` with stdin, stdout and stderr on a new pseudo-terminal; its exit code and all it wrote."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        args, env=env, cwd=PROJECT_ROOT, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True
    )
    os.close(terminal)  # the child holds the only copies now: reading ends when it (and its children) exit
    try:
        output = read_until_closed(controller, timeout)
    except TimeoutError as exc:
        process.kill()
        raise AssertionError(f"{args} still running after {timeout}s:\n{exc}") from None
    finally:
        os.close(controller)
    return process.wait(timeout=60), output.decode("utf-8", errors="replace")


def read_until_closed(controller: int, timeout: float) -> bytes:
    """All that was written to a pseudo-terminal, read from its controlling side until no process
    has the terminal side open any more."""
    output = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([controller], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError(output.decode(errors="replace")[-3000:])
        try:
            chunk = os.read(controller, 65536)
        except OSError as exc:  # Linux: EIO once no process has the terminal open any more
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:  # other systems: an ordinary end of file
            break
        output += chunk
    return bytes(output)


def test_make_run_in_a_terminal_shows_progress_bars_and_no_info_log(image_root, tmp_path):
    env = pipeline_env(image_root, tmp_path)
    env.pop("COLUMNS", None)  # the width comes from the terminal itself
    returncode, output = run_in_terminal([sys.executable, "-m", "inference_assets.run"], env)
    assert returncode == 0, output[-3000:]
    assert "log: warnings and errors only here; the full log: the Dagster UI (make dev) or --log-level INFO" in output
    assert "==> preprocess + predict" in output and "checks: 6/6 passed" in output
    for label in ("preprocessing", "predictions"):  # redrawn in place, full width, ending at 6/6
        assert re.search(rf"\r{label}: 100%\|█{{50,}}\| 6/6 \[\d\d:\d\d<00:00, +[\d.]+img/s\]", output), output
    assert "images seen: 6   predicted: 6   failed: 0" in output
    uncolored = re.sub(r"\x1b\[[0-9;]*m", "", output)  # Dagster colours its console log in a terminal
    assert " - INFO - " not in uncolored and "manifest: 6 images" not in uncolored  # warnings and errors only
