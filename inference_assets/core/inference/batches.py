"""Streaming stored uint8 pixels through a classifier, batch by batch, into a result file.

Per batch: read rows from the stored shard (on a prefetch thread, pinned when the device is
CUDA), copy to the device without blocking, normalize there, run the forward pass
under autocast for ``bf16``/``fp16``, softmax in fp32, keep the top-k and every class's probability.
With test-time augmentation (``tta="flip"``) each batch also goes through mirrored, and the
probabilities are the mean of both passes'.
Memory is bounded by the batch size and the prefetch depth, not by the partition size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.pixel_store import STATUS_FAILED, PixelShard
from inference_assets.core.inference.batch_size import probe_cuda_batch_size
from inference_assets.core.inference.devices import autocast_dtype, default_batch_size, exact_fp32
from inference_assets.core.models.loading import Classifier
from inference_assets.core.storage.results import STATUS_PREDICTED, ResultFileWriter, read_reusable
from inference_assets.core.system.allocator import keep_freed_memory
from inference_assets.core.system.parallel import prefetch


@dataclass(frozen=True)
class InferenceSettings:
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 0  # 0: automatic: 8 on CPU, probed on CUDA (devices.default_batch_size, batch_size.py)
    top_k: int = 5
    compile: bool = False  # torch.compile the model (batches are padded to one shape)
    tta: str | None = None  # "flip": the mean of the probabilities of each image and of its mirror image

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or default_batch_size(self.device)


@dataclass
class StageSeconds:
    """Where predicting a shard spent its time, measured on the thread that drives it.

    ``read``: waiting for the next batch of stored pixels (the prefetch thread reads ahead, so
    this is what reading did not hide); ``model``: normalizing, the forward pass, softmax and
    top-k (synchronized: the results are copied back); ``write``: the result file.
    """

    read: float = 0.0
    model: float = 0.0
    write: float = 0.0

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the seconds the block takes to ``stage``, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - start)

    def add(self, other: StageSeconds) -> None:
        self.read, self.model, self.write = self.read + other.read, self.model + other.model, self.write + other.write

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in asdict(self).items()}


@dataclass
class ShardPredictionSummary:
    images: int
    predicted: int  # computed now
    reused: int  # predictions carried over unchanged
    failed: int
    rewritten: bool  # False when the stored result file was already up to date
    seconds: float
    batch_size: int  # the batch size in use at the end (smaller than asked after out-of-memory)
    stages: StageSeconds = field(default_factory=StageSeconds)

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def torch_only_reason(settings: InferenceSettings) -> str:
    """Which of these settings only PyTorch honours ("" when none is set; the device is
    ``converted_models.choose_runtime``'s to judge)."""
    for name, asked in (("precision " + settings.precision, settings.precision != "fp32"),
                        ("compile", settings.compile), ("channels_last", settings.channels_last)):
        if asked:
            return f"{name} applies to PyTorch only"
    return ""


def check_batch(shards: Iterable[PixelShard], classifier: Classifier, images: int = 8,
                normalize: bool = True) -> torch.Tensor | None:
    """Up to ``images`` stored images of the shards, normalized as the model takes them (None: no image
    was decoded): what a converted network is compared with PyTorch on. ``normalize=False``: the stored
    uint8 pixels (int8 calibration, normalized one image at a time)."""
    picked: list[torch.Tensor] = []
    for shard in shards:
        rows = shard.ok_rows[: images - sum(len(batch) for batch in picked)]
        if len(rows):
            picked.append(next(_batches(shard, rows, len(rows), pin=False))[1])  # one read per run of rows
    if not picked:
        return None
    pixels = torch.cat(picked)
    return classifier.preprocessing.normalize(pixels) if normalize else pixels


def batch_size_used(summaries: Iterable[ShardPredictionSummary]) -> int | None:
    """The batch size a step's forward passes ran at: the smallest that any partition which predicted
    something ended with (the probed size on CUDA, smaller after an out-of-memory back-off); None
    when nothing was predicted (every prediction reused): no batch ran."""
    sizes = [summary.batch_size for summary in summaries if summary.predicted]
    return min(sizes) if sizes else None


def _batches(shard: PixelShard, rows: np.ndarray, batch_size: int, pin: bool) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        # one positional read per run of consecutive rows (rows of failed images are skipped)
        runs = np.split(batch_rows, np.flatnonzero(np.diff(batch_rows) != 1) + 1)
        parts = [shard.read_rows(int(run[0]), int(run[-1]) + 1) for run in runs]
        tensor = torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))
        yield batch_rows, (tensor.pin_memory() if pin else tensor)


