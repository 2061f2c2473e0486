"""Concurrent steps get different GPUs: real processes locking devices in a shared lock folder.

Runs on CPU: the lock logic takes the device count as an argument, so two "GPUs" are two
lock files. The processes report over pipes, so no test sleeps to wait for another.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
from dagster import build_init_resource_context

from inference_assets.core.errors import ConfigError
from inference_assets.core.inference.devices import assign_device
from inference_assets.core.inference.gpu_assignment import (
    DEFAULT_LOCK_DIR,
    NoFreeDeviceError,
    acquire_device,
    lock_path,
)
from inference_assets.definitions import default_resources
from inference_assets.resources import DeviceResource
from inference_assets.settings import Settings, for_deployment

pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`

# Takes a device and says which; releases it when told, then stays alive until stdin closes.
HOLDER = """
import sys
from inference_assets.core.inference.gpu_assignment import acquire_device, describe_holder
lock_dir, count, timeout, run_id = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lock = acquire_device(count, lock_dir, timeout=timeout, holder=describe_holder(run_id), poll=0.02,
                      on_wait=lambda line: print("waiting", line, flush=True))
print("got", lock.index, flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


class Holder:
    """A separate process that takes one of ``count`` devices, as a run's ``prediction_files`` step does."""

    def __init__(self, lock_dir, count=2, timeout=30.0, run_id="run-x"):
        self.run_id = run_id
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock_dir), str(count), str(timeout), run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.process.pid

    def line(self) -> str:
        line = self.process.stdout.readline().strip()
        assert line, f"holder {self.pid} exited without a word (rc {self.process.wait()})"
        return line

    def index(self) -> int:
        """Blocks until the process holds a device; its index."""
        line = self.line()
        assert line.startswith("got "), line
        return int(line.split()[1])

    def release(self) -> None:
        self.process.stdin.write("release\n")
        assert self.line() == "released"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def lock_dir(tmp_path):
    return tmp_path / "gpu-locks"


@pytest.fixture
def holders():
    started = []

    def start(*args, **kwargs) -> Holder:
        started.append(Holder(*args, **kwargs))
        return started[-1]

    yield start
    for holder in started:
        holder.stop()


def test_concurrent_processes_get_distinct_devices(lock_dir, holders):
    first, second = holders(lock_dir, run_id="run-a"), holders(lock_dir, run_id="run-b")  # both racing
    assert {first.index(), second.index()} == {0, 1}


def test_a_third_process_waits_then_gets_the_freed_device(lock_dir, holders):
    first, second = holders(lock_dir, run_id="run-a"), holders(lock_dir, run_id="run-b")
    index_of = {first.index(): first, second.index(): second}
    third = holders(lock_dir, run_id="run-c")
    waiting = third.line()
    assert waiting.startswith("waiting all 2 GPUs are taken (cuda-0: pid=")
    assert f"pid={first.pid} " in waiting and f"pid={second.pid} " in waiting and "run=run-a" in waiting
    assert str(lock_dir) in waiting
    index_of[1].release()  # the device is free again while its process lives on
    assert third.index() == 1
    assert f"pid={third.pid} " in lock_path(lock_dir, 1).read_text()


def test_a_killed_holder_frees_its_device(lock_dir, holders):
    first, second = holders(lock_dir), holders(lock_dir)
    index_of = {first.index(): first, second.index(): second}
    index_of[0].process.kill()  # SIGKILL: no release, no cleanup, only the kernel closing its files
    index_of[0].process.wait()
    with acquire_device(2, lock_dir, timeout=0, holder="pid=this-test host=here") as lock:
        assert lock.index == 0
        assert lock_path(lock_dir, 0).read_text() == "pid=this-test host=here\n"  # the dead holder's line is gone


def test_the_lock_file_names_its_holder_and_is_emptied_on_release(lock_dir, holders):
    holder = holders(lock_dir, count=1, run_id="9f1c2e")
    assert holder.index() == 0
    text = lock_path(lock_dir, 0).read_text()
    assert text.startswith(f"pid={holder.pid} host={socket.gethostname()} run=9f1c2e since=")
    assert text.count("\n") == 1
    holder.release()
    assert lock_path(lock_dir, 0).read_text() == ""


