"""Preprocessing a step's partitions: each partition's manifest entries decoded into its pixel
shard (through the work area, so the shared mirror is kept), with the totals a step reports and a
log line per partition."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from inference_assets.core.images.decoding import DEFAULT_MAX_PIXELS
from inference_assets.core.images.pixel_store import ShardWriteSummary, write_pixel_shard
from inference_assets.core.images.preprocessing import Preprocessing
from inference_assets.core.storage.work_area import WorkArea
from inference_assets.core.system.progress import rate


@dataclass
class PartitionsPreprocessing:
    summaries: dict[str, ShardWriteSummary] = field(default_factory=dict)  # by partition, in order

    @property
    def images(self) -> int:
        return sum(s.images for s in self.summaries.values())

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.summaries.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.summaries.values())

    @property
    def reused(self) -> int:
        """Images whose stored pixels were kept."""
        return sum(s.reused for s in self.summaries.values())

    @property
    def decoded(self) -> int:
        """Images decoded in this step (ok or failed)."""
        return sum(s.decoded for s in self.summaries.values())


def preprocess_partitions(
    partitions: list[tuple[str, pa.Table]],
    preprocessing: Preprocessing,
    work_area: WorkArea,
    workers: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reuse: bool = True,
    opener: Callable[[str], object] | None = None,
    warn: Callable[[str], None] | None = None,
    info: Callable[[str, bool], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PartitionsPreprocessing:
    """Write each partition's pixel shard from its manifest entries (``partitions``: (key, entries),
    as ``read_manifest_partitions`` gives them), on ``workers`` threads, reusing stored pixels unless
    ``reuse`` is False; ``opener`` is the source's ``open`` (see ``write_pixel_shard``). ``warn`` gets
    each shard's warnings prefixed with its partition, ``info(line, worth_showing)`` a line per
    partition (``worth_showing`` is False for a partition with no images), ``progress(n)`` every
    ``n`` images done."""
    outcome = PartitionsPreprocessing()
    for key, entries in partitions:
        with work_area.updating_pixels(preprocessing.fingerprint, key) as shard_dir:  # another machine's are reused
            summary = write_pixel_shard(entries, preprocessing, shard_dir, key, workers, max_pixels, reuse=reuse,
                                        progress=progress, opener=opener)
        outcome.summaries[key] = summary
        for warning in summary.warnings if warn is not None else ():  # e.g. stored pixels damaged on disk, rebuilt
            warn(f"{key}: {warning}")
        if info is not None:
            info(
                f"{key}: {summary.decoded} decoded ({summary.failed} failed), {summary.reused} reused "
                f"in {summary.seconds:.1f}s ({rate(summary.decoded, summary.seconds)} img/s)",
                bool(summary.images),
            )
    return outcome
