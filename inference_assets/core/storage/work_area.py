"""The work area: the work folder's files (the manifest, pixel shards, result files, the report)
handed out by what they are, with the shared-storage mirror built in.

A file is fetched from the mirror before it is read or updated (so work another machine did is
reused) and published to it after it is written whole; without a mirror (``shared_dir`` unset)
both do nothing. Callers never spell a path or call the mirror themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inference_assets.core.storage.layout import Layout
from inference_assets.core.storage.shared_storage import SharedStorage


@dataclass(frozen=True)
class WorkArea:
    layout: Layout
    shared: SharedStorage

    # the manifest -------------------------------------------------------------------------------

    def manifest(self) -> Path:
        """The manifest's path, fetched from the mirror first."""
        self.shared.fetch(self.layout.manifest_path)
        return self.layout.manifest_path

    @contextmanager
    def updating_manifest(self) -> Iterator[Path]:
        """The manifest to rewrite (the previous one fetched, for its hashes); published once written."""
        yield self.manifest()
        self.shared.publish(self.layout.manifest_path)

    # pixels -------------------------------------------------------------------------------------

    def pixel_dir(self, fingerprint: str) -> Path:
        return self.layout.pixel_dir(fingerprint)

    def pixels(self, fingerprint: str, partition: str) -> Path:
        """The folder of the partition's pixel shard, with the shard fetched from the mirror first."""
        shard_dir = self.layout.pixel_dir(fingerprint)
        self.shared.fetch_pixel_shard(shard_dir, partition)
        return shard_dir

    @contextmanager
    def updating_pixels(self, fingerprint: str, partition: str) -> Iterator[Path]:
        """The shard's folder to write the partition's pixels in (pixels another machine made are
        fetched first, for reuse); the shard is published once written."""
        shard_dir = self.pixels(fingerprint, partition)
        yield shard_dir
        self.shared.publish_pixel_shard(shard_dir, partition)

    # results ------------------------------------------------------------------------------------

    def results_dir(self, model_slug: str) -> Path:
        return self.layout.results_dir(model_slug)

    @contextmanager
    def updating_results(self, model_slug: str, partition: str) -> Iterator[Path]:
        """The partition's result file to write (predictions another machine made are fetched first,
        for reuse); published once written."""
        path = self.layout.result_file(model_slug, partition)
        self.shared.fetch(path)
        yield path
        self.shared.publish(path)

    def result_files(self, model_slug: str, partitions: list[str]) -> list[Path]:
        """The complete result files of these partitions, each fetched from the mirror first."""
        for partition in partitions:
            self.shared.fetch(self.layout.result_file(model_slug, partition))
        return self.layout.result_files(model_slug, partitions)

    # converted networks -----------------------------------------------------------------------

    @property
    def converted_dir(self) -> Path:
        """The default cache of converted networks (local to each machine: it is not mirrored)."""
        return self.layout.converted_dir

    # the report and the review queue ----------------------------------------------------------

    @contextmanager
    def updating_review(self, names: tuple[str, ...]) -> Iterator[dict[str, Path]]:
        """The review queue's files to write (by name, in the review folder); published once written."""
        folder = self.layout.review_dir
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / name for name in names}
        yield paths
        for path in paths.values():
            self.shared.publish(path)

    @contextmanager
    def updating_report(self) -> Iterator[Path]:
        """The report's path to write; published once written."""
        yield self.layout.report_path
        self.shared.publish(self.layout.report_path)
