"""Accuracy against the labels images carry (their folder name, or a table's label column).

A label counts as a class when, lower-cased with ``_``/``-`` read as spaces, it equals one of the
model's class names or one of its comma-separated synonyms (``golden_retriever`` matches
"golden retriever"; "tabby" and "tabby cat" both match timm's "tabby, tabby cat"), or when it is
an ImageNet WordNet id (``n01440764``) whose description does (ImageNet models). A label that
matches none of the model's classes (the ``model_classes`` table) is reported as unknown and
left out of the accuracy, rather than counted as a miss.

Tables (replaced together in one transaction):

- ``evaluation_images``: image_id, label, class_label, top1_correct, top5_correct (evaluated images);
- ``evaluation_classes``: label, images, top1_correct, top5_correct, top1_accuracy, top5_accuracy;
- ``evaluation_confusions``: label, predicted, images (top-1 misses, most frequent first);
- ``evaluation_summary``: one row: labelled, evaluated, unknown_labels, top1_accuracy, top5_accuracy.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import duckdb
import pyarrow as pa

from inference_assets.core.warehouse.database import (
    Column,
    TableDescription,
    has_table,
    replace_tables,
    tables_by_name,
)

_WNID = re.compile(r"^n\d{8}$")

MAX_CONFUSIONS = 20  # rows kept in evaluation_confusions

_LABEL = "The images' own label (folder name, WordNet id or the table's label column)."
_TOP1 = "Top-1 accuracy: top1_correct / images."
_TOP5 = "Top-5 accuracy: top5_correct / images."

# The tables evaluate() makes; a test checks them against the real tables (duckdb_columns()).
EVALUATION_TABLES: dict[str, TableDescription] = tables_by_name(
    TableDescription(
        "evaluation_classes",
        "Accuracy per label, over the images whose label is one of the model's classes.",
        (
            Column("label", "VARCHAR", _LABEL),
            Column("images", "BIGINT", "Evaluated images with this label."),
            Column("top1_correct", "BIGINT", "Of those, how many have the label as top-1 class."),
            Column("top5_correct", "BIGINT", "Of those, how many have the label among the top-5 classes."),
            Column("top1_accuracy", "DOUBLE", _TOP1),
            Column("top5_accuracy", "DOUBLE", _TOP5),
        ),
    ),
    TableDescription(
        "evaluation_images",
        "One row per evaluated image (its label is one of the model's classes).",
        (
            Column("image_id", "VARCHAR", "The image (images.image_id)."),
            Column("label", "VARCHAR", _LABEL),
            Column("class_label", "VARCHAR", "The predicted top-1 class."),
            Column("top1_correct", "BOOLEAN", "The label is the top-1 class (or one of its synonyms)."),
            Column("top5_correct", "BOOLEAN", "The label is among the top-5 classes."),
        ),
    ),
    TableDescription(
        "evaluation_confusions",
        f"Top-1 misses by (label, predicted class), most frequent first (at most {MAX_CONFUSIONS} pairs).",
        (
            Column("label", "VARCHAR", _LABEL),
            Column("predicted", "VARCHAR", "The top-1 class predicted instead."),
            Column("images", "BIGINT", "Images with this label predicted as this class."),
        ),
    ),
    TableDescription(
        "evaluation_summary",
        "One row: how many images were labelled and evaluated, and the overall accuracies.",
        (
            Column("labelled", "BIGINT", "Predicted images that carry a label."),
            Column("evaluated", "BIGINT", "Of those, images whose label is one of the model's classes."),
            Column("unknown_labels", "BIGINT", "Labelled images whose label matches none of the model's classes "
                   "(left out of the accuracy)."),
            Column("top1_accuracy", "DOUBLE", "Top-1 accuracy over the evaluated images; null when none."),
            Column("top5_accuracy", "DOUBLE", "Top-5 accuracy over the evaluated images; null when none."),
        ),
    ),
)


def normalize(label: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", label).lower().split())


def synonyms(class_label: str) -> frozenset[str]:
    """A class label's names: the whole label and each comma-separated part, normalized."""
    parts = [class_label, *class_label.split(",")]
    return frozenset(normalize(p) for p in parts if p.strip())


@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[dict[str, str], list[str]]:
    """WordNet id -> description, and ImageNet-1k class names from timm and torchvision (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = {info.index_to_label_name(i): info.index_to_description(i) for i in range(info.num_classes())}
    names = list(wnids.values())
    try:
        from torchvision.models import ResNet50_Weights

        names += list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # torchvision missing or changed: timm's names still cover ImageNet-1k
        pass
    return wnids, names


def truth_names(label: str) -> frozenset[str]:
    """The names a ground-truth label stands for."""
    wnids, _ = _imagenet()
    if _WNID.match(label.strip()) and label.strip() in wnids:
        return synonyms(wnids[label.strip()])
    return frozenset({normalize(label)})


def model_vocabulary(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The class names a label may match: the model's own (``model_classes``), or, for results
    stored without them, ImageNet-1k's plus every label predicted."""
    if has_table(conn, "model_classes"):
        names = [name for (name,) in conn.execute("SELECT class_label FROM model_classes ORDER BY class_index").fetchall()]
        if names:
            return names
    predicted = {name for (labels,) in conn.execute("SELECT DISTINCT topk_labels FROM predictions").fetchall() for name in labels}
    return [*_imagenet()[1], *predicted]


