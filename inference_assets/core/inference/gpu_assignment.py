"""Which GPU a step gets: one of a machine's N devices, held by an exclusive file lock.

Concurrent ``prediction_files`` steps on one machine are separate processes (each run the queue
starts is one). Each takes an exclusive, non-blocking ``flock`` on ``<lock dir>/cuda-<i>.lock``,
trying ``i = 0 .. N-1`` in order, so two steps never land on the same GPU; when every device
is taken the step waits (polling, with a timeout) and logs who holds what. The holder's PID,
host and run id are written into the lock file it holds.

The kernel drops a ``flock`` when the last file descriptor on it is closed, so a process that
dies (even ``kill -9``) frees its device at once: lock files never need cleaning up. They are
never deleted (deleting one would let two processes lock two different files of one name).

The lock folder is the ``gpu_lock_dir`` setting, else ``/tmp/inference_assets-gpu-locks``. It
must be machine-local, since it stands for that machine's GPUs, and writable by every run
process; and every process sharing it must see the same GPUs in the same order (the same
``CUDA_VISIBLE_DEVICES``), as ``i`` is the index among the visible devices. On Kubernetes each
step's pod asks for ``nvidia.com/gpu: 1``: the kubelet picks the GPU, the pod sees one device
and its own ``/tmp``, so the lock is always free there and costs nothing.

A process forked while holding a lock (not one started with ``exec``) holds it too until it
exits; the step starts no such process after taking its GPU.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from inference_assets.core.errors import ConfigError

DEFAULT_LOCK_DIR = "/tmp/inference_assets-gpu-locks"


class NoFreeDeviceError(RuntimeError):
    """Every device stayed locked by other processes for longer than we were willing to wait."""


def describe_holder(run_id: str | None = None) -> str:
    """This process, as written into the lock file it holds: ``pid=… host=… [run=…] since=…``."""
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = f" run={run_id}" if run_id else ""
    return f"pid={os.getpid()} host={socket.gethostname()}{run} since={since}"


def lock_path(lock_dir: str | os.PathLike, index: int) -> Path:
    return Path(lock_dir) / f"cuda-{index}.lock"


class DeviceLock:
    """Device ``index`` held by this process until :meth:`release` (or the end of a ``with``)."""

    def __init__(self, index: int, path: Path, fd: int, holder: str):
        self.index = index
        self.path = path
        self.holder = holder
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empty the lock file and unlock it; calling it again does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # a free device's file names nobody
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DeviceLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DeviceLock(index={self.index}, path={str(self.path)!r}, held={self.held})"


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ConfigError(
            f"GPU lock file {str(path)!r} cannot be opened ({exc.strerror}): set gpu_lock_dir "
            "to a machine-local folder every run process can write",
            settings=["gpu_lock_dir"],
        ) from None


def _try_lock(lock_dir: Path, index: int, holder: str) -> DeviceLock | None:
    path = lock_path(lock_dir, index)
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another process holds it
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder + "\n").encode(), 0)
    except BaseException:
        os.close(fd)  # closing the descriptor drops the lock
        raise
    return DeviceLock(index, path, fd, holder)


def read_holder(lock_dir: str | os.PathLike, index: int) -> str:
    """What device ``index``'s lock file says about its holder (one line)."""
    try:
        text = lock_path(lock_dir, index).read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    return " ".join(text.split()) or "holder not recorded"


def holders(lock_dir: str | os.PathLike, indexes) -> str:
    """``cuda-0: pid=… host=…; cuda-1: …`` for the given devices."""
    return "; ".join(f"cuda-{i}: {read_holder(lock_dir, i)}" for i in indexes)


def acquire_device(
    count: int,
    lock_dir: str | os.PathLike | None = None,
    timeout: float = 3600.0,
    on_wait: Callable[[str], None] | None = None,
    holder: str | None = None,
    poll: float = 0.25,
    report_every: float = 60.0,
) -> DeviceLock:
    """Lock the first free one of devices ``0 .. count-1``; while all are held, wait up to ``timeout``.

    ``on_wait`` gets a line naming the holders when waiting starts and every ``report_every``
    seconds after. Past the timeout, :class:`NoFreeDeviceError` names the lock folder and the
    holders. ``holder`` is written into the lock file (default: this process's PID and host).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    lock_dir = Path(lock_dir or DEFAULT_LOCK_DIR)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"GPU lock folder {str(lock_dir)!r} cannot be created ({exc.strerror}): set gpu_lock_dir "
            "to a machine-local folder every run process can write",
            settings=["gpu_lock_dir"],
        ) from None
    holder = " ".join((holder or describe_holder()).split())
    deadline = time.monotonic() + timeout
    next_report = 0.0
    while True:
        for index in range(count):
            lock = _try_lock(lock_dir, index, holder)
            if lock is not None:
                return lock
        now = time.monotonic()
        if now >= deadline:
            raise NoFreeDeviceError(
                f"no free GPU after {timeout:g}s: all {count} device locks in {str(lock_dir)!r} are held "
                f"({holders(lock_dir, range(count))}): let those steps finish or stop them, and keep the "
                f"'gpu' pool's limit at the number of GPUs ({count})"
            )
        if on_wait is not None and now >= next_report:
            on_wait(
                f"all {count} GPUs are taken ({holders(lock_dir, range(count))}); waiting up to "
                f"{deadline - now:.0f}s more for one to be released (locks in {str(lock_dir)!r})"
            )
            next_report = now + report_every
        time.sleep(min(poll, max(0.0, deadline - now)))
