"""The pipeline's predictions equal a plain reference: the model's own transform + fp32 forward."""

import dataclasses
import time

import numpy as np
import pyarrow.compute as pc
import pytest
import timm
import torch
from PIL import Image

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, classify, predict_shard
from inference_assets.core.storage.results import read_results

from inference_assets_tests.conftest import KNOWN_TOP1

CPU = torch.device("cpu")


@pytest.fixture
def shard(image_root, tmp_path, classifier):
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    entries = read_manifest(tmp_path / "m.parquet")
    write_pixel_shard(entries, classifier.preprocessing, tmp_path / "px", "shard-00", workers=2)
    return read_pixel_shard(tmp_path / "px", "shard-00")


def _reference_probs(classifier, uris):
    """timm's own transform on the PIL image, then a plain fp32 forward pass."""
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(classifier.module))
    batch = torch.stack([transform(Image.open(uri).convert("RGB")) for uri in uris])
    with torch.no_grad():
        return classifier.module(batch).softmax(-1)


@pytest.mark.fast
def test_top1_and_probabilities_equal_the_reference(shard, classifier, tmp_path):
    out = tmp_path / "results.parquet"
    summary = predict_shard(classifier, shard, InferenceSettings(CPU, batch_size=4, top_k=5), out, "shard-00")
    assert (summary.predicted, summary.failed) == (6, 0)
    results = read_results(out).to_pylist()
    reference = _reference_probs(classifier, [r["uri"] for r in results])
    for row, probs in zip(results, reference):
        top = probs.topk(5)
        assert row["class_index"] == int(top.indices[0])
        assert row["topk_indices"] == top.indices.tolist()
        assert np.allclose(row["topk_probs"], top.values.numpy(), atol=1e-4)
        assert row["class_label"] == classifier.labels[row["class_index"]]
        assert row["model"] == "tf_efficientnet_lite0" and row["precision"] == "fp32"


@pytest.mark.fast
def test_known_photos_are_predicted_as_themselves(shard, classifier, tmp_path):
    out = tmp_path / "results.parquet"
    predict_shard(classifier, shard, InferenceSettings(CPU), out, "shard-00")
    by_path = {r["uri"]: r for r in read_results(out).to_pylist()}
    for relative, label in KNOWN_TOP1.items():
        row = next(r for uri, r in by_path.items() if uri.endswith(relative))
        assert row["class_label"] == label, relative
    assert next(r for u, r in by_path.items() if u.endswith("coffee.jpg"))["confidence"] > 0.9


def test_batch_size_does_not_change_results(shard, classifier):
    rows = shard.ok_rows
    one = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=1)))
    many = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=64)))
    assert np.concatenate([b[0] for b in one]).tolist() == rows.tolist()
    assert np.array_equal(np.concatenate([b[2] for b in one]), np.concatenate([b[2] for b in many]))
    assert np.allclose(np.concatenate([b[1] for b in one]), np.concatenate([b[1] for b in many]), atol=1e-5)


@pytest.mark.fast
def test_non_contiguous_rows_and_channels_last(shard, classifier):
    rows = shard.ok_rows[::2]
    plain = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=8)))
    cl = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=8, channels_last=True)))
    assert plain[0][0].tolist() == rows.tolist()
    assert np.array_equal(plain[0][2][:, 0], cl[0][2][:, 0])
    assert np.allclose(plain[0][1], cl[0][1], atol=1e-4)


def _by_hand(classifier, shard, rows, mirrored: bool) -> np.ndarray:
    """Every class's probability of the shard's stored pixels, computed by hand (mirrored left-right)."""
    x = classifier.preprocessing.normalize(torch.from_numpy(shard.read_rows(int(rows[0]), int(rows[-1]) + 1)))
    x = x[torch.from_numpy(rows - rows[0])]
    with torch.inference_mode():
        return classifier.probabilities(classifier.module(x.flip(-1) if mirrored else x)).numpy()


