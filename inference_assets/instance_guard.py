"""Guards around the Dagster instance for ``make run`` (``python -m inference_assets.run``).

- A fresh ``$DAGSTER_HOME`` is initialised once: the instance is opened under an exclusive lock
  on ``$DAGSTER_HOME/.instance.lock``, so two processes starting together never race to create
  its SQLite storage (the second waits, saying so).
- Runs started here carry their process identity (pid, host, process start) as tags. Before a
  step, runs with that identity on this host whose process is gone (``kill -9``, OOM) are marked
  failed and their pool slots freed, as are slots still held by finished or deleted runs. No
  daemon watches these in-process runs, so run monitoring alone never frees them.
- While a step waits for a pool slot, :class:`SlotWatch` says so on the console (pool, the
  holder's run id, pid and host), frees the slots of a holder that dies meanwhile, and stops the
  run after ``INFERENCE_SLOT_WAIT_SECONDS`` or on SIGINT/SIGTERM (Dagster's in-process executor
  defers both while it waits for a slot, so the run would wait on).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterExecutionInterruptedError, DagsterInstance, DagsterRunStatus, RunsFilter

from inference_assets.settings import VARIABLES

PID_TAG = "inference/pid"
HOST_TAG = "inference/host"
START_TAG = "inference/process_start"
SLOT_WAIT_ENV = VARIABLES["slot_wait_seconds"]
LOCK_NAME = ".instance.lock"
_UNFINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
_POLL_SECONDS = 1.0  # the watcher's look at the pools (a signal wakes it at once)
_NAP_SECONDS = 2.0  # the longest the waiting main thread sleeps between Dagster's own claim checks
_REMIND_SECONDS = 60.0


def say(message: str) -> None:
    """An INFO line on the console (stderr), whatever the Dagster console log level."""
    print(f"inference_assets - INFO - {message}", file=sys.__stderr__, flush=True)


# --- process identity ---------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as a string that differs for a later process with the same
    pid (Linux: boot id + start tick from /proc; elsewhere ``ps``); None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # /proc works: the process is gone
    except (OSError, IndexError):
        pass
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or None


def identity_tags() -> dict[str, str]:
    """Tags naming this process, for each run it starts."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: process_start(pid) or "unknown"}


def process_gone(tags: dict[str, str]) -> bool:
    """True only when the tags name a process on this host that is certainly no longer running."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    now = process_start(int(tags[PID_TAG]))
    if now is None:
        return True
    return now != "unknown" and tags.get(START_TAG) not in (None, "unknown", now)


def describe_holder(run) -> str:
    if run is None:
        return "a deleted run"
    if PID_TAG in run.tags:
        return f"make run, pid {run.tags[PID_TAG]} on host {run.tags.get(HOST_TAG, '?')}, {run.status.value}"
    return f"{run.status.value}, not started by make run"


# --- one-time initialisation -------------------------------------------------------------------

@contextmanager
def instance_lock(home: str | Path) -> Iterator[None]:
    """Exclusive lock on ``$DAGSTER_HOME/.instance.lock``; says so when it has to wait."""
    path = Path(home) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is setting up or cleaning the Dagster instance in {home}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_instance() -> DagsterInstance:
    """``$DAGSTER_HOME``'s instance, its storage created once under the lock (two processes on a
    fresh home would otherwise both run its migrations); an ephemeral one without DAGSTER_HOME."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return DagsterInstance.ephemeral()
    with instance_lock(home):
        instance = DagsterInstance.get()
        instance.run_storage, instance.event_log_storage, instance.schedule_storage  # noqa: B018 (creates them)
    return instance


# --- dead runs ---------------------------------------------------------------------------------

def _holders(instance: DagsterInstance) -> dict[str, set[str]]:
    """Run id -> pools in which it holds a slot or has a step queued or assigned."""
    storage = instance.event_log_storage
    held: dict[str, set[str]] = {}
    keys = sorted(storage.get_concurrency_keys())
    for pool, info in storage.get_concurrency_infos(keys).items():
        for run_id in {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}:
            held.setdefault(run_id, set()).add(pool)
    return held


