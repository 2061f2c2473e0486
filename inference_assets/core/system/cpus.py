"""How many CPUs this process may use: its affinity, capped by the container's CPU limit.

``os.cpu_count()`` counts the host's cores; in a container limited to 2 CPUs on a 64-core host,
64 decoding threads and 64 torch threads would contend for 2 CPUs' worth of time (CFS throttling).
The limit is read from cgroup v2 (``cpu.max``: ``"200000 100000"`` is 2 CPUs, ``"max ..."`` none)
or cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of -1 is none), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP) -> int | None:
    """The container's CPU limit in whole CPUs (rounded up), or None when there is none."""
    v2 = _read(root / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None:
        quota, period = _read(root / "cpu.cfs_quota_us"), _read(root / "cpu.cfs_period_us")
    if quota and period and int(quota) > 0 and int(period) > 0:
        return max(1, math.ceil(int(quota) / int(period)))
    return None


def available_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may run on (its affinity), at most the container's limit; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return max(1, min(cpus, limit) if limit else cpus)


def limit_torch_threads(cpus: int | None = None) -> int:
    """Lower torch's intra-op threads to the CPUs available (torch counts the host's); returns the count."""
    import torch

    cpus = cpus or available_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()