@pytest.mark.fast
@pytest.mark.parametrize("tta", [None, "flip"])
def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(shard, classifier, tta):
    rows = shard.ok_rows
    parts = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=4, top_k=3, tta=tta)))
    assert np.concatenate([p[0] for p in parts]).tolist() == rows.tolist()
    top_probs, top_indices = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    every = np.concatenate([p[4] for p in parts])
    assert every.shape == (len(rows), len(classifier.labels)) and every.dtype == np.float32
    assert all(p[3] is None for p in parts)  # single-label: no positives
    plain, mirror = _by_hand(classifier, shard, rows, False), _by_hand(classifier, shard, rows, True)
    assert not np.allclose(plain, mirror, atol=1e-3)  # the mirror image gives other probabilities
    assert np.allclose(every, (plain + mirror) / 2 if tta == "flip" else plain, atol=1e-5)
    assert np.allclose(every.sum(axis=1), 1, atol=1e-5)
    for row, probs, indices in zip(every, top_probs, top_indices):
        assert np.allclose(probs, np.sort(row)[::-1][:3], atol=1e-6)  # the row's top 3, most probable first
        assert np.allclose(row[indices], probs, atol=1e-6)  # and the indices name them


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_and_keeps_confident_top1(shard, classifier, precision):
    rows = shard.ok_rows
    fp32 = list(classify(classifier, shard, rows, InferenceSettings(CPU)))[0]
    low = list(classify(classifier, shard, rows, InferenceSettings(CPU, precision=precision)))[0]
    confident = fp32[1][:, 0] > 0.9
    assert confident.sum() >= 2
    assert np.array_equal(fp32[2][confident, 0], low[2][confident, 0])
    assert np.all((low[1] >= 0) & (low[1] <= 1))


@pytest.mark.fast
def test_decode_failures_become_failure_rows(image_root, tmp_path, classifier):
    (image_root / "espresso" / "empty.jpg").write_bytes(b"")
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    write_pixel_shard(read_manifest(tmp_path / "m.parquet"), classifier.preprocessing, tmp_path / "px", "s", 2)
    out = tmp_path / "r.parquet"
    summary = predict_shard(classifier, read_pixel_shard(tmp_path / "px", "s"), InferenceSettings(CPU), out, "s")
    assert (summary.predicted, summary.failed) == (6, 1)
    failed = [r for r in read_results(out).to_pylist() if r["status"] == "failed"]
    assert failed[0]["uri"].endswith("empty.jpg") and failed[0]["stage"] == "decode" and failed[0]["error"]
    assert failed[0]["class_label"] is None


@pytest.mark.fast
def test_batches_skip_failed_rows_between_good_ones(image_root, tmp_path, classifier):
    for i in range(3):
        (image_root / f"broken_{i}.jpg").write_bytes(b"\x89PNG garbage")
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    write_pixel_shard(read_manifest(tmp_path / "m.parquet"), classifier.preprocessing, tmp_path / "px", "s", 2)
    shard = read_pixel_shard(tmp_path / "px", "s")
    rows = shard.ok_rows
    assert len(rows) == 6 and rows[-1] - rows[0] + 1 > len(rows)  # failed rows sit among the good ones
    batched = list(classify(classifier, shard, rows, InferenceSettings(CPU, batch_size=4)))
    single = [next(classify(classifier, shard, np.array([r]), InferenceSettings(CPU))) for r in rows]
    assert np.concatenate([b[0] for b in batched]).tolist() == rows.tolist()
    assert np.array_equal(np.concatenate([b[2] for b in batched]), np.concatenate([s[2] for s in single]))


@pytest.mark.fast
def test_predictions_are_reused_per_image_and_redone_when_settings_change(image_root, tmp_path, classifier):
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    entries = read_manifest(tmp_path / "m.parquet")
    px, out = tmp_path / "px", tmp_path / "r.parquet"
    settings = InferenceSettings(CPU)
    write_pixel_shard(entries.slice(0, 4), classifier.preprocessing, px, "s", 2)
    first = predict_shard(classifier, read_pixel_shard(px, "s"), settings, out, "s")
    assert (first.predicted, first.reused) == (4, 0)
    before = {r["image_id"]: r for r in read_results(out).to_pylist()}

    unchanged = predict_shard(classifier, read_pixel_shard(px, "s"), settings, out, "s")
    assert (unchanged.predicted, unchanged.reused, unchanged.rewritten) == (0, 4, False)

    write_pixel_shard(entries, classifier.preprocessing, px, "s", 2)  # two new images
    grown = predict_shard(classifier, read_pixel_shard(px, "s"), settings, out, "s")
    assert (grown.predicted, grown.reused) == (2, 4)
    after = {r["image_id"]: r for r in read_results(out).to_pylist()}
    assert len(after) == 6 and all(after[i] == row for i, row in before.items())  # carried over unchanged

    other_precision = predict_shard(classifier, read_pixel_shard(px, "s"), InferenceSettings(CPU, precision="bf16"), out, "s")
    assert (other_precision.predicted, other_precision.reused) == (6, 0)


