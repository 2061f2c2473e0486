"""Write-to-a-temporary-name-then-rename, so a killed writer never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``path``, on error removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_orphaned_temporaries(folder: Path, name_prefix: str) -> int:
    """Delete temporaries of ``folder/<name_prefix>*`` left by writers that no longer run (killed).

    Only files whose writer process (the PID in their name) is gone on this machine are removed,
    so a concurrent writer's temporary is never touched. Returns how many were removed.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(f".{name_prefix}*.tmp-*"):
        try:
            pid = int(path.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _process_exists(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
