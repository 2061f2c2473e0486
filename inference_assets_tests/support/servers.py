"""Real servers for the tests, started on 127.0.0.1: an S3-compatible server (moto's server
mode) and a PostgreSQL server (Debian's postgresql package; skipped with the reason when it
is not installed)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(ready, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


class S3Server:
    """moto's S3 server in its own process; ``env`` holds the AWS_* variables that reach it."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "moto.log", "wb")
        moto_server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT
        )

        def answers() -> bool:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return True
            except Exception:
                return self.process.poll() is not None  # died: stop waiting, fail below

        _wait_until(answers, "moto S3 server")
        if self.process.poll() is not None:
            raise RuntimeError(f"moto S3 server exited: see {workdir / 'moto.log'}")
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, user ``postgres``)."""

    def __init__(self, workdir: Path):
        initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        if not (initdb and pg_ctl):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (.ci/run does)")
        self.port = free_port()
        if os.geteuid() == 0:  # the postgres user must reach its folders: not under pytest's root-only tmp
            workdir = Path(tempfile.mkdtemp(prefix="inference-assets-pg-"))
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.sockets = workdir / "pgsock"
        self.sockets.mkdir()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's postgres user
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            self._as_user = [runuser, "-u", "postgres", "--"]
            shutil.chown(workdir, "postgres")
            shutil.chown(self.sockets, "postgres")
        self.log = workdir / "postgres.log"
        self._run([initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off -c full_page_writes=off"
        self._run([pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"])
        self.pg_ctl = pg_ctl
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def stop(self) -> None:
        subprocess.run([*self._as_user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        if self._as_user:
            shutil.rmtree(self.workdir, ignore_errors=True)
