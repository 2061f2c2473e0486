"""With the real deploy/dagster.yaml (pools gpu and duckdb, one slot each): a run killed with
SIGKILL never blocks the next `make run`; a run waiting for a slot says so, gives up after
INFERENCE_SLOT_WAIT_SECONDS and stops on SIGINT/SIGTERM; a fresh Dagster home is set up once."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from inference_assets_tests.support.environment import (
    PROJECT_ROOT,
    SAMPLE_IMAGES,
    install_instance_config,
    pipeline_env,
)
from inference_assets_tests.end_to_end.test_crashes import _contents, _run_and_kill

RUN = [sys.executable, "-m", "inference_assets.run", "--progress", "log"]
RERUN_TIMEOUT = 240  # s: a re-run blocked by a dead run's slot fails the test instead of hanging it

# A live process holding one slot of a pool for a run of its own, tagged as `make run` tags its
# runs; prints the run id, then waits to be killed.
HOLDER = """
import sys, time
from dagster import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id
from inference_assets.instance_guard import identity_tags, open_instance
instance = open_instance()
run = DagsterRun(job_name="holder", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED, tags=identity_tags())
instance.add_run(run)
instance.event_log_storage.initialize_concurrency_limit_to_default(sys.argv[1])
assert instance.event_log_storage.claim_concurrency_slot(sys.argv[1], run.run_id, "hold").is_claimed
print(run.run_id, flush=True)
time.sleep(600)
"""


def _env(work: Path, **settings: str) -> dict[str, str]:
    """A pipeline over the 6 sample photos in 2 partitions, with deploy/dagster.yaml's instance."""
    env = install_instance_config(pipeline_env(SAMPLE_IMAGES, work))
    return {**env, "INFERENCE_PARTITIONS": "2", **settings}


def _instance(env) -> DagsterInstance:
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def _slot_holders(env, pool: str) -> set[str]:
    with _instance(env) as instance:
        info = instance.event_log_storage.get_concurrency_info(pool)
        return {s.run_id for s in info.claimed_slots if s.run_id} | {s.run_id for s in info.pending_steps}


def _cpu_seconds(pid: int) -> float | None:
    """CPU time process ``pid`` has used so far (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Process:
    """A subprocess whose stdout+stderr lines are collected on a thread."""

    def __init__(self, command, env):
        self.popen = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.popen.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if found:
                return found[0]
            if self.popen.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"no {text!r} within {timeout} s:\n" + "".join(self.lines[-30:]))

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n" + "".join(self.lines[-30:])) from None
        self._reader.join(10)
        return code, "".join(self.lines)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def holder():
    """start(env, pool) -> (process, run id) of a live process holding the pool's only slot."""
    started = []

    def start(env, pool):
        process = Process([sys.executable, "-c", HOLDER, pool], env)
        started.append(process)
        deadline = time.monotonic() + 60
        while not process.lines and time.monotonic() < deadline and process.popen.poll() is None:
            time.sleep(0.05)
        assert process.lines and process.popen.poll() is None, "".join(process.lines)
        return process, process.lines[0].strip()

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def clean_contents(tmp_path_factory):
    work = tmp_path_factory.mktemp("clean")
    done = subprocess.run(RUN, env=_env(work), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return _contents(str(work / "warehouse.duckdb"))


@pytest.mark.parametrize("stage, pool", [("prediction_files", "gpu"), ("prediction_results", "duckdb"),
                                         ("preprocessed_images", None)])
def test_sigkill_then_a_plain_rerun_frees_the_dead_runs_slots(stage, pool, clean_contents, tmp_path):
    env = _env(tmp_path)
    running, in_stage = _run_and_kill(env, stage, 0.0)
    assert running and in_stage, f"the kill missed {stage}"
    with _instance(env) as instance:
        killed = [r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED]
    assert len(killed) == 1
    if pool:
        assert _slot_holders(env, pool) == {killed[0].run_id}  # the dead run still holds the slot

    try:
        done = subprocess.run(RUN, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RERUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the re-run hung behind the killed run's slot:\n{(exc.stdout or b'')[-1500:]}") from None
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"run {killed[0].run_id} " in done.stderr and "its process is gone" in done.stderr, done.stderr[-2000:]
    assert _contents(str(tmp_path / "warehouse.duckdb")) == clean_contents

    with _instance(env) as instance:
        dead = instance.get_run_by_id(killed[0].run_id)
        assert dead.status == DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(killed[0].run_id, of_type=DagsterEventType.RUN_FAILURE).records
        assert "is gone" in failure[-1].event_log_entry.dagster_event.message
        assert instance.event_log_storage.get_concurrency_run_ids() == set()  # no slot held or queued
        assert all(r.status == DagsterRunStatus.SUCCESS for r in instance.get_runs() if r.run_id != dead.run_id)


def test_a_run_waiting_for_a_live_holder_says_so_and_gives_up(holder, tmp_path):
    env = _env(tmp_path, INFERENCE_SLOT_WAIT_SECONDS="3")
    held, holder_run = holder(env, "gpu")
    done = subprocess.run(RUN, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RERUN_TIMEOUT)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    waiting = [line for line in done.stderr.splitlines() if "is waiting for a slot of pool 'gpu'" in line]
    assert waiting and " INFO " in waiting[0] and f"held by run {holder_run} " in waiting[0], done.stderr[-3000:]
    assert f"pid {held.popen.pid} on host" in waiting[0]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("step 'preprocess + predict (2 partitions, one run)' failed (run "), last
    assert re.search(f"waited [3-9] s for a slot of pool 'gpu' held by run {holder_run} ", last), last
    assert f"dagster run delete {holder_run}" in last and "INFERENCE_SLOT_WAIT_SECONDS" in last
    assert _slot_holders(env, "gpu") == {holder_run}  # the live holder keeps its slot; ours is gone
    with _instance(env) as instance:
        ours = [r for r in instance.get_runs() if r.run_id != holder_run][0]
        assert ours.status == DagsterRunStatus.FAILURE and ours.tags["inference/pid"].isdigit()
    assert held.popen.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_waiting_run_stops_on_a_signal_and_frees_its_slots(signum, holder, tmp_path):
    env = _env(tmp_path)
    _, holder_run = holder(env, "gpu")
    run = Process(RUN, env)
    run.wait_for(f"is waiting for a slot of pool 'gpu' (limit 1), held by run {holder_run}", timeout=180)
    time.sleep(1)  # well inside Dagster's wait loop
    cpu = _cpu_seconds(run.popen.pid)
    time.sleep(3)
    if cpu is not None:  # waiting takes no core (Dagster's own wait loop re-checks without pause)
        assert _cpu_seconds(run.popen.pid) - cpu < 1.5, "the waiting run kept a core busy"
    sent = time.monotonic()
    run.popen.send_signal(signum)
    code, output = run.finish(timeout=15)
    took = time.monotonic() - sent
    assert code == 128 + signum, output[-2000:]
    assert took < 10, took
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signum.name}) while step 'prediction_files' waited for a slot of pool 'gpu'"), last
    assert _slot_holders(env, "gpu") == {holder_run}
    with _instance(env) as instance:
        ours = [r for r in instance.get_runs() if r.run_id != holder_run and r.job_name != "holder"]
        assert [r.status for r in ours] == [DagsterRunStatus.CANCELED, DagsterRunStatus.SUCCESS]  # newest first
        assert instance.event_log_storage.get_concurrency_run_ids() == {holder_run}