def test_timeout_is_one_line_naming_the_lock_dir_and_the_holders(lock_dir, holders):
    first, second = holders(lock_dir, run_id="run-a"), holders(lock_dir, run_id="run-b")
    first.index(), second.index()
    waits = []
    with pytest.raises(NoFreeDeviceError) as err:
        acquire_device(2, lock_dir, timeout=0.3, on_wait=waits.append, poll=0.05)
    message = str(err.value)
    assert message.startswith(f"no free GPU after 0.3s: all 2 device locks in '{lock_dir}' are held (cuda-0: pid=")
    assert f"pid={first.pid} " in message and f"pid={second.pid} " in message and "run=run-b" in message
    assert "'gpu' pool's limit at the number of GPUs (2)" in message and "\n" not in message
    assert len(waits) == 1 and waits[0].startswith("all 2 GPUs are taken")


def test_in_one_process_each_lock_is_a_different_device(lock_dir):
    with acquire_device(2, lock_dir, timeout=0) as a, acquire_device(2, lock_dir, timeout=0) as b:
        assert (a.index, b.index) == (0, 1)
        with pytest.raises(NoFreeDeviceError):
            acquire_device(2, lock_dir, timeout=0)
    assert not a.held
    with acquire_device(2, lock_dir, timeout=0) as again:
        assert again.index == 0
    again.release()  # a second release does nothing


def test_assign_device_locks_only_cuda_without_an_index(lock_dir):
    device, lock = assign_device(torch.device("cuda"), count=2, lock_dir=lock_dir, timeout=0)
    other, other_lock = assign_device(torch.device("cuda"), count=2, lock_dir=lock_dir, timeout=0)
    assert (device, other) == (torch.device("cuda:0"), torch.device("cuda:1"))
    lock.release()
    other_lock.release()
    assert assign_device(torch.device("cuda:1"), count=2, lock_dir=lock_dir) == (torch.device("cuda:1"), None)
    assert assign_device(torch.device("cpu"), count=2, lock_dir=lock_dir) == (torch.device("cpu"), None)
    with pytest.raises(ConfigError, match="no CUDA device is visible: check CUDA_VISIBLE_DEVICES"):
        assign_device(torch.device("cuda"), count=0, lock_dir=lock_dir)


def test_an_unusable_lock_dir_is_a_one_line_config_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=f"GPU lock folder '{tmp_path}/a-file/locks' cannot be created .*: set "
                       "gpu_lock_dir to a machine-local folder") as error:
        acquire_device(1, tmp_path / "a-file" / "locks", timeout=0)
    assert error.value.settings == ("gpu_lock_dir",)
    # the deployment names the environment variable too
    assert "set INFERENCE_GPU_LOCK_DIR (device.gpu_lock_dir) to a machine-local folder" in str(for_deployment(error.value))


def test_lock_dir_comes_from_the_settings(monkeypatch, tmp_path):
    assert DEFAULT_LOCK_DIR == "/tmp/inference_assets-gpu-locks"
    assert Settings.from_environment({}).gpu_lock_dir == DEFAULT_LOCK_DIR
    settings = Settings.from_environment({"INFERENCE_GPU_LOCK_DIR": str(tmp_path / "locks")})
    assert default_resources(settings)["device"].gpu_lock_dir == str(tmp_path / "locks")
    with acquire_device(1, settings.gpu_lock_dir, timeout=0) as lock:
        assert lock.path == tmp_path / "locks" / "cuda-0.lock"


def test_device_resource_takes_a_gpu_when_acquired_and_frees_it_at_teardown(monkeypatch, tmp_path):
    """On CPU ``auto`` takes no lock; on a CUDA machine it takes GPU 0 of an empty lock folder."""
    resource = DeviceResource(device="auto", gpu_lock_dir=str(tmp_path / "locks"))
    context = build_init_resource_context()
    resource.setup_for_execution(context)
    assert not (tmp_path / "locks").exists()  # setting up (as preprocessing does) takes no GPU
    device = resource.acquire_device()
    if torch.cuda.is_available():
        assert device == torch.device("cuda:0") and resource.acquire_device() == device
        assert lock_path(tmp_path / "locks", 0).read_text().startswith(f"pid={os.getpid()} ")
    else:
        assert device == torch.device("cpu") and not (tmp_path / "locks").exists()
    resource.teardown_after_execution(context)
    if torch.cuda.is_available():
        assert lock_path(tmp_path / "locks", 0).read_text() == ""
