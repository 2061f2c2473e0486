"""Small helpers that turn counts into Dagster metadata values."""


from collections.abc import Iterable

from dagster import MetadataValue


def markdown_table(headers: tuple[str, ...], rows: Iterable[tuple]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0
