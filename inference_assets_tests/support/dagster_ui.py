"""``dagster dev`` (webserver + daemon, as ``make dev`` runs it) on a free local port, driven
through Dagster's GraphQL API with the mutations the UI itself sends.

Used by the tests (test_ui.py, test_backfills.py, test_dg.py) and by tools/screenshots.py (``make screenshots``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .environment import PROJECT_ROOT

DAGSTER = str(Path(sys.executable).parent / "dagster")
DG = str(Path(sys.executable).parent / "dg")  # dagster-dg-cli: the project's settings are pyproject.toml's [tool.dg]
LOCATION = "inference_assets"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # a Definitions object's repository
ASSET_JOB = "__ASSET_JOB"  # the job the UI launches asset runs in

WORKSPACE_STATUS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
# The UI's "Skip" on its first-visit "Join the Dagster community" dialog (shown until this is set).
SET_NUX_SEEN = "mutation { setNuxSeen }"
# The UI's mutation for "Materialize" (ui-core LAUNCH_PIPELINE_EXECUTION_MUTATION).
LAUNCH_RUN = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on UnauthorizedError { message }
  }
}
"""
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status tags { key value } } ... on PythonError { message } }
}
"""
# The UI's "Launch backfill" (ui-core LAUNCH_PARTITION_BACKFILL_MUTATION).
LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}
"""
BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterDev:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1 with ``env`` (its DAGSTER_HOME, INFERENCE_*);
    ``command``: another way to start it that takes ``--host`` and ``--port``, e.g. ``[DG, "dev"]``."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None):
        self.env, self.log_path = env, log_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/graphql"
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*(command or [DAGSTER, "dev", "-w", "workspace.yaml"]), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the webserver, daemon, code servers, runs
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
        assert not reply.get("errors"), reply["errors"]
        return reply["data"]

    def wait_until_loaded(self, timeout: float = 180) -> None:
        """Until the code location has loaded (fails with the server's log if it does not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"dagster dev exited ({self.process.returncode}):\n{self.log_tail()}"
            try:
                entries = self.graphql(WORKSPACE_STATUS)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entries = []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                assert not errors, errors
                return
            time.sleep(1)
        raise AssertionError(f"dagster dev did not load the code location in {timeout}s:\n{self.log_tail()}")

    def skip_welcome_dialog(self) -> None:
        """What the first visitor's "Skip" does, so pages open without the dialog over them."""
        assert self.graphql(SET_NUX_SEEN)["setNuxSeen"] is True

    def launch_run(self, assets: list[str], partition: str | None = None) -> str:
        """Materialize ``assets`` (one partition of them, if given) as the UI's "Materialize" does."""
        tags = [{"key": "dagster/from_ui", "value": "true"}]
        if partition is not None:
            tags.append({"key": "dagster/partition", "value": partition})
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "pipelineName": ASSET_JOB,
                "assetSelection": [{"path": name.split("/")} for name in assets],
                "assetCheckSelection": [],
            },
            "mode": "default",
            "runConfigData": "{}",
            "executionMetadata": {"tags": tags},
        }
        result = self.graphql(LAUNCH_RUN, {"executionParams": params})["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        result = self.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert result["__typename"] == "Run", result
        return result["status"]

    def wait_for_run(self, run_id: str, timeout: float = 300) -> str:
        """The run's final status (the daemon takes it off the queue, a run worker runs it)."""
        deadline = time.monotonic() + timeout
        while (status := self.run_status(run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {status} after {timeout}s:\n{self.log_tail()}")
            time.sleep(1)
        return status

    def launch_backfill(self, params: dict) -> str:
        result = self.graphql(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert result["__typename"] == "PartitionBackfill", result
        return result["status"]

    def stop(self) -> None:
        """Interrupt dagster dev, then kill whatever is left of its process group."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        finally:
            self._log.close()


@contextmanager
def dagster_dev(env: dict[str, str], log_path: Path, command: list[str] | None = None):
    server = DagsterDev(env, log_path, command)
    try:
        yield server
    finally:
        server.stop()


def asset_graph_url(base_url: str, groups: list[str]) -> str:
    """The global asset lineage with ``groups`` expanded (the UI collapses groups by default)."""
    return f"{base_url}/asset-groups?expanded=" + ",".join(f"global@global:{g}" for g in groups)
