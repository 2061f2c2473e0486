"""Images under a bucket prefix (``s3://bucket/prefix``) or any URI pyarrow's filesystems list.

Keys are listed recursively (all pages of the listing), filtered by extension, with hidden
names (a path part starting with ``.``) skipped, and sorted; an image's key relative to the
prefix is its stable name and its parent "folder" its label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow.fs as pafs

from inference_assets.core.errors import ConfigError
from inference_assets.core.sources.base import SourceEntry, parent_label
from inference_assets.core.storage.filesystems import FileSystems


class ObjectStoreSource:
    def __init__(self, root_uri: str, extensions: Iterable[str], filesystems: FileSystems | None = None):
        self.root_uri = root_uri.rstrip("/")
        self.filesystems = filesystems or FileSystems()
        self.suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
        self.description = self.root_uri
        self._fs, self._base = self.filesystems.resolve(self.root_uri)

    def entries(self) -> Iterator[SourceEntry]:
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._base, recursive=True))
        except FileNotFoundError:
            raise ConfigError(
                f"image source {self.root_uri!r} does not exist: check the bucket and prefix "
                "(image_root)",
                settings=["image_root"],
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot list {self.root_uri!r}: {' '.join(str(exc).split())} (check the endpoint and credentials: "
                "the object store's endpoint_url / access_key_id / secret_access_key, which default to "
                "AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ) from None
        prefix = self._base.rstrip("/") + "/" if self._base else ""
        found = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.startswith(prefix):
                continue
            relative = info.path[len(prefix) :]
            name = relative.rpartition("/")[2]
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            if "." + name.rpartition(".")[2].lower() not in self.suffixes:
                continue
            found.append((relative.encode("utf-8", "surrogateescape"), relative, info))
        for key, relative, info in sorted(found, key=lambda item: item[0]):
            yield SourceEntry(
                key=key,
                uri=self.filesystems.uri_of(self.root_uri, info.path),
                size=info.size,
                mtime_ns=info.mtime_ns,
                label=parent_label(relative),
            )

    def open(self, uri: str):
        return self.filesystems.open(uri)

    def content_hash(self, uri: str) -> str:
        return self.filesystems.content_hash(uri)
