"""CPUs available to a process: its affinity, capped by a container's cgroup CPU limit."""

import os

import pytest
import torch

from inference_assets.core.system.cpus import available_cpus, cgroup_cpu_limit, limit_torch_threads

pytestmark = pytest.mark.fast


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000"}, None),  # v2, no limit
        ({"cpu.max": "200000 100000"}, 2),  # v2, 2 CPUs
        ({"cpu.max": "150000 100000"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, no limit
        ({}, None),  # no cgroup files
    ],
)
def test_the_cgroup_limit(tmp_path, files, limit):
    assert cgroup_cpu_limit(_cgroup(tmp_path, files)) == limit


def test_available_cpus_is_the_affinity_capped_by_the_limit(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup(tmp_path / "none", {"cpu.max": "max 100000"})) == affinity
    assert available_cpus(_cgroup(tmp_path / "one", {"cpu.max": "100000 100000"})) == 1
    assert available_cpus(_cgroup(tmp_path / "many", {"cpu.max": "6400000 100000"})) == affinity  # 64 > affinity


def test_torch_threads_are_lowered_to_the_cpus_available_never_raised():
    before = torch.get_num_threads()
    try:
        assert limit_torch_threads(1) == 1 == torch.get_num_threads()
        assert limit_torch_threads(before + 8) == 1  # a higher count does not raise it
    finally:
        torch.set_num_threads(before)


def test_the_preprocessing_resource_decodes_with_one_thread_per_available_cpu():
    from inference_assets.resources import PreprocessingResource

    assert PreprocessingResource().workers == available_cpus()
    assert PreprocessingResource(decode_workers=3).workers == 3
