"""Opening URIs through pyarrow's filesystems (S3 and S3-compatible servers, GCS, HDFS, local),
with fsspec's as a fallback for other schemes when it is installed.

S3 credentials, region and endpoint come from the usual environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``...) unless :class:`S3Options` sets them.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.hashing import stream_sha256


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO or moto
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @property
    def explicit(self) -> bool:
        return any((self.endpoint_url, self.region, self.access_key_id, self.secret_access_key))


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` (other than a Windows drive letter); local paths are not URIs."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1 and "://" in str(location)


class FileSystems:
    """Resolves URIs to (filesystem, path), keeping one filesystem per scheme and bucket."""

    def __init__(self, s3: S3Options | None = None):
        self.s3 = s3 or S3Options()
        self._cache: dict[tuple[str, str], pafs.FileSystem] = {}
        self._lock = threading.Lock()

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path inside it) for a URI or a local path."""
        if not is_uri(uri):
            return pafs.LocalFileSystem(), str(uri)
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "file":
            return pafs.LocalFileSystem(), parts.path
        key = (scheme, parts.netloc)
        with self._lock:
            fs = self._cache.get(key)
            if fs is None:
                fs = self._cache[key] = self._make(uri, scheme)
        path = f"{parts.netloc}{parts.path}".rstrip("/") if scheme in ("s3", "gs", "gcs") else parts.path
        return fs, path

    def _make(self, uri: str, scheme: str) -> pafs.FileSystem:
        if scheme == "s3" and self.s3.explicit:
            return pafs.S3FileSystem(
                endpoint_override=self.s3.endpoint_url,
                region=self.s3.region or "us-east-1",
                access_key=self.s3.access_key_id,
                secret_key=self.s3.secret_access_key,
                allow_bucket_creation=False,
            )
        try:
            return pafs.FileSystem.from_uri(uri)[0]
        except Exception as pyarrow_error:
            try:
                import fsspec

                return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
            except Exception:
                raise ConfigError(
                    f"cannot open {uri!r}: {' '.join(str(pyarrow_error).split())} "
                    "(use a local path or a URI pyarrow or fsspec understands, e.g. s3://bucket/prefix)"
                ) from None

    def uri_of(self, template: str, path: str) -> str:
        """The URI naming ``path`` in the filesystem ``template`` was resolved with."""
        scheme = urlsplit(template).scheme.lower() if is_uri(template) else ""
        if scheme in ("s3", "gs", "gcs"):
            return f"{scheme}://{path}"
        if scheme and scheme != "file":
            return f"{scheme}://{urlsplit(template).netloc}{path}"
        return path

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.resolve(uri)
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def open(self, uri: str) -> BinaryIO:
        """The object's bytes as a file (one sequential read; no ranged requests per decoder seek)."""
        return io.BytesIO(self.read_bytes(uri))

    def content_hash(self, uri: str) -> str:
        """``sha256:<hex>`` of the object's bytes, streamed."""
        fs, path = self.resolve(uri)
        with fs.open_input_stream(path) as stream:
            return f"sha256:{stream_sha256(stream)}"

    def info(self, uri: str) -> pafs.FileInfo:
        fs, path = self.resolve(uri)
        return fs.get_file_info(path)