def classify(
    classifier: Classifier,
    shard: PixelShard,
    rows: np.ndarray,
    settings: InferenceSettings,
    on_backoff: Callable[[int, int], None] | None = None,
    on_batch_size: Callable[[int], None] | None = None,
    stages: StageSeconds | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]] | None, np.ndarray]]:
    """Yield ``(rows, top_probs, top_indices, positives, probabilities)`` per batch for the given
    (ascending) rows of the shard; ``positives`` lists, for a multi-label model, each image's classes at
    or above its threshold (None otherwise); ``probabilities`` holds every class's, one row per image.

    ``stages``, if given, gets the seconds spent waiting for pixels and in the model added.

    A CUDA out-of-memory error splits the failing batch in two and retries both halves; the
    smaller size is kept for the batches after it (``on_backoff(old, new)`` is told), so no
    image is lost. Only a single image that does not fit is an error.
    """
    if len(rows) == 0:
        return
    device = settings.device
    dtype = autocast_dtype(settings.precision)
    module = classifier.module
    check_runtime(classifier, settings)
    exact_fp32(device, settings.precision)
    if device.type == "cpu":
        keep_freed_memory()  # otherwise every batch's activations are page-faulted in afresh
    if settings.channels_last and classifier.is_torch:
        module = module.to(memory_format=torch.channels_last)
    if settings.compile:
        module = compiled(module)
    k = min(settings.top_k, len(classifier.labels))
    pin = device.type == "cuda"
    limit = settings.effective_batch_size
    if device.type == "cuda" and settings.batch_size == 0 and classifier.is_torch:
        limit = cuda_batch_size(classifier, module, settings)
    if on_batch_size is not None:
        on_batch_size(limit)

    # The prefetch thread reads (and on CUDA pins) the next batch; normalizing stays on this
    # thread: on CPU, torch ops from a second thread start a second OpenMP team, which
    # oversubscribes the cores (measured: 20 % slower). uint8 crosses to a GPU (4x less than
    # float) and is normalized there.
    threshold = classifier.info.threshold if classifier.info.multi_label else None

    def forward(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[list[int]] | None, np.ndarray]:
        with torch.inference_mode():
            x = classifier.preprocessing.normalize(batch.to(device, non_blocking=pin))
            if settings.channels_last and classifier.is_torch:
                x = x.contiguous(memory_format=torch.channels_last)
            count = x.shape[0]
            if settings.compile and count < limit:  # one input shape: no recompilation for the last batch
                x = torch.cat([x, x.new_zeros((limit - count, *x.shape[1:]))])
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outputs = module(x)[:count]
                mirrored = module(x.flip(-1))[:count] if settings.tta == "flip" else None
            probs = classifier.probabilities(outputs)
            if mirrored is not None:
                probs = (probs + classifier.probabilities(mirrored)) / 2
            top = probs.topk(k, dim=-1)
            positives = None
            if threshold is not None:  # multi-label: every class at or above the threshold, most probable first
                order = probs.argsort(dim=-1, descending=True).cpu().numpy()
                passed = (probs >= threshold).cpu().numpy()
                positives = [[int(i) for i in row if ok[i]] for row, ok in zip(order, passed)]
        return top.values.cpu().numpy(), top.indices.cpu().numpy(), positives, probs.float().cpu().numpy()
    stages = stages if stages is not None else StageSeconds()
    batches = prefetch(_batches(shard, rows, limit, pin))
    while True:
        with stages.timed("read"):
            batch_rows, batch = next(batches, (None, None))
        if batch_rows is None:
            break
        pending = [(batch_rows, batch)]  # a stack: the first rows are on top
        while pending:
            part_rows, part = pending.pop()
            if len(part_rows) > limit:
                starts = range(0, len(part_rows), limit)
                pending.extend((part_rows[i : i + limit], part[i : i + limit]) for i in reversed(starts))
                continue
            try:
                with stages.timed("model"):
                    probs, indices, positives, every = forward(part)
            except torch.cuda.OutOfMemoryError:
                if len(part_rows) == 1:
                    raise
                old, limit = len(part_rows), max(1, len(part_rows) // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if on_backoff is not None:
                    on_backoff(old, limit)
                pending.append((part_rows, part))
                continue
            yield part_rows, probs, indices, positives, every


def check_runtime(classifier: Classifier, settings: InferenceSettings) -> None:
    """Settings that only a PyTorch module honours are an error for an ONNX model, not silently ignored."""
    if classifier.is_torch:
        return
    for name, asked in (("precision", settings.precision != "fp32"), ("compile", settings.compile)):
        if asked:
            raise ConfigError(
                f"device setting {name} applies to PyTorch models, but model {classifier.spec.name!r} runs in "
                f"ONNX Runtime at the precision it was exported with: set {name} back to its default"
            )


_probed: dict[tuple, int] = {}


def cuda_batch_size(classifier: Classifier, module: torch.nn.Module, settings: InferenceSettings) -> int:
    """The automatic CUDA batch size for this model and settings, probed once per process."""
    key = (id(module), str(settings.device), settings.precision, settings.channels_last)
    if key not in _probed:
        _probed[key] = probe_cuda_batch_size(
            module,
            classifier.preprocessing.normalize,
            classifier.preprocessing.input_size,
            settings.device,
            autocast_dtype(settings.precision),
        )
    return _probed[key]


_compiled: dict[int, torch.nn.Module] = {}


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)``, once per module per process (compiling takes a while)."""
    key = id(module)
    if key not in _compiled:
        _compiled[key] = torch.compile(module, dynamic=False)
    return _compiled[key]


def predict_shard(
    classifier: Classifier,
    shard: PixelShard,
    settings: InferenceSettings,
    output: Path,
    partition: str,
    reuse: bool = True,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ShardPredictionSummary:
    """Predict the shard's decoded images, record its failures, write ``output`` atomically.

    With ``reuse``, predictions in the existing ``output`` (same model and weights, which name
    its folder, and same precision and top-k) for images whose content is unchanged are
    carried over; only the other images go through the model. When nothing changed, the file
    is left as it is.
    """
    start = time.perf_counter()
    index = shard.index
    columns = index.select(["image_id", "uri", "content_hash", "status", "stage", "error"]).to_pydict()
    image_ids, uris, hashes = columns["image_id"], columns["uri"], columns["content_hash"]
    failed_rows = [i for i, s in enumerate(columns["status"]) if s == STATUS_FAILED]
    ok_rows = shard.ok_rows

    pixels = shard.preprocessing
    previous = read_reusable(output, settings.precision, settings.top_k, pixels, warn=log) if reuse else None
    stored: dict[tuple, int] = {}
    if previous is not None:
        prev = previous.select(["image_id", "content_hash", "status"]).to_pydict()
        stored = {
            (image_id, content_hash): i
            for i, (image_id, content_hash, status) in enumerate(zip(*prev.values(), strict=True))
            if status == STATUS_PREDICTED
        }
    reused = [stored[(image_ids[r], hashes[r])] for r in ok_rows if (image_ids[r], hashes[r]) in stored]
    to_compute = np.array([r for r in ok_rows if (image_ids[r], hashes[r]) not in stored], dtype=np.int64)
    progress = progress or (lambda n: None)
    if previous is not None and len(to_compute) == 0 and not failed_rows and len(reused) == previous.num_rows:
        progress(len(image_ids))
        return ShardPredictionSummary(
            len(image_ids), 0, len(reused), 0, False, time.perf_counter() - start, settings.effective_batch_size
        )

    batch_size = settings.effective_batch_size

    def on_batch_size(size: int) -> None:
        nonlocal batch_size
        batch_size = size

    def on_backoff(old: int, new: int) -> None:
        nonlocal batch_size
        batch_size = new
        if log is not None:
            log(f"{partition}: out of memory at batch size {old}; retrying with batch size {new}")

    writer = ResultFileWriter(
        output,
        partition=partition,
        model=classifier.spec.name,
        weights=classifier.weights_id,
        identity=classifier.info.identity + (f"+{settings.tta}" if settings.tta else ""),  # TTA: other predictions
        class_names=classifier.labels,
        device=str(settings.device),
        precision=settings.precision,
        runtime=classifier.runtime,
        top_k=settings.top_k,
        pixels=pixels,
    )
    stages = StageSeconds()
    with writer:
        with stages.timed("write"):
            writer.write_failures(
                [image_ids[i] for i in failed_rows],
                [uris[i] for i in failed_rows],
                [hashes[i] for i in failed_rows],
                stages=[columns["stage"][i] for i in failed_rows],
                errors=[columns["error"][i] for i in failed_rows],
            )
            if reused:
                writer.write_rows(previous.take(pa.array(sorted(reused))))
        progress(len(image_ids) - len(to_compute))
        for rows, probs, indices, positives, every in classify(
            classifier, shard, to_compute, settings, on_backoff, on_batch_size, stages
        ):
            picked = rows.tolist()
            with stages.timed("write"):
                writer.write_predictions(
                    [image_ids[i] for i in picked],
                    [uris[i] for i in picked],
                    [hashes[i] for i in picked],
                    indices,
                    probs,
                    classifier.labels,
                    positives,
                    every,
                )
            progress(len(picked))
        closing = time.perf_counter()
    stages.write += time.perf_counter() - closing  # leaving `with writer`: the file is written out and renamed
    return ShardPredictionSummary(
        images=index.num_rows,
        predicted=writer.predicted,
        reused=writer.reused,
        failed=writer.failed,
        rewritten=True,
        seconds=time.perf_counter() - start,
        batch_size=batch_size,
        stages=stages,
    )
