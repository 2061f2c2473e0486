"""Finding image files in a local folder tree, safely, and naming them so they can be reopened.

- Symbolic links are followed only while their target stays inside the source root (unless
  ``follow_external_symlinks``); a link to a folder is entered once (loops are cut); a link
  that cannot be resolved (a loop, a dangling target) or that leaves the root is reported as
  a file with an error rather than skipped silently, when its name looks like an image.
- A folder that cannot be listed (no permission, an I/O error) is reported as an entry with
  ``unlisted`` set and the OS reason, never skipped: its images must not vanish silently. The
  root itself failing to list is a :class:`~.errors.ConfigError` naming it and the fix.
- File names that are not valid UTF-8 keep their exact bytes: their ``uri`` is a
  ``file://`` URI with the bytes percent-encoded; every other file's ``uri`` is its plain
  absolute path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote_to_bytes

from inference_assets.core.errors import ConfigError

FILE_URI_PREFIX = "file://"
LIST_ERROR_PREFIX = "cannot list folder"  # the error of a folder that could not be listed (stage "list")


@dataclass(frozen=True)
class FoundFile:
    path: str  # as the OS gave it (may hold surrogate escapes for non-UTF-8 bytes)
    relative: bytes  # path relative to the root, '/'-separated, exact bytes
    error: str | None = None  # why it cannot be read, when known at listing time
    stat: os.stat_result | None = None  # the file's (link-followed) stat from the listing, when readable
    unlisted: bool = False  # a folder that could not be listed (``error`` says why), not a file


def display(raw: bytes) -> str:
    """Readable text for a path's bytes (invalid UTF-8 shown as \\xNN escapes)."""
    return raw.decode("utf-8", "backslashreplace")


def uri_for(path: str) -> str:
    """A text name that reopens exactly this file (see module docstring)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return FILE_URI_PREFIX + quote_from_bytes(raw, safe="/")


def local_path(uri: str) -> str | bytes:
    """The filesystem path behind a ``uri`` made by :func:`uri_for`."""
    if uri.startswith(FILE_URI_PREFIX):
        return unquote_to_bytes(uri[len(FILE_URI_PREFIX) :])
    return uri


def walk_images(
    root: Path,
    extensions: Iterable[str],
    follow_external_symlinks: bool = False,
    listed: set[bytes] | None = None,
) -> Iterator[FoundFile]:
    """Image files under ``root`` in a deterministic (sorted) order; hidden entries skipped.

    ``listed``, if given, receives the path (bytes) of every folder listed completely.
    """
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    root_real = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()

    def inside_root(target: str) -> bool:
        return target == root_real or target.startswith(root_real + os.sep)

    def walk(folder: str, prefix: bytes) -> Iterator[FoundFile]:
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                return  # a folder reached twice through links: list it once
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            if not prefix:
                raise ConfigError(
                    f"cannot list the image source root {folder!r}: {_reason(exc)}: give the user running the "
                    "pipeline read access to it, or set image_root to a readable folder",
                    settings=["image_root"],
                ) from None
            yield FoundFile(folder, prefix, f"{LIST_ERROR_PREFIX}: {_reason(exc)}", unlisted=True)
            return
        if listed is not None:
            listed.add(os.fsencode(folder))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = prefix + os.fsencode(entry.name)
            looks_like_image = os.path.splitext(entry.name)[1].lower() in suffixes
            error = None
            if entry.is_symlink():
                try:
                    target = str(Path(entry.path).resolve(strict=True))
                except (OSError, RuntimeError) as exc:
                    if looks_like_image:
                        yield FoundFile(entry.path, relative, f"symlink cannot be resolved: {_reason(exc)}")
                    continue
                if not follow_external_symlinks and not inside_root(target):
                    if looks_like_image:
                        yield FoundFile(
                            entry.path,
                            relative,
                            "symlink points outside the source root and is not followed "
                            "(set follow_external_symlinks to allow)",
                        )
                    continue
            try:
                info = entry.stat()  # follows links; cached by scandir where the OS allows
            except OSError as exc:
                error, info = f"cannot stat: {_reason(exc)}", None
            if info is not None and stat.S_ISDIR(info.st_mode):
                yield from walk(entry.path, relative + b"/")
            elif looks_like_image and (error or stat.S_ISREG(info.st_mode)):
                yield FoundFile(entry.path, relative, error, info)

    yield from walk(str(root), b"")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())
