"""A local folder tree of images (see :mod:`..local_files` for the safety rules of the walk)."""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterable, Iterator
from pathlib import Path

from inference_assets.core.errors import ConfigError
from inference_assets.core.sources.base import SourceEntry, parent_label
from inference_assets.core.sources.local_files import _reason, display, local_path, uri_for, walk_images
from inference_assets.core.storage.hashing import file_sha256


def check_source_root(root: Path) -> Path:
    """The resolved source root, or a one-line error naming it and the fix."""
    root = Path(root).expanduser()
    try:
        is_dir = stat_module.S_ISDIR(os.stat(root).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = False
    except OSError as exc:  # no permission on a parent, an I/O error: not "missing"
        raise ConfigError(
            f"cannot access the image source root {str(root)!r}: {_reason(exc)}: give the user running the "
            "pipeline read access to it, or set image_root to a readable folder",
            settings=["image_root"],
        ) from None
    if not is_dir:
        raise ConfigError(
            f"image source root {str(root)!r} is not a folder: set image_root "
            "to a folder of images or a bucket URI such as s3://bucket/prefix",
            settings=["image_root"],
        )
    return root.resolve()


class FolderSource:
    def __init__(self, root: Path, extensions: Iterable[str], follow_external_symlinks: bool = False):
        self.root = check_source_root(root)
        self.extensions = tuple(extensions)
        self.follow_external_symlinks = follow_external_symlinks
        self.description = str(self.root)
        self.listed: set[bytes] = set()  # folders listed completely by the last entries()

    def entries(self) -> Iterator[SourceEntry]:
        self.listed = set()
        for found in walk_images(self.root, self.extensions, self.follow_external_symlinks, self.listed):
            if found.unlisted:
                yield SourceEntry(key=found.relative, uri=uri_for(found.path), error=found.error, unlisted=True)
                continue
            stat = found.stat
            readable = stat is not None and found.error is None
            yield SourceEntry(
                key=found.relative,
                uri=uri_for(found.path),
                size=stat.st_size if readable else None,
                mtime_ns=stat.st_mtime_ns if readable else None,
                label=parent_label(display(found.relative)),
                error=found.error,
                version=f"ino={stat.st_ino};ctime_ns={stat.st_ctime_ns}" if readable else None,
            )

    def is_deleted(self, uri: str) -> bool:
        """After :meth:`entries`: whether an image absent from the listing is known to be deleted
        (its folder was listed, or is gone), rather than hidden by a folder that failed to list."""
        parent = os.path.dirname(os.fsencode(local_path(uri)))
        return parent in self.listed or not os.path.lexists(parent)

    def open(self, uri: str) -> str | bytes:
        return local_path(uri)  # Pillow opens the file itself: no copy of its bytes

    def content_hash(self, uri: str) -> str:
        return f"sha256:{file_sha256(local_path(uri))}"