def test_two_runs_at_once_on_a_fresh_dagster_home_both_succeed(clean_contents, tmp_path):
    """Two `make run` in one clone at once: one fresh instance (and its pools), one work folder,
    one DuckDB file. Both end with the clean result; no traceback (migrations, pixel shards)."""
    env = _env(tmp_path)
    assert [p.name for p in Path(env["DAGSTER_HOME"]).iterdir()] == ["dagster.yaml"]
    runs = [Process(RUN, env), Process(RUN, env)]
    outcomes = [run.finish(timeout=RERUN_TIMEOUT) for run in runs]
    for code, output in outcomes:
        assert code == 0 and "Traceback" not in output, output[-3000:]
        assert "images seen: 6   predicted: 6   failed: 0" in output
    assert _contents(str(tmp_path / "warehouse.duckdb")) == clean_contents
    with _instance(env) as instance:
        assert sorted(r.status.value for r in instance.get_runs()) == ["SUCCESS"] * 6
        assert instance.event_log_storage.get_concurrency_run_ids() == set()


# Opens `make run`'s Dagster instance once the file argv[1] exists (imports done before).
OPEN_INSTANCE = """
import sys, time
from pathlib import Path
from inference_assets.run import _instance
print("ready", flush=True)
while not Path(sys.argv[1]).exists():
    time.sleep(0.002)
with _instance() as instance:
    print("runs:", len(instance.get_runs()), flush=True)
"""


def test_processes_opening_a_fresh_dagster_home_at_the_same_moment_set_it_up_once(tmp_path):
    env = _env(tmp_path)
    go = tmp_path / "go"
    processes = [Process([sys.executable, "-c", OPEN_INSTANCE, str(go)], env) for _ in range(3)]
    for process in processes:
        process.wait_for("ready", timeout=120)  # imports done: all three poll for `go`
    go.touch()
    outputs = [process.finish(timeout=120) for process in processes]
    for code, output in outputs:
        assert code == 0 and "Traceback" not in output, output[-3000:]
        assert output.strip().endswith("runs: 0"), output
    assert any("waiting for another process that is setting up" in output for _, output in outputs)