def free_dead_runs(instance: DagsterInstance, exclude: str | None = None) -> list[str]:
    """Mark failed the unfinished runs started here (this host) whose process is gone, and free
    their pool slots and those of finished or deleted runs. Returns one line per run handled."""
    if instance.is_ephemeral:
        return []
    lines = []
    host = socket.gethostname()
    with instance_lock(instance.root_directory):
        for run in instance.get_runs(RunsFilter(statuses=_UNFINISHED, tags={HOST_TAG: host})):
            if run.run_id == exclude or not process_gone(run.tags):
                continue
            message = (f"the process of this run (pid {run.tags[PID_TAG]} on host {host}) is gone, killed "
                       f"without cleaning up: marked failed and its pool slots freed by pid {os.getpid()}")
            instance.report_run_failed(run, message=message)
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            lines.append(f"run {run.run_id} ({describe_holder(run)}): its process is gone: marked it failed"
                         " and freed its pool slots")
        if instance.event_log_storage.supports_global_concurrency_limits:
            for run_id, pools in _holders(instance).items():
                run = instance.get_run_by_id(run_id)
                if run_id != exclude and (run is None or run.is_finished):
                    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
                    lines.append(f"run {run_id} ({describe_holder(run)}) still held slots of pool(s) "
                                 f"{', '.join(sorted(pools))}: freed them")
    return lines


# --- waiting for a slot ------------------------------------------------------------------------

_INTERRUPT_SIGNAL = signal.SIGUSR1
_UNSAFE_FILES = ("sqlalchemy", "sqlite", f"{os.sep}storage{os.sep}")  # never raise or nap inside these


