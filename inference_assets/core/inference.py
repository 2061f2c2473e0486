"""Streaming stored uint8 pixels through a classifier, batch by batch, into a result file.

Per batch: read rows from the stored shard (on a prefetch thread, pinned when the device is
CUDA), copy to the device without blocking, normalize there, run the forward pass
under autocast for ``bf16``/``fp16``, softmax in fp32, keep the top-k.
Memory is bounded by the batch size and the prefetch depth, not by the partition size.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .devices import autocast_dtype, default_batch_size
from .models import Classifier
from .parallel import prefetch
from .pixel_store import STATUS_FAILED, PixelShard
from .results import ResultFileWriter


@dataclass(frozen=True)
class InferenceSettings:
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 0  # 0: automatic for the device (see devices.default_batch_size)
    top_k: int = 5

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or default_batch_size(self.device)


def prediction_inputs(shard_inputs: str, model: str, weights_id: str, settings: InferenceSettings) -> str:
    """Identifies what a result file is computed from: pixels, model + weights, precision, top-k."""
    key = f"{shard_inputs}|{model}|{weights_id}|{settings.precision}|{settings.top_k}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass
class ShardPredictionSummary:
    images: int
    predicted: int
    failed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def _batches(shard: PixelShard, rows: np.ndarray, batch_size: int, pin: bool) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        # one positional read per run of consecutive rows (rows of failed images are skipped)
        runs = np.split(batch_rows, np.flatnonzero(np.diff(batch_rows) != 1) + 1)
        parts = [shard.read_rows(int(run[0]), int(run[-1]) + 1) for run in runs]
        tensor = torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))
        yield batch_rows, (tensor.pin_memory() if pin else tensor)


def classify(
    classifier: Classifier, shard: PixelShard, rows: np.ndarray, settings: InferenceSettings
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(rows, top_probs, top_indices)`` per batch for the given (ascending) rows of the shard."""
    if len(rows) == 0:
        return
    device = settings.device
    dtype = autocast_dtype(settings.precision)
    module = classifier.module
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    k = min(settings.top_k, len(classifier.labels))
    pin = device.type == "cuda"
    for batch_rows, batch in prefetch(_batches(shard, rows, settings.effective_batch_size, pin)):
        with torch.inference_mode():
            x = classifier.preprocessing.normalize(batch.to(device, non_blocking=pin))
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = module(x)
            top = logits.float().softmax(dim=-1).topk(k, dim=-1)
        yield batch_rows, top.values.cpu().numpy(), top.indices.cpu().numpy()


def predict_shard(
    classifier: Classifier, shard: PixelShard, settings: InferenceSettings, output: Path, partition: str
) -> ShardPredictionSummary:
    """Predict every decoded image of a shard; record decode failures; write ``output`` atomically."""
    start = time.perf_counter()
    index = shard.index
    image_ids = index.column("image_id").to_pylist()
    uris = index.column("uri").to_pylist()
    hashes = index.column("content_hash").to_pylist()
    status = index.column("status").to_pylist()
    errors = index.column("error").to_pylist()
    writer = ResultFileWriter(
        output,
        partition=partition,
        model=classifier.spec.name,
        weights=classifier.weights_id,
        device=str(settings.device),
        precision=settings.precision,
        inputs=prediction_inputs(shard.inputs, classifier.spec.name, classifier.weights_id, settings),
    )
    with writer:
        failed_rows = [i for i, s in enumerate(status) if s == STATUS_FAILED]
        writer.write_failures(
            [image_ids[i] for i in failed_rows],
            [uris[i] for i in failed_rows],
            [hashes[i] for i in failed_rows],
            stage="decode",
            errors=[errors[i] for i in failed_rows],
        )
        for rows, probs, indices in classify(classifier, shard, shard.ok_rows, settings):
            picked = rows.tolist()
            writer.write_predictions(
                [image_ids[i] for i in picked],
                [uris[i] for i in picked],
                [hashes[i] for i in picked],
                indices,
                probs,
                classifier.labels,
            )
    return ShardPredictionSummary(
        images=index.num_rows, predicted=writer.predicted, failed=writer.failed, seconds=time.perf_counter() - start
    )
