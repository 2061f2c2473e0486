"""The GPU path on a real CUDA device: fp32 exactness, autocast against fp32, the batch-size probe,
out-of-memory back-off, GPU assignment and a whole Dagster run on the GPU, JPEG decoding on the GPU.

Marked ``cuda`` and skipped without a CUDA device; ``make gpu-check`` runs them on a GPU machine
and puts every figure they ``record_property`` in its results (``bench/gpu_check.py``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.collection import build_collection
from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batch_size import forward_peak_bytes, probe_cuda_batch_size
from inference_assets.core.inference.batches import InferenceSettings, predict_shard
from inference_assets.core.inference.devices import assign_device
from inference_assets.core.inference.gpu_assignment import NoFreeDeviceError
from inference_assets.core.models.loading import ModelSpec, load_classifier
from inference_assets.core.storage.results import read_results

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check on a GPU machine)"),
]

CUDA = torch.device("cuda:0")
CPU = torch.device("cpu")
IMAGES = 192  # the generated collection: ImageNet-sized JPEGs, large JPEGs, PNGs, grayscale


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    build_collection(root, IMAGES, seed=0)
    return root


@pytest.fixture(scope="module")
def gpu_classifier():
    return load_classifier(ModelSpec(), CUDA)


@pytest.fixture(scope="module")
def shard(collection, tmp_path_factory, gpu_classifier):
    work = tmp_path_factory.mktemp("pixels")
    build_manifest(collection, work / "m.parquet", num_partitions=1)
    write_pixel_shard(read_manifest(work / "m.parquet"), gpu_classifier.preprocessing, work / "px", "shard-00",
                      workers=os.cpu_count() or 1)
    return read_pixel_shard(work / "px", "shard-00")


def _predict(classifier, shard, settings, out: Path, log=None):
    summary = predict_shard(classifier, shard, settings, out, "shard-00", reuse=False, log=log)
    rows = sorted(read_results(out).to_pylist(), key=lambda r: r["image_id"])
    return summary, np.array([r["class_index"] for r in rows]), np.array([r["topk_probs"][0] for r in rows])


@pytest.fixture(scope="module")
def on_cpu(classifier, shard, tmp_path_factory):
    """The reference: the same pixels through the same model on CPU, fp32."""
    return _predict(classifier, shard, InferenceSettings(CPU, batch_size=8), tmp_path_factory.mktemp("cpu") / "r.parquet")


def test_fp32_on_the_gpu_gives_the_cpu_top1(gpu_classifier, shard, on_cpu, tmp_path, record_property):
    summary, top1, probs = _predict(gpu_classifier, shard, InferenceSettings(CUDA), tmp_path / "r.parquet")
    _, cpu_top1, cpu_probs = on_cpu
    record_property("fp32_probed_batch_size", summary.batch_size)
    record_property("fp32_top1_same_as_cpu", f"{int((top1 == cpu_top1).sum())}/{len(top1)}")
    record_property("fp32_max_prob_difference_vs_cpu", float(np.abs(probs - cpu_probs).max()))
    assert summary.predicted == len(cpu_top1) and summary.failed == 0
    assert (top1 == cpu_top1).all()
    assert np.abs(probs - cpu_probs).max() < 1e-4
    assert not torch.backends.cudnn.allow_tf32  # exact fp32 (devices.exact_fp32)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_against_fp32(precision, gpu_classifier, shard, on_cpu, tmp_path, record_property):
    summary, top1, probs = _predict(gpu_classifier, shard, InferenceSettings(CUDA, precision=precision),
                                    tmp_path / "r.parquet")
    _, fp32_top1, fp32_probs = on_cpu
    agreement = float((top1 == fp32_top1).mean())
    record_property(f"{precision}_top1_agreement_with_fp32", agreement)
    record_property(f"{precision}_max_prob_difference", float(np.abs(probs - fp32_probs).max()))
    record_property(f"{precision}_probed_batch_size", summary.batch_size)
    assert summary.predicted == len(fp32_top1)
    assert agreement >= 0.95  # opt-in precisions: measured, documented, not exact


def _peak_bytes(classifier, n: int) -> int:
    pre = classifier.preprocessing
    peak = forward_peak_bytes(classifier.module, pre.normalize, pre.input_size, CUDA, n)
    assert peak is not None, f"a forward pass of {n} images ran out of memory"
    return peak


@pytest.fixture
def memory_for_images(gpu_classifier):
    """Limits this process's CUDA memory to about what ``n`` images' forward pass needs (the caching
    allocator refuses more: a real out-of-memory error), restored afterwards."""
    per_image = (_peak_bytes(gpu_classifier, 32) - _peak_bytes(gpu_classifier, 16)) / 16
    base = _peak_bytes(gpu_classifier, 16) - 16 * per_image
    total = torch.cuda.get_device_properties(CUDA).total_memory

    def limit(n: int) -> float:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction((base + n * per_image) / total, CUDA)
        return base + n * per_image

    yield limit
    torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
    torch.cuda.empty_cache()


def test_out_of_memory_backs_off_on_the_device_and_loses_no_image(gpu_classifier, shard, on_cpu, memory_for_images,
                                                                  tmp_path, record_property):
    memory_for_images(48)
    messages = []
    summary, top1, _ = _predict(gpu_classifier, shard, InferenceSettings(CUDA, batch_size=IMAGES), tmp_path / "r.parquet",
                                log=messages.append)
    record_property("oom_backoff_messages", " | ".join(messages))
    record_property("oom_backoff_final_batch_size", summary.batch_size)
    assert messages and messages[0].startswith(f"shard-00: out of memory at batch size {IMAGES}; retrying")
    assert 1 <= summary.batch_size < IMAGES
    assert summary.predicted == IMAGES - summary.failed == len(on_cpu[1])
    assert (top1 == on_cpu[1]).all()


def test_the_probe_picks_the_largest_batch_that_fits(gpu_classifier, memory_for_images, record_property):
    budget = memory_for_images(300)
    pre = gpu_classifier.preprocessing
    size = probe_cuda_batch_size(gpu_classifier.module, pre.normalize, pre.input_size, CUDA)
    record_property("probe_batch_size_under_limit_of_300_images", size)
    assert size in (32, 64, 128, 256)
    assert _peak_bytes(gpu_classifier, size) <= budget  # the chosen size runs under the limit
    torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
    unlimited = probe_cuda_batch_size(gpu_classifier.module, pre.normalize, pre.input_size, CUDA)
    record_property("probe_batch_size_whole_device", unlimited)
    assert unlimited >= size


def test_gpu_assignment_locks_a_real_device(tmp_path, record_property):
    device, lock = assign_device(torch.device("cuda"), lock_dir=tmp_path, timeout=0)
    try:
        assert device.type == "cuda" and device.index < torch.cuda.device_count()
        torch.zeros(1, device=device)  # the assigned device is usable
        record_property("assigned_device", f"{device} of {torch.cuda.device_count()}")
        if torch.cuda.device_count() == 1:
            with pytest.raises(NoFreeDeviceError, match="no free GPU"):
                assign_device(torch.device("cuda"), lock_dir=tmp_path, timeout=0)
    finally:
        lock.release()


def test_a_whole_dagster_run_on_the_gpu(image_root, tmp_path, record_property):
    import duckdb
    from dagster_duckdb import DuckDBResource

    from inference_assets.resources import DeviceResource, ModelListResource, ModelResource, PreprocessingResource
    from inference_assets_tests.conftest import KNOWN_TOP1, run_all_steps, source_resource, work_area_resource

    resources = {
        "source": source_resource(image_root=str(image_root)),
        "work_area": work_area_resource(tmp_path / "work"),
        "model": ModelResource(),
        "models": ModelListResource(),
        "device": DeviceResource(device="cuda"),
        "preprocessing": PreprocessingResource(),
        "duckdb": DuckDBResource(database=str(tmp_path / "warehouse.duckdb")),
    }
    results = run_all_steps(resources)
    predict = next(e for r in results for e in r.get_asset_materialization_events()
                   if e.asset_key.to_user_string() == "prediction_files")
    record_property("dagster_run_prediction_metadata",
                    {k: str(getattr(v, "value", v)) for k, v in predict.materialization.metadata.items()
                     if k in ("device", "batch_size", "images_per_second", "precision")})
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = dict(conn.execute(
            "SELECT i.relative_path, p.class_label FROM predictions p JOIN images i USING (image_id)").fetchall())
        devices = {d for (d,) in conn.execute("SELECT DISTINCT device FROM predictions").fetchall()}
    assert all(d.startswith("cuda") for d in devices), devices
    for relative, label in KNOWN_TOP1.items():
        assert rows[relative] == label


def test_jpeg_decoding_on_the_gpu_against_pillow(collection, gpu_classifier, record_property):
    from inference_assets.core.images.device_decoding import compare_with_pillow, decode_batch

    files = sorted(p for p in collection.rglob("*") if p.suffix in (".jpg", ".png"))
    encoded = [p.read_bytes() for p in files]
    decoded = decode_batch(encoded, CUDA)
    assert not decoded.failed
    assert all(encoded[i][:3] == b"\xff\xd8\xff" for i in decoded.on_device)
    assert all(image.device.type == "cuda" for image in decoded.images)
    agreement, gpu_pixels, pillow_pixels = compare_with_pillow(encoded, gpu_classifier.preprocessing, CUDA)
    with torch.inference_mode():
        normalize = gpu_classifier.preprocessing.normalize
        gpu_top1 = gpu_classifier.module(normalize(gpu_pixels.to(CUDA))).argmax(-1)
        pillow_top1 = gpu_classifier.module(normalize(pillow_pixels.to(CUDA))).argmax(-1)
    top1 = float((gpu_top1 == pillow_top1).float().mean())
    for name, value in {**dataclasses.asdict(agreement), "top1_agreement": top1}.items():
        record_property(f"gpu_jpeg_{name}", value)
    assert len(decoded.on_device) > 0.8 * len(files)
    assert agreement.mean_abs_difference < 3.0
    assert top1 >= 0.9
