"""Run one peer as its own process session; time it and sample the memory of every process in it.

Peak memory is the largest sum, over the session's processes, of their proportional set size
(PSS: shared pages split between the processes sharing them, so a process tree is not counted
twice), sampled every second from ``/proc``. A peer that starts helpers (Ray's raylet and
workers, DataLoader workers) is measured with them. Leftover processes of the session are
killed when the peer ends, so one peer cannot slow the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Measured:
    returncode: int
    wall_seconds: float  # process start to exit, interpreter start-up included
    peak_pss_mib: float
    peak_rss_mib: float  # the same sum over RSS (counts shared pages once per process)
    report: dict = field(default_factory=dict)  # the peer's last JSON line
    output_tail: str = ""


def _session_processes(sid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            pids.append(int(entry.name))
    return pids


def _memory_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def run_measured(command: list[str], env: dict[str, str], cwd: Path, timeout: float, log: Path) -> Measured:
    start = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        peak = [0, 0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pss = rss = 0
                for pid in _session_processes(process.pid):
                    p, r = _memory_kib(pid)
                    pss, rss = pss + p, rss + r
                peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
                done.wait(1.0)  # reading smaps_rollup of processes with many mappings is not free

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = -9
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        for pid in _session_processes(process.pid):  # helpers left behind (Ray's workers, say)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if returncode == -9:
            process.kill()
            process.wait()
    text = log.read_text(errors="replace")
    report = {}
    for line in reversed(text.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            try:
                report = json.loads(line)
                break
            except ValueError:
                continue
    return Measured(returncode, wall, peak[0] / 1024, peak[1] / 1024, report, text[-3000:])
