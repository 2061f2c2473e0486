"""The review queue: the predicted images a person should look at, most doubtful first.

An image is queued for one or more reasons (kept in this order in ``reasons``):

- ``label_mismatch``: the image carries a label the model knows (its names meet the synonyms of one of
  the ``model_classes`` names, matched as :mod:`.evaluation` matches them: ``tabby`` and
  ``Tabby_Cat`` are "tabby, tabby cat", a WordNet id is its ImageNet class) and the primary model's
  top-1 class is not it. A label the model does not know (``holiday photos``) is never a mismatch;
- ``models_disagree``: the configured models (``models`` table: models and ensembles alike) that
  predicted the image do not all give the same top-1 class (never with a single model);
- ``low_confidence``: the primary model's top-1 confidence is below the threshold (default 0.5).

Ranking is by one number, higher first, ties by ``image_id``::

    score = 2 * label_mismatch + disagreement + (1 - confidence) / (1 + models ** 2)

``label_mismatch`` is 1 or 0; ``disagreement`` is the fraction of the models that predicted the
image whose top-1 differs from the most common one (0 to 1 - 1/n); ``confidence`` is the primary
model's top-1 confidence and ``models`` the number of configured models. So a label mismatch
ranks above any image without one, then the stronger the disagreement the higher (the last term is
smaller than any difference between two disagreement fractions), then the less confident the higher.

Only images the primary model predicted (and that are in ``images``) are considered. The queue
is stored as the ``review_queue`` table (replaced in one transaction) and exported as a CSV, as
Label Studio tasks with the models' top-1 as pre-annotations (JSON Lines), with the Label Studio
labelling interface those tasks fit, and shown as a report section and as Markdown for the UI.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa

from inference_assets.core.reporting.cards import Cards, image_name
from inference_assets.core.reporting.cards import escape as _e
from inference_assets.core.reporting.evaluation import synonyms, truth_names
from inference_assets.core.reporting.markdown import table
from inference_assets.core.storage.atomic import atomic_output
from inference_assets.core.warehouse.database import (
    Column,
    TableDescription,
    has_table,
    one_transaction,
    tables_by_name,
)

LOW_CONFIDENCE = 0.5  # default threshold of the low_confidence reason
REASONS = ("label_mismatch", "models_disagree", "low_confidence")  # in priority order

_PREDICTION = pa.struct([("model_name", pa.string()), ("class_label", pa.string()), ("confidence", pa.float64())])
_SCHEMA = pa.schema([
    ("rank", pa.int32()), ("image_id", pa.string()), ("uri", pa.string()), ("label", pa.string()),
    ("reasons", pa.list_(pa.string())), ("score", pa.float64()), ("primary_label", pa.string()),
    ("primary_confidence", pa.float64()), ("predictions", pa.list_(_PREDICTION)),
])

# The table build_review_queue makes; a test checks it against the real table (duckdb_columns()).
REVIEW_TABLES: dict[str, TableDescription] = tables_by_name(
    TableDescription(
        "review_queue",
        "The predicted images a person should look at, most doubtful first: a label the primary model "
        "contradicts, models that disagree, or a low top-1 confidence.",
        (
            Column("rank", "INTEGER", "1 = look at first (by score, then image_id).", nullable=False, unique=True),
            Column("image_id", "VARCHAR", "The image (images.image_id).", nullable=False),
            Column("uri", "VARCHAR", "How the source reopens the image (images.uri).", nullable=False),
            Column("label", "VARCHAR", "The image's own label (folder name, WordNet id, table column); null if none."),
            Column("reasons", "VARCHAR[]", "Why it is queued: label_mismatch, models_disagree, low_confidence "
                   "(in that order).", nullable=False),
            Column("score", "DOUBLE", "2 * label_mismatch + disagreement (fraction of models whose top-1 differs "
                   "from the most common) + (1 - primary confidence) / (1 + models^2); higher first.",
                   nullable=False),
            Column("primary_label", "VARCHAR", "The primary model's top-1 class.", nullable=False),
            Column("primary_confidence", "DOUBLE", "The primary model's top-1 probability (0 to 1).",
                   nullable=False),
            Column("predictions", "STRUCT(model_name VARCHAR, class_label VARCHAR, confidence DOUBLE)[]",
                   "Each configured model's top-1 class and probability for the image, in configuration order "
                   "(models that did not predict it are left out).", nullable=False),
        ),
    ),
)


class Prediction(NamedTuple):
    """One model's top-1 for an image."""

    model_name: str
    class_label: str
    confidence: float


