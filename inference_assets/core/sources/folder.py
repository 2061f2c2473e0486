"""A local folder tree of images (see :mod:`..local_files` for the safety rules of the walk)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError
from ..hashing import file_sha256
from ..local_files import display, local_path, uri_for, walk_images
from .base import SourceEntry, parent_label


def check_source_root(root: Path) -> Path:
    """The resolved source root, or a one-line error naming it and the fix."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"image source root {str(root)!r} is not a folder: set INFERENCE_IMAGE_ROOT "
            "(or the 'storage' resource's image_root) to a folder of images or a bucket URI such as s3://bucket/prefix"
        )
    return root.resolve()


class FolderSource:
    def __init__(self, root: Path, extensions: Iterable[str], follow_external_symlinks: bool = False):
        self.root = check_source_root(root)
        self.extensions = tuple(extensions)
        self.follow_external_symlinks = follow_external_symlinks
        self.description = str(self.root)

    def entries(self) -> Iterator[SourceEntry]:
        for found in walk_images(self.root, self.extensions, self.follow_external_symlinks):
            stat = found.stat
            yield SourceEntry(
                key=found.relative,
                uri=uri_for(found.path),
                size=stat.st_size if stat is not None and found.error is None else None,
                mtime_ns=stat.st_mtime_ns if stat is not None and found.error is None else None,
                label=parent_label(display(found.relative)),
                error=found.error,
            )

    def open(self, uri: str) -> str | bytes:
        return local_path(uri)  # Pillow opens the file itself: no copy of its bytes

    def content_hash(self, uri: str) -> str:
        return f"sha256:{file_sha256(local_path(uri))}"