@dataclass
class EvaluationSummary:
    labelled: int = 0
    evaluated: int = 0
    unknown_labels: Counter = field(default_factory=Counter)
    top1_correct: int = 0
    top5_correct: int = 0

    @property
    def top1_accuracy(self) -> float | None:
        return self.top1_correct / self.evaluated if self.evaluated else None

    @property
    def top5_accuracy(self) -> float | None:
        return self.top5_correct / self.evaluated if self.evaluated else None


class StoredEvaluation(NamedTuple):
    """The stored ``evaluation_summary`` row."""

    evaluated: int  # labelled images whose label the model knows
    top1_accuracy: float | None  # None when nothing was evaluated
    top5_accuracy: float | None
    unknown_labels: int  # labelled images whose label is not one of the model's classes


def stored_summary(conn: duckdb.DuckDBPyConnection) -> StoredEvaluation | None:
    """The stored evaluation; None before the first one (the four tables are written in one transaction)."""
    if not has_table(conn, "evaluation_summary"):
        return None
    row = conn.execute("SELECT evaluated, top1_accuracy, top5_accuracy, unknown_labels FROM evaluation_summary")
    return StoredEvaluation(*row.fetchone())


def evaluate(conn: duckdb.DuckDBPyConnection, max_confusions: int = MAX_CONFUSIONS) -> EvaluationSummary:
    """Compute and store the evaluation tables from the ``predictions`` table."""
    rows = conn.execute(
        "SELECT image_id, label, class_label, topk_labels FROM predictions WHERE label IS NOT NULL ORDER BY image_id"
    ).fetchall()
    vocabulary = frozenset().union(*(synonyms(name) for name in model_vocabulary(conn)))
    summary = EvaluationSummary(labelled=len(rows))
    images = {"image_id": [], "label": [], "class_label": [], "top1_correct": [], "top5_correct": []}
    per_class: dict[str, list[int]] = {}
    confusions: Counter = Counter()
    for image_id, label, class_label, topk in rows:
        names = truth_names(label)
        if not names & vocabulary:
            summary.unknown_labels[label] += 1
            continue
        top1 = bool(names & synonyms(class_label))
        top5 = any(names & synonyms(name) for name in topk[:5])
        summary.evaluated += 1
        summary.top1_correct += top1
        summary.top5_correct += top5
        counts = per_class.setdefault(label, [0, 0, 0])
        counts[0] += 1
        counts[1] += top1
        counts[2] += top5
        if not top1:
            confusions[(label, class_label)] += 1
        for key, value in zip(images, (image_id, label, class_label, top1, top5)):
            images[key].append(value)
    classes = sorted(per_class.items())
    tables = {
        "evaluation_images": pa.table(images, schema=pa.schema([
            ("image_id", pa.string()), ("label", pa.string()), ("class_label", pa.string()),
            ("top1_correct", pa.bool_()), ("top5_correct", pa.bool_())])),
        "evaluation_classes": pa.table({
            "label": pa.array([c for c, _ in classes], pa.string()),  # typed even when empty
            "images": pa.array([n for _, (n, _, _) in classes], pa.int64()),
            "top1_correct": pa.array([t1 for _, (_, t1, _) in classes], pa.int64()),
            "top5_correct": pa.array([t5 for _, (_, _, t5) in classes], pa.int64()),
            "top1_accuracy": pa.array([t1 / n for _, (n, t1, _) in classes], pa.float64()),
            "top5_accuracy": pa.array([t5 / n for _, (n, _, t5) in classes], pa.float64()),
        }),
        "evaluation_confusions": pa.table({
            "label": pa.array([t for (t, _), _ in confusions.most_common(max_confusions)], pa.string()),
            "predicted": pa.array([p for (_, p), _ in confusions.most_common(max_confusions)], pa.string()),
            "images": pa.array([n for _, n in confusions.most_common(max_confusions)], pa.int64()),
        }),
        "evaluation_summary": pa.table({
            "labelled": pa.array([summary.labelled], pa.int64()),
            "evaluated": pa.array([summary.evaluated], pa.int64()),
            "unknown_labels": pa.array([sum(summary.unknown_labels.values())], pa.int64()),
            "top1_accuracy": pa.array([summary.top1_accuracy], pa.float64()),
            "top5_accuracy": pa.array([summary.top5_accuracy], pa.float64()),
        }),
    }
    replace_tables(conn, tables)
    return summary
