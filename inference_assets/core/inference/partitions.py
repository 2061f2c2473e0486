"""Predicting a step's partitions: the runtime that runs the forward pass (``runtime_for_partitions``:
PyTorch, or a converted network checked against it on the partitions' own images), then each
partition's pixel shard through the classifier into its result file (through the work area, so the
shared mirror is kept), with what a step reports about them: totals, where the time went, a row
per partition, the most frequent labels, a few samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import torch

from inference_assets.core.images.pixel_store import PixelShard
from inference_assets.core.inference.batches import (
    InferenceSettings,
    ShardPredictionSummary,
    StageSeconds,
    batch_size_used,
    check_batch,
    predict_shard,
    torch_only_reason,
)
from inference_assets.core.models.converted_models import CALIBRATION_IMAGES, RuntimeChoice, choose_runtime
from inference_assets.core.models.loading import Classifier
from inference_assets.core.storage.results import read_results
from inference_assets.core.storage.work_area import WorkArea

SAMPLES = 5  # predicted rows kept as examples


def runtime_for_partitions(
    classifier: Classifier,
    shards: list[tuple[str, PixelShard]],
    runtime: str,
    converted_dir: Path,
    settings: InferenceSettings,
) -> RuntimeChoice:
    """What runs the forward pass over ``shards`` for the ``runtime`` asked (``torch``, ``auto``, a
    converted runtime): a converted network is compared with PyTorch on the shards' first stored
    images, and ``openvino-int8`` calibrates on the first ``CALIBRATION_IMAGES`` (read only when it
    quantizes). PyTorch as it is when asked for, or when no image was decoded (nothing to convert for)."""
    examples = None if runtime == "torch" else check_batch((shard for _, shard in shards), classifier)
    if examples is None:
        return RuntimeChoice(classifier, "torch" if classifier.is_torch else "onnxruntime", None, None, False)

    def calibration() -> torch.Tensor:
        return check_batch((shard for _, shard in shards), classifier, CALIBRATION_IMAGES, normalize=False)

    return choose_runtime(classifier, runtime, converted_dir, examples, threads=torch.get_num_threads(),
                          device=settings.device, torch_only=torch_only_reason(settings), calibration=calibration)


@dataclass
class PartitionsPrediction:
    summaries: dict[str, ShardPredictionSummary] = field(default_factory=dict)  # by partition, in order
    labels: Counter = field(default_factory=Counter)  # predicted top-1 labels over all partitions' files
    samples: list[dict] = field(default_factory=list)  # up to SAMPLES rows: uri, class_label, confidence

    @property
    def predicted(self) -> int:
        return sum(s.predicted for s in self.summaries.values())

    @property
    def reused(self) -> int:
        return sum(s.reused for s in self.summaries.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.summaries.values())

    @property
    def forward_seconds(self) -> float:
        """Seconds of the partitions that predicted something: reading pixels, forward passes, writing."""
        return sum(s.seconds for s in self.summaries.values() if s.predicted)

    @property
    def stages(self) -> StageSeconds:
        total = StageSeconds()
        for summary in self.summaries.values():
            total.add(summary.stages)
        return total

    @property
    def batch_size(self) -> int | None:
        return batch_size_used(self.summaries.values())

    def per_partition(self) -> list[tuple]:
        """(partition, images, predicted, reused, failed, seconds, img/s) for each partition."""
        return [
            (key, s.images, s.predicted, s.reused, s.failed, f"{s.seconds:.2f}", f"{s.images_per_second:.1f}")
            for key, s in self.summaries.items()
        ]


def predict_partitions(
    classifier: Classifier,
    shards: list[tuple[str, PixelShard]],
    settings: InferenceSettings,
    work_area: WorkArea,
    model_slug: str,
    reuse: bool = True,
    warn: Callable[[str], None] | None = None,
    info: Callable[[str, bool], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PartitionsPrediction:
    """Predict each partition's shard into its result file; ``info(line, worth_showing)`` gets a line
    per partition (``worth_showing`` is False for a partition with no images)."""
    outcome = PartitionsPrediction()
    for key, shard in shards:
        with work_area.updating_results(model_slug, key) as output:  # another machine's predictions are reused
            summary = predict_shard(classifier, shard, settings, output, key, reuse=reuse, log=warn, progress=progress)
        outcome.summaries[key] = summary
        results = read_results(output)
        outcome.labels.update(
            dict(zip(*[v.to_pylist() for v in pc.value_counts(results.column("class_label").drop_null()).flatten()]))
        )
        if len(outcome.samples) < SAMPLES:
            done = results.filter(pc.is_valid(results["class_label"])).slice(0, SAMPLES - len(outcome.samples))
            outcome.samples += done.select(["uri", "class_label", "confidence"]).to_pylist()
        if info is not None:
            info(
                f"{key}: {summary.predicted} predicted, {summary.reused} reused, {summary.failed} failed in "
                f"{summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s on {settings.device}, "
                f"{settings.precision})",
                bool(summary.images),
            )
    return outcome