@dataclass
class ReviewSummary:
    """What build_review_queue found and stored."""

    models: tuple[str, ...] = ()  # the configured models, primary first
    considered: int = 0  # images the primary model predicted
    flagged: int = 0  # of those, images with at least one reason
    queued: int = 0  # rows stored (flagged, cut to the limit)
    reasons: Counter = field(default_factory=Counter)  # reason -> flagged images with it
    low_confidence: float = LOW_CONFIDENCE


def _float32(value: float) -> float:
    """A FLOAT column's value as its shortest decimal (0.3, not 0.30000001192092896)."""
    return float(str(np.float32(value)))


def configured_models(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The configured models' names in configuration order (primary first); none before the first refresh."""
    if not has_table(conn, "models"):
        return []
    return [name for (name,) in conn.execute(
        "SELECT model_name FROM models ORDER BY is_primary DESC, position, model_name").fetchall()]


def _vocabulary(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The class names a label may match: ``model_classes``, or every top-k class predicted when it is empty."""
    if has_table(conn, "model_classes"):
        names = [n for (n,) in conn.execute("SELECT class_label FROM model_classes ORDER BY class_index").fetchall()]
        if names:
            return names
    rows = conn.execute("SELECT DISTINCT unnest(topk_labels) FROM model_predictions ORDER BY 1").fetchall()
    return [name for (name,) in rows]


def _disagreement(predictions: list[Prediction]) -> float:
    """The fraction of the predictions whose top-1 differs from the most common top-1."""
    if len(predictions) < 2:
        return 0.0
    most_common = Counter(p.class_label for p in predictions).most_common(1)[0][1]
    return 1 - most_common / len(predictions)


def _ddl(description: TableDescription) -> str:
    """The column definitions of a described table (types, NOT NULL, PRIMARY KEY)."""
    return ", ".join(
        f'"{c.name}" {c.type}' + ("" if c.nullable else " NOT NULL") + (" PRIMARY KEY" if c.unique else "")
        for c in description.columns
    )


def build_review_queue(
    conn: duckdb.DuckDBPyConnection, low_confidence: float = LOW_CONFIDENCE, limit: int | None = None
) -> ReviewSummary:
    """Rank the images to review (module docstring) and store them as ``review_queue``, at most ``limit`` rows."""
    if not 0 <= low_confidence <= 1:
        raise ValueError(f"low_confidence must be between 0 and 1, got {low_confidence}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    models = configured_models(conn)
    summary = ReviewSummary(models=tuple(models), low_confidence=low_confidence)
    queue: list[tuple] = []
    if models and has_table(conn, "model_predictions") and has_table(conn, "images"):
        queue = _flagged(conn, models, low_confidence, summary)
    queue.sort(key=lambda row: (-row[4], row[0]))
    if limit is not None:
        queue = queue[:limit]
    summary.queued = len(queue)
    columns: dict[str, list] = {name: [] for name in _SCHEMA.names}
    for rank, (image_id, uri, label, reasons, score, predictions) in enumerate(queue, start=1):
        primary = predictions[0]
        row = (rank, image_id, uri, label, reasons, score, primary.class_label, primary.confidence,
               [p._asdict() for p in predictions])
        for name, value in zip(_SCHEMA.names, row):
            columns[name].append(value)
    rows = pa.table(columns, schema=_SCHEMA)
    with one_transaction(conn):
        conn.register("_review_rows", rows)
        conn.execute(f"CREATE OR REPLACE TABLE review_queue ({_ddl(REVIEW_TABLES['review_queue'])})")
        conn.execute("INSERT INTO review_queue SELECT * FROM _review_rows")
        conn.unregister("_review_rows")
    return summary


def _flagged(conn: duckdb.DuckDBPyConnection, models: list[str], low_confidence: float,
             summary: ReviewSummary) -> list[tuple]:
    """(image_id, uri, label, reasons, score, predictions) of every image with a reason; predictions primary first."""
    primary = models[0]
    predicted: dict[str, list[Prediction]] = {}
    rows = conn.execute(
        "SELECT p.image_id, p.model_name, p.class_label, p.confidence FROM model_predictions p "
        "JOIN models m USING (model_name) ORDER BY p.image_id, m.is_primary DESC, m.position, p.model_name"
    ).fetchall()
    for image_id, model_name, class_label, confidence in rows:
        predicted.setdefault(image_id, []).append(Prediction(model_name, class_label, _float32(confidence)))
    images = conn.execute(
        "SELECT i.image_id, i.uri, i.label FROM images i JOIN model_predictions p "
        "ON p.image_id = i.image_id AND p.model_name = ? ORDER BY i.image_id", [primary]
    ).fetchall()
    summary.considered = len(images)
    vocabulary = frozenset().union(*(synonyms(name) for name in _vocabulary(conn)))
    names: dict[str, frozenset[str]] = {}  # label -> its names when the model knows it, else empty
    doubt_weight = 1 / (1 + len(models) ** 2)
    flagged = []
    for image_id, uri, label in images:
        predictions = predicted[image_id]
        top1 = predictions[0]
        if label is not None and label not in names:
            truth = truth_names(label)
            names[label] = truth if truth & vocabulary else frozenset()
        mismatch = label is not None and bool(names[label]) and not names[label] & synonyms(top1.class_label)
        disagreement = _disagreement(predictions)
        reasons = [reason for reason, fired in zip(REASONS, (
            mismatch, len({p.class_label for p in predictions}) > 1, top1.confidence < low_confidence)) if fired]
        if not reasons:
            continue
        summary.reasons.update(reasons)
        score = 2 * mismatch + disagreement + (1 - top1.confidence) * doubt_weight
        flagged.append((image_id, uri, label, reasons, score, predictions))
    summary.flagged = len(flagged)
    return flagged


class QueuedImage(NamedTuple):
    """One stored ``review_queue`` row, with the image's key in the source for captions."""

    rank: int
    image_id: str
    uri: str
    label: str | None
    reasons: list[str]
    score: float
    primary_label: str
    primary_confidence: float
    predictions: list[Prediction]
    key: str  # images.relative_path, or the uri


def queued_images(conn: duckdb.DuckDBPyConnection, limit: int | None = None) -> list[QueuedImage]:
    """The stored queue in rank order (the first ``limit``)."""
    if not has_table(conn, "review_queue"):
        raise ValueError("there is no review_queue table yet: build_review_queue() makes it")
    key = "q.uri"
    if has_table(conn, "images"):
        key = "coalesce((SELECT relative_path FROM images i WHERE i.image_id = q.image_id), q.uri)"
    rows = conn.execute(
        f"SELECT q.rank, q.image_id, q.uri, q.label, q.reasons, q.score, q.primary_label, q.primary_confidence, "
        f"q.predictions, {key} FROM review_queue q ORDER BY q.rank"
        + (" LIMIT ?" if limit is not None else ""), [limit] if limit is not None else []
    ).fetchall()
    return [QueuedImage(*row[:8], [Prediction(**p) for p in row[8]], row[9]) for row in rows]


def queued_count(conn: duckdb.DuckDBPyConnection) -> int:
    """How many images the stored queue holds (0 before the first build)."""
    return conn.execute("SELECT count(*) FROM review_queue").fetchone()[0] if has_table(conn, "review_queue") else 0


# ---------------------------------------------------------------- CSV


def csv_header(models: list[str]) -> list[str]:
    """The CSV's columns: the queue's, then a ``<model>_label``, ``<model>_confidence`` pair per model."""
    base = ["rank", "image_id", "uri", "label", "reasons", "score", "primary_label", "primary_confidence"]
    return base + [f"{model}_{part}" for model in models for part in ("label", "confidence")]


def write_review_csv(conn: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Write the stored queue as a CSV (UTF-8, one row per image, reasons ``|``-joined; a model that did not
    predict an image has empty cells), atomically. Returns the rows written."""
    models = configured_models(conn)
    queue = queued_images(conn)
    with atomic_output(Path(path)) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(csv_header(models))
            for q in queue:
                by_model = {p.model_name: p for p in q.predictions}
                cells = [q.rank, q.image_id, q.uri, "" if q.label is None else q.label, "|".join(q.reasons),
                         repr(q.score), q.primary_label, repr(q.primary_confidence)]
                for model in models:
                    p = by_model.get(model)
                    cells += [p.class_label, repr(p.confidence)] if p else ["", ""]
                writer.writerow(cells)
    return len(queue)


# ---------------------------------------------------------------- Label Studio

# Label Studio's labelling interface for the tasks below: the image, and one choice among the classes.
LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="single">
{choices}
  </Choices>
</View>
"""


def uri_unchanged(uri: str) -> str:
    """The default image location for Label Studio: the uri as it is (fits http(s):// and s3:// uris that
    Label Studio can open or sign; map local paths with :func:`local_files_url` or your own callable)."""
    return uri


def local_files_url(document_root: str | Path) -> Callable[[str], str]:
    """Maps a local path under ``document_root`` to Label Studio's local-files URL,
    ``/data/local-files/?d=<path relative to the root>`` (serve with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
    and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document_root>); other uris pass unchanged."""
    root = Path(document_root).expanduser().resolve()

    def url(uri: str) -> str:
        try:
            relative = Path(uri).expanduser().resolve().relative_to(root)
        except ValueError:
            return uri
        return "/data/local-files/?d=" + quote(relative.as_posix())

    return url


def label_studio_task(q: QueuedImage, image_url: Callable[[str], str] = uri_unchanged) -> dict:
    """One Label Studio task: the image and the queue's facts as ``data``, each model's top-1 as a prediction
    (``model_version`` = the model's name, ``score`` = its confidence, a ``choices`` result)."""
    return {
        "data": {"image": image_url(q.uri), "image_id": q.image_id, "rank": q.rank, "reasons": list(q.reasons),
                 "label": q.label},
        "predictions": [
            {"model_version": p.model_name, "score": p.confidence, "result": [
                {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [p.class_label]}}
            ]}
            for p in q.predictions
        ],
    }


def write_label_studio_tasks(
    conn: duckdb.DuckDBPyConnection, path: Path, image_url: Callable[[str], str] | None = None
) -> int:
    """Write the stored queue as Label Studio tasks with pre-annotations, one JSON task per line (JSON Lines;
    for a Label Studio that imports only .json, put the lines in a list), atomically. ``image_url`` maps a
    uri to what Label Studio can open (default: unchanged). Returns the tasks written."""
    queue = queued_images(conn)
    with atomic_output(Path(path)) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for q in queue:
                fh.write(json.dumps(label_studio_task(q, image_url or uri_unchanged), ensure_ascii=False) + "\n")
    return len(queue)


def label_studio_classes(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The choices offered: every top-1 class in the queue, and the class each queued image's label names, sorted."""
    queue = queued_images(conn)
    classes = {p.class_label for q in queue for p in q.predictions}
    labels = {q.label for q in queue if q.label is not None}
    if labels:
        vocabulary = _vocabulary(conn)
        for label in labels:
            truth = truth_names(label)
            classes.update(name for name in vocabulary if truth & synonyms(name))
    return sorted(classes)


def label_studio_config(conn: duckdb.DuckDBPyConnection) -> str:
    """:data:`LABEL_STUDIO_CONFIG` with one ``<Choice>`` per class of :func:`label_studio_classes` (XML-escaped)."""
    choices = "\n".join(
        "    " + ET.tostring(ET.Element("Choice", value=name), encoding="unicode")
        for name in label_studio_classes(conn)
    )
    return LABEL_STUDIO_CONFIG.format(choices=choices)


def write_label_studio_config(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Write :func:`label_studio_config` (paste it as the project's labelling interface), atomically."""
    text = label_studio_config(conn)
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- report and UI


def review_html(
    conn: duckdb.DuckDBPyConnection,
    thumbnail: Callable[[str], str | None],
    limit: int = 48,
    files: dict[str, str] | None = None,
) -> str:
    """The report's review section: how many are queued, where the files are (``files``: what -> path), and a
    thumbnail card per image (first ``limit``) captioned with its rank, reasons and each model's top-1."""
    total = queued_count(conn)
    parts = ['<h2>Review queue</h2><div id="review-queue">']
    if not total:
        parts.append("<p>No image to review: the labels, the models and their confidences agree.</p>")
    else:
        shown = queued_images(conn, limit)
        more = f" (the first {len(shown)} below)" if len(shown) < total else ""
        parts.append(f"<p>{total} image{'s' if total != 1 else ''} to review{more}, most doubtful first.</p>")
    if files:
        items = "".join(f"<li>{_e(what)}: <code>{_e(where)}</code></li>" for what, where in files.items())
        parts.append(f"<ul class=\"files\">{items}</ul>")
    if total:
        cards, card = [], Cards(thumbnail).card
        for q in shown:
            label = f" · label {_e(q.label)}" if q.label is not None else ""
            models = "<br>".join(f"{_e(p.model_name)}: {_e(p.class_label)} {p.confidence:.2f}" for p in q.predictions)
            caption = (f"#{q.rank} {_e(image_name(q.key))}<br><span class=\"bad\">{_e(', '.join(q.reasons))}</span>"
                       f"{label}<br><small>{models}</small>")
            cards.append(card(q.uri, q.key, caption))
        parts.append(f'<div class="cards">{"".join(cards)}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def review_markdown(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> str:
    """The queue's first ``limit`` images as a Markdown table (one column per model) for the Dagster UI."""
    total = queued_count(conn)
    if not total:
        return "No image to review."
    models = configured_models(conn)
    shown = queued_images(conn, limit)
    rows = []
    for q in shown:
        by_model = {p.model_name: p for p in q.predictions}
        cells = [f"{by_model[m].class_label} ({by_model[m].confidence:.2f})" if m in by_model else "–" for m in models]
        rows.append((q.rank, image_name(q.key), "–" if q.label is None else q.label, ", ".join(q.reasons),
                     f"{q.score:.3f}", *cells))
    head = f"{total} image{'s' if total != 1 else ''} to review" + (
        f" (the first {len(shown)}):" if len(shown) < total else ":")
    return head + "\n\n" + table(("rank", "image", "label", "reasons", "score", *models), rows)