class _RunsOutOfMemoryAbove(torch.nn.Module):
    """Wraps a model; raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, module, limit):
        super().__init__()
        self.module, self.limit, self.sizes = module, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test: batch {x.shape[0]} > {self.limit})")
        return self.module(x)


@pytest.mark.fast
def test_out_of_memory_halves_the_batch_and_loses_no_image(shard, classifier, tmp_path):
    import dataclasses

    wrapped = _RunsOutOfMemoryAbove(classifier.module, limit=2)
    tight = dataclasses.replace(classifier, module=wrapped)
    messages = []
    out = tmp_path / "oom.parquet"
    summary = predict_shard(tight, shard, InferenceSettings(CPU, batch_size=8), out, "s", log=messages.append)
    assert (summary.predicted, summary.batch_size) == (6, 1)  # 6 -> 3 -> 1
    assert messages == [
        "s: out of memory at batch size 6; retrying with batch size 3",
        "s: out of memory at batch size 3; retrying with batch size 1",
    ]
    assert wrapped.sizes == [6, 3, 1, 1, 1, 1, 1, 1]  # after backing off, every batch stays small
    reference = tmp_path / "ref.parquet"
    predict_shard(classifier, shard, InferenceSettings(CPU, batch_size=8), reference, "s")
    got = {r["image_id"]: r["class_index"] for r in read_results(out).to_pylist()}
    want = {r["image_id"]: r["class_index"] for r in read_results(reference).to_pylist()}
    assert got == want


def test_a_single_image_that_does_not_fit_is_an_error(shard, classifier, tmp_path):
    import dataclasses

    hopeless = dataclasses.replace(classifier, module=_RunsOutOfMemoryAbove(classifier.module, limit=0))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predict_shard(hopeless, shard, InferenceSettings(CPU, batch_size=4), tmp_path / "x.parquet", "s")
    assert not (tmp_path / "x.parquet").exists()  # nothing half-written


class _Slow(torch.nn.Module):
    """The model, taking at least ``seconds`` per batch."""

    def __init__(self, module, seconds):
        super().__init__()
        self.module, self.seconds = module, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.module(x)


def test_time_per_stage_is_reported_where_it_was_spent(shard, classifier, tmp_path, monkeypatch):
    import dataclasses

    # 6 images at batch 2: 3 batches; reading a batch takes at least 0.3 s (the first read is
    # waited for in full: nothing runs before it), the model at least 0.1 s per batch
    real_read = type(shard).read_rows
    monkeypatch.setattr(type(shard), "read_rows", lambda self, a, b: (time.sleep(0.3), real_read(self, a, b))[1])
    slow = dataclasses.replace(classifier, module=_Slow(classifier.module, 0.1))
    summary = predict_shard(slow, shard, InferenceSettings(CPU, batch_size=2), tmp_path / "r.parquet", "s")
    stages = summary.stages
    assert summary.predicted == 6
    assert stages.model >= 0.3 and stages.read >= 0.3
    assert 0 < stages.write < stages.model
    assert stages.read + stages.model + stages.write <= summary.seconds
    assert set(stages.as_dict()) == {"read", "model", "write"}


@pytest.mark.fast
def test_result_rows_written_a_batch_at_a_time_land_in_few_row_groups_in_order(tmp_path, monkeypatch):
    """A row group per batch of 8 made DuckDB's refresh hold about 25 KB a row (+480 MiB at 20,000 images)."""
    import pyarrow.parquet as pq

    from inference_assets.core.storage import results

    def write(path, batches, reused_first=None):
        with results.ResultFileWriter(path, "shard-00", "m", "w", "cpu", "fp32", 2, "px", "id", ["a", "b", "c"]) as writer:
            if reused_first is not None:
                writer.write_rows(reused_first)
            for batch in range(batches):
                ids = [f"img-{batch:03d}-{i}" for i in range(8)]
                writer.write_predictions(ids, ids, ids, np.array([[batch % 3, (batch + 1) % 3]] * 8),
                                         np.array([[0.7, 0.2]] * 8, dtype=np.float32), ["a", "b", "c"])
        return pq.ParquetFile(path)

    whole = write(tmp_path / "whole.parquet", 125)  # 1000 rows
    assert whole.metadata.num_rows == 1000 and whole.metadata.num_row_groups == 1
    monkeypatch.setattr(results, "ROW_GROUP_ROWS", 64)
    earlier = read_results(tmp_path / "whole.parquet").slice(0, 40)
    split = write(tmp_path / "split.parquet", 25, reused_first=earlier)  # 40 reused + 200 predicted
    sizes = [split.metadata.row_group(i).num_rows for i in range(split.metadata.num_row_groups)]
    assert sum(sizes) == 240 and max(sizes) <= 64 + 8 and len(sizes) == 4, sizes
    ids = read_results(tmp_path / "split.parquet").column("image_id").to_pylist()
    assert ids == earlier.column("image_id").to_pylist() + [f"img-{b:03d}-{i}" for b in range(25) for i in range(8)]

    with pytest.raises(RuntimeError), results.ResultFileWriter(
        tmp_path / "failed.parquet", "shard-00", "m", "w", "cpu", "fp32", 2, "px", "id", ["a", "b", "c"]
    ) as writer:
        writer.write_rows(earlier)
        raise RuntimeError("killed mid-partition")
    assert not (tmp_path / "failed.parquet").exists()  # nothing half-written appears