class SlotWatch:
    """Watches the run this process has in progress while ``materialize`` runs it (a thread).

    While one of its steps waits for a pool slot: an INFO line naming the pool and the holders
    (again when they change, and every minute); slots of a holder that dies meanwhile are freed;
    after ``limit`` seconds, or on SIGINT/SIGTERM, the run is stopped: the main thread, which
    then runs Dagster's wait loop (that loop re-checks its claim without pause, and defers both
    signals), is sent SIGUSR1; the handler raises there (never inside a step's own code, nor in
    a storage call), or, while the run just waits, naps, so that the wait takes no core.
    ``outcome`` then says why: ``("timeout", line)`` or ``("signal", signum, line)``.
    """

    def __init__(self, instance: DagsterInstance, tags: dict[str, str], limit: float):
        self.instance = instance
        self.tags = tags
        self.limit = limit
        self.outcome: tuple | None = None
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._request: BaseException | None = None
        self._nap = False  # our run waits for a slot: the main thread may nap
        self._napping = False
        self._signals: list[int] = []

    # main thread ---------------------------------------------------------------------------
    def __enter__(self) -> SlotWatch:
        self._reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._writer = writer
        self._main = threading.main_thread().ident
        self._in_main = threading.get_ident() == self._main  # signals can be handled (else: messages only)
        if self._in_main:
            self._old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._old_handler = signal.signal(_INTERRUPT_SIGNAL, self._on_request)
        self._thread = threading.Thread(target=self._watch, name="slot-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._nap = False
        self._writer.send(b"\0")  # wakes the watcher
        self._thread.join(timeout=10)
        self._request = None
        self._signals_received()
        if self._in_main:
            signal.signal(_INTERRUPT_SIGNAL, self._old_handler)
            signal.set_wakeup_fd(self._old_wakeup)
        self._reader.close()
        self._writer.close()
        if self.run_id and not self.instance.is_ephemeral:
            self.instance.event_log_storage.free_concurrency_slots_for_run(self.run_id)  # nothing left held

    def _on_request(self, _signum, frame) -> None:
        """In Dagster's plan loop, outside any step and any storage call: raise the watcher's
        request, or nap till its next look (the loop re-checks its pending claim without pause,
        which would take a core from the run it waits for). Elsewhere (an event being stored, a
        step starting): nothing, the watcher asks again shortly."""
        if self._request is None and (not self._nap or self._napping):
            return
        names = set()
        while frame is not None:
            code = frame.f_code
            if any(part in code.co_filename for part in _UNSAFE_FILES):
                return
            names.add(code.co_name)
            frame = frame.f_back
        if "inner_plan_execution_iterator" not in names or "dagster_event_sequence_for_step" in names:
            return
        request, self._request = self._request, None
        if request is not None:
            raise request
        self._napping = True
        try:
            until = time.monotonic() + _NAP_SECONDS
            while self._nap and self._request is None and time.monotonic() < until:
                time.sleep(0.05)
        finally:
            self._napping = False
            try:
                self._writer.send(b"\0")  # the watcher lets Dagster's loop look once, then naps it again
            except OSError:
                pass
        if self._request is not None:
            request, self._request = self._request, None
            raise request

    # watcher thread ------------------------------------------------------------------------
    def _our_run(self):
        if self.run_id is None:
            runs = self.instance.get_runs(RunsFilter(statuses=_UNFINISHED, tags=self.tags), limit=1)
            self.run_id = runs[0].run_id if runs else None
        return self.instance.get_run_by_id(self.run_id) if self.run_id else None

    def _signals_received(self) -> None:
        try:
            data = self._reader.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        self._signals += [s for s in data if s in (signal.SIGINT, signal.SIGTERM)]

    def _waiting(self) -> list[tuple[str, str, list[str]]]:
        """(pool, step, holder run ids) for each step of our run waiting for a slot."""
        storage = self.instance.event_log_storage
        waits = []
        infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
        for pool, info in infos.items():
            for step in info.pending_steps:
                if step.run_id == self.run_id and step.assigned_timestamp is None:
                    holders = {s.run_id for s in info.claimed_slots if s.run_id} | {
                        s.run_id for s in info.pending_steps if s.assigned_timestamp is not None}
                    waits.append((pool, step.step_key, sorted(holders - {self.run_id})))
        return waits

    def _holder_text(self, run_ids: list[str]) -> str:
        if not run_ids:
            return "held by no run (the pool's limit is 0?)"
        return "held by " + ", ".join(f"run {r} ({describe_holder(self.instance.get_run_by_id(r))})" for r in run_ids)

    def _watch(self) -> None:
        since: dict[tuple[str, str], float] = {}
        told: dict[tuple[str, str], tuple[float, list[str]]] = {}
        handled_signal = False
        next_look = 0.0
        while not self._stop.is_set():
            poke = self._in_main and self._nap and not self._napping and self._request is None
            select.select([self._reader], [], [], min(max(0.0, next_look - time.monotonic()), 0.05 if poke else 60))
            if self._stop.is_set():
                break
            try:
                signals = len(self._signals)
                self._signals_received()
                if poke:  # the main thread spins in Dagster's wait loop: let it nap
                    signal.pthread_kill(self._main, _INTERRUPT_SIGNAL)
                    self._stop.wait(0.05)
                if len(self._signals) == signals and time.monotonic() < next_look:
                    continue
                next_look = time.monotonic() + _POLL_SECONDS
                run = self._our_run()
                if run is None or self.instance.is_ephemeral:
                    continue
                waits = self._waiting()
                now = time.monotonic()
                for key in list(since):
                    if key not in {(p, s) for p, s, _ in waits}:
                        since.pop(key)
                self._nap = bool(waits)
                if not waits:
                    self._request = None  # the step got its slot: nothing to interrupt
                    continue
                if any(process_gone_or_finished(self.instance, h) for _, _, holders in waits for h in holders):
                    for line in free_dead_runs(self.instance, exclude=self.run_id):
                        say(line)
                    continue
                for pool, step, holders in waits:
                    start = since.setdefault((pool, step), now)
                    waited = now - start
                    last = told.get((pool, step))
                    limit_info = self.instance.event_log_storage.get_concurrency_info(pool).limit
                    if last is None or last[1] != holders or now - last[0] >= _REMIND_SECONDS:
                        told[(pool, step)] = (now, holders)
                        say(f"step '{step}' of run {self.run_id} is waiting for a slot of pool '{pool}' "
                            f"(limit {limit_info}), {self._holder_text(holders)}; waited {waited:.0f} s, gives "
                            f"up after {self.limit:g} s ({SLOT_WAIT_ENV})")
                    if self._signals and not handled_signal:
                        handled_signal = True
                        name = signal.Signals(self._signals[0]).name
                        line = (f"interrupted ({name}) while step '{step}' waited for a slot of pool '{pool}': "
                                f"run {self.run_id} canceled, its slots freed")
                        self.outcome = ("signal", self._signals[0], line)
                        self.instance.report_run_canceling(run, message=line)
                        self._request = DagsterExecutionInterruptedError(line)
                    elif waited >= self.limit and self.outcome is None:
                        fix = (f"if that run is dead, delete it (dagster run delete {holders[0]}) or free its slots"
                               " in the UI (Deployment > Concurrency)" if holders else
                               f"set a limit (dagster instance concurrency set {pool} 1)")
                        line = (f"waited {waited:.0f} s for a slot of pool '{pool}' {self._holder_text(holders)}: "
                                f"{fix}; or raise the pool's limit (dagster instance concurrency set {pool} N), or "
                                f"wait longer ({SLOT_WAIT_ENV}, now {self.limit:g})")
                        self.outcome = ("timeout", line)
                        self.instance.report_run_failed(run, message=line)  # the run's failure says why
                        self._request = DagsterExecutionInterruptedError(line)
                if self._in_main and self._request is not None:
                    signal.pthread_kill(self._main, _INTERRUPT_SIGNAL)
            except Exception as exc:  # the watcher must never take the run down
                say(f"slot watch: {type(exc).__name__}: {exc}")

    @property
    def signal_received(self) -> int | None:
        """SIGINT or SIGTERM, if one came while the run was watched."""
        return self._signals[0] if self._signals else None


def process_gone_or_finished(instance: DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished or process_gone(run.tags)


if __name__ == "__main__":  # `make instance`: create $DAGSTER_HOME's storage once, under the lock
    open_instance().dispose()
