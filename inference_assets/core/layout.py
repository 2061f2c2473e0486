"""Where each artifact lives under the work directory.

::

    <work_dir>/manifest/image_manifest.parquet
    <work_dir>/preprocessed/<preprocessing fingerprint>/<partition>.parquet + .npy
    <work_dir>/predictions/<model slug>/<partition>.parquet
    <work_dir>/report/index.html

Pixels are keyed by the preprocessing they were made with and results by model + weights,
so changing either never mixes outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    work_dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.work_dir / "manifest" / "image_manifest.parquet"

    @property
    def report_path(self) -> Path:
        return self.work_dir / "report" / "index.html"

    def pixel_dir(self, preprocessing_fingerprint: str) -> Path:
        return self.work_dir / "preprocessed" / preprocessing_fingerprint

    def results_dir(self, model_slug: str) -> Path:
        return self.work_dir / "predictions" / model_slug

    def result_file(self, model_slug: str, partition: str) -> Path:
        return self.results_dir(model_slug) / f"{partition}.parquet"

    def result_files(self, model_slug: str, partitions: list[str]) -> list[Path]:
        """The complete result files that exist for these partitions."""
        return [p for p in (self.result_file(model_slug, k) for k in partitions) if p.exists()]
