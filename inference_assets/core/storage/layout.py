"""Where each artifact lives under the work directory.

::

    <work_dir>/manifest/image_manifest.parquet
    <work_dir>/preprocessed/<preprocessing fingerprint>/<partition>.parquet + .npy
    <work_dir>/predictions/<model slug>/<partition>.parquet
    <work_dir>/report/index.html
    <work_dir>/review/review_queue.csv, label_studio_tasks.jsonl, label_studio_config.xml
    <work_dir>/converted/<model slug>-<input size>-<runtime and versions>/  (OpenVINO / ONNX networks)

Pixels are keyed by the preprocessing they were made with and results by model + weights,
so changing either never mixes outputs.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from inference_assets.core.errors import ConfigError


def check_work_dir(work_dir: Path) -> None:
    """A one-line error unless ``work_dir`` is a folder we can write, or can be created as one."""
    path = Path(work_dir).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under a file ({existing})"
        raise ConfigError(
            f"work folder {str(path)!r} {what}: "
            "set work_dir to a folder",
            settings=["work_dir"],
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"work folder {str(path)!r} cannot be written ({existing}: permission denied): "
            "set work_dir to a folder this user can write",
            settings=["work_dir"],
        )


@dataclass(frozen=True)
class Layout:
    work_dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.work_dir / "manifest" / "image_manifest.parquet"

    @property
    def report_path(self) -> Path:
        return self.work_dir / "report" / "index.html"

    @property
    def review_dir(self) -> Path:
        """The review queue's exports: a CSV, Label Studio tasks (JSON Lines) and its labelling config."""
        return self.work_dir / "review"

    @property
    def converted_dir(self) -> Path:
        """Networks converted for another runtime (``converted_models.py``), one folder per model and runtime."""
        return self.work_dir / "converted"

    def pixel_dir(self, preprocessing_fingerprint: str) -> Path:
        return self.work_dir / "preprocessed" / preprocessing_fingerprint

    def results_dir(self, model_slug: str) -> Path:
        return self.work_dir / "predictions" / model_slug

    def result_file(self, model_slug: str, partition: str) -> Path:
        return self.results_dir(model_slug) / f"{partition}.parquet"

    def result_files(self, model_slug: str, partitions: list[str]) -> list[Path]:
        """The complete result files that exist for these partitions."""
        return [p for p in (self.result_file(model_slug, k) for k in partitions) if p.exists()]


# The file names of a stored pixel shard (images/pixel_store.py writes it; the shared-storage mirror copies it).
PIXELS_FILE_KEY = b"pixels_file"  # the index's schema metadata: the name of its pixels file


def index_path(shard_dir: Path, partition: str) -> Path:
    """The partition's index, ``P.parquet``."""
    return shard_dir / f"{partition}.parquet"


def new_pixels_path(shard_dir: Path, partition: str) -> Path:
    """A fresh name for the partition's next pixels file, ``P.<token>.npy``."""
    return shard_dir / f"{partition}.{uuid.uuid4().hex[:12]}.npy"


def is_pixels_file(name: str, partition: str) -> bool:
    """Whether ``name`` is one of the partition's pixels files (``P.<token>.npy``; not another
    partition's whose key starts the same, nor a hidden temporary)."""
    return name.startswith(f"{partition}.") and name.endswith(".npy") and name.count(".") == partition.count(".") + 2


def pixels_file_named_by(index: Path) -> str:
    """The name of the pixels file an index belongs to (raises KeyError/TypeError when it names none)."""
    return pq.read_schema(index).metadata[PIXELS_FILE_KEY].decode()
