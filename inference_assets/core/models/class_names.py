"""Class names from a file the user names, or from what a model carries.

A file is one of: plain text (one name per line, blank lines skipped), a JSON list, a JSON
object mapping index to name (``{"0": "cat", "1": "dog"}``), or a CSV with an index column and
a name column (a header row is recognised and skipped). Indices must cover 0..N-1 exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from inference_assets.core.errors import ConfigError


def read_class_names(path: str | Path, setting: str = "class_names") -> list[str]:
    """The class names in ``path``; a one-line ConfigError naming ``setting`` when unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{setting} file {str(path)!r} not found: give an existing .txt, .json or .csv file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting} file {str(path)!r} could not be read ({type(exc).__name__}): save it as UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{setting} file {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}): "
                              "write a JSON list of names or an {index: name} object") from None
        return names_from_value(value, f"{setting} file {str(path)!r}")
    if suffix == ".csv":
        return _from_csv(text, f"{setting} file {str(path)!r}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"{setting} file {str(path)!r} holds no names: write one class name per line")
    return names


def names_from_value(value: object, where: str) -> list[str]:
    """Names from a list, or from an index -> name mapping (JSON keys are strings)."""
    if isinstance(value, Mapping):
        try:
            pairs = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: class name keys must be indices 0..N-1, got {list(value)[:3]}") from None
        return _ordered(pairs, where)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
    raise ConfigError(f"{where}: class names must be a non-empty list of strings or an {{index: name}} mapping")


def _ordered(pairs: dict[int, str], where: str) -> list[str]:
    if sorted(pairs) != list(range(len(pairs))):
        missing = sorted(set(range(len(pairs))) - set(pairs))[:3]
        raise ConfigError(f"{where}: class indices must run 0..{len(pairs) - 1} without gaps (missing {missing})")
    return [pairs[i] for i in range(len(pairs))]


def _from_csv(text: str, where: str) -> list[str]:
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        header = [cell.strip().lower() for cell in rows[0]]
        rows = rows[1:]
        index_col = next((header.index(n) for n in ("index", "class_index", "id", "idx") if n in header), 0)
        name_col = next((header.index(n) for n in ("name", "class_name", "label", "class") if n in header), 1)
    else:
        index_col, name_col = 0, 1
    pairs: dict[int, str] = {}
    for number, row in enumerate(rows, start=1):
        try:
            pairs[int(row[index_col])] = row[name_col].strip()
        except (ValueError, IndexError):
            raise ConfigError(f"{where}: row {number} is not 'index,name' ({','.join(row)[:60]!r})") from None
    if not pairs:
        raise ConfigError(f"{where} holds no rows: write 'index,name' rows")
    return _ordered(pairs, where)


def check_class_count(names: list[str], outputs: int, model: str, source: str) -> None:
    """A one-line error when the number of names is not the model's number of outputs."""
    if len(names) != outputs:
        raise ConfigError(
            f"{source} gives {len(names)} class names but model {model!r} has {outputs} outputs: "
            "name exactly one class per output, in output order"
        )


def index_names(count: int) -> list[str]:
    """Names for a model without any: its output indices."""
    return [f"class_{i}" for i in range(count)]