@pytest.mark.fast
def test_a_steps_partitions_are_predicted_into_their_files_with_totals_labels_and_samples(
    image_root, tmp_path, classifier
):
    from inference_assets.core.inference.partitions import predict_partitions
    from inference_assets.core.storage.layout import Layout
    from inference_assets.core.storage.shared_storage import SharedStorage
    from inference_assets.core.storage.work_area import WorkArea

    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=2)
    entries = read_manifest(tmp_path / "m.parquet")
    keys = sorted(set(entries.column("partition").to_pylist()))
    area = WorkArea(Layout(tmp_path / "work"), SharedStorage(None, tmp_path / "work"))
    shards = []
    for key in keys:
        part = entries.filter(pc.equal(entries["partition"], key))
        write_pixel_shard(part, classifier.preprocessing, area.pixel_dir("p"), key, workers=2)
        shards.append((key, read_pixel_shard(area.pixel_dir("p"), key)))
    lines = []
    settings = InferenceSettings(CPU)
    first = predict_partitions(classifier, shards, settings, area, "m", info=lambda line, _: lines.append(line))
    assert first.predicted == entries.num_rows and first.reused == first.failed == 0
    assert sum(first.labels.values()) == entries.num_rows and len(first.samples) == min(5, entries.num_rows)
    assert [row[0] for row in first.per_partition()] == keys and len(lines) == len(keys)
    assert area.result_files("m", keys) == [area.results_dir("m") / f"{key}.parquet" for key in keys]
    assert first.batch_size == 8 and first.forward_seconds > 0
    again = predict_partitions(classifier, shards, settings, area, "m")
    assert again.reused == entries.num_rows and again.predicted == 0 and again.batch_size is None
    assert again.labels == first.labels  # counted from the files, reused rows included


# torch.compile: the same results as eager (its speed is measured by `make bench`, never here)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_compiled_model_gives_the_eager_results_and_pads_the_last_batch(image_root, tmp_path, classifier):
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    write_pixel_shard(read_manifest(tmp_path / "m.parquet"), classifier.preprocessing, tmp_path / "px", "shard-00", 2)
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    ten_classes = dataclasses.replace(classifier.info, labels=tuple(str(i) for i in range(10)))
    tiny = dataclasses.replace(classifier, module=TinyNet().eval(), info=ten_classes)
    rows = shard.ok_rows  # 6 images, batch 4: the last batch has 2 and is padded to 4

    def run(compile_: bool):
        settings = InferenceSettings(CPU, batch_size=4, top_k=3, compile=compile_)
        parts = list(classify(tiny, shard, rows, settings))
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    eager_probs, eager_indices = run(False)
    compiled_probs, compiled_indices = run(True)
    assert compiled_probs.shape == (6, 3)
    assert (compiled_indices == eager_indices).all()
    assert np.allclose(compiled_probs, eager_probs, atol=1e-5)
