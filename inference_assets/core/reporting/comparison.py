"""How the configured models compare: where their top-1 classes agree, which images change class
between two models, and how accurate each one is on the labelled images.

Every unordered pair of models is compared, the earlier one in ``models.position`` order as
``model_a``, over the images both predicted (``model_predictions``). Labels match classes exactly
as in :mod:`evaluation` (``truth_names(label) & synonyms(class_label)``); a label that matches none
of the model classes' names (``model_classes``, shared by every compared model) is unknown and left
out. The matching runs in Python once per distinct label (a small table: label -> the class names
it matches); everything per image runs in DuckDB.

Tables (replaced together in one transaction):

- ``comparison_pairs``: one row per pair: images, agreements, top-1 accuracy of each on the labelled images;
- ``comparison_classes``: agreement per pair and ``model_a``'s top-1 class;
- ``comparison_changes``: images whose top-1 class differs, most confident first (at most ``max_changed`` a pair);
- ``model_accuracy``: one row per model: its top-1 and top-5 accuracy on the labelled images;
- ``comparison_correctness``: labelled images one model of a pair gets right (top-1) and the other wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from inference_assets.core.reporting.cards import Cards, image_name
from inference_assets.core.reporting.cards import escape as _e
from inference_assets.core.reporting.evaluation import synonyms, truth_names
from inference_assets.core.reporting.markdown import table
from inference_assets.core.warehouse.database import (
    Column,
    TableDescription,
    has_table,
    one_transaction,
    tables_by_name,
)

MAX_CHANGED = 500  # rows kept in comparison_changes per pair of models

_A = Column("model_a", "VARCHAR", "The pair's first model (models.model_name; the earlier in models.position).")
_B = Column("model_b", "VARCHAR", "The pair's second model (models.model_name).")
_IMAGE = Column("image_id", "VARCHAR", "The image (images.image_id).")
_URI = Column("uri", "VARCHAR", "How the source reopens the image (model_predictions.uri).")
_LABEL = Column("label", "VARCHAR", "The image's own label (folder name, WordNet id or a table's label column).")
_A_LABEL = Column("a_label", "VARCHAR", "model_a's top-1 class.")
_B_LABEL = Column("b_label", "VARCHAR", "model_b's top-1 class.")

# The tables compare_models() makes; a test checks them against the real tables (duckdb_columns()).
COMPARISON_TABLES: dict[str, TableDescription] = tables_by_name(
    TableDescription(
        "comparison_pairs",
        "One row per pair of models: how often their top-1 classes agree on the images both predicted, and "
        "each one's top-1 accuracy on those whose label the models know.",
        (
            _A,
            _B,
            Column("images", "BIGINT", "Images both models predicted."),
            Column("agreements", "BIGINT", "Of those, images with the same top-1 class."),
            Column("agreement", "DOUBLE", "agreements / images; null when no image was predicted by both."),
            Column("labelled", "BIGINT", "Images both predicted whose label is one of the models' classes."),
            Column("a_top1_correct", "BIGINT", "Of the labelled images, how many model_a gets right (top-1)."),
            Column("b_top1_correct", "BIGINT", "Of the labelled images, how many model_b gets right (top-1)."),
            Column("a_only_correct", "BIGINT", "Labelled images model_a gets right and model_b wrong."),
            Column("b_only_correct", "BIGINT", "Labelled images model_b gets right and model_a wrong."),
        ),
    ),
    TableDescription(
        "comparison_classes",
        "Agreement per pair of models and model_a's top-1 class, over the images both predicted.",
        (
            _A,
            _B,
            Column("class_label", "VARCHAR", "model_a's top-1 class."),
            Column("images", "BIGINT", "Images both predicted that model_a classes as class_label."),
            Column("agreements", "BIGINT", "Of those, images model_b classes the same."),
            Column("agreement", "DOUBLE", "agreements / images."),
        ),
    ),
    TableDescription(
        "comparison_changes",
        f"Images whose top-1 class differs between the two models of a pair, the more confident first (the "
        f"larger of the two confidences; at most {MAX_CHANGED} a pair).",
        (
            _A,
            _B,
            _IMAGE,
            _URI,
            _LABEL,
            _A_LABEL,
            Column("a_confidence", "FLOAT", "model_a's probability of its top-1 class."),
            _B_LABEL,
            Column("b_confidence", "FLOAT", "model_b's probability of its top-1 class."),
        ),
    ),
    TableDescription(
        "model_accuracy",
        "One row per configured model: its accuracy on the labelled images it predicted.",
        (
            Column("model_name", "VARCHAR", "The configured model (models.model_name)."),
            Column("position", "INTEGER", "Its place in the configuration (0 = the primary model)."),
            Column("kind", "VARCHAR", "model or ensemble."),
            Column("labelled", "BIGINT", "Images it predicted that carry a label."),
            Column("evaluated", "BIGINT", "Of those, images whose label is one of the model's classes."),
            Column("top1_correct", "BIGINT", "Evaluated images whose label is the top-1 class."),
            Column("top5_correct", "BIGINT", "Evaluated images whose label is among the top-5 classes."),
            Column("top1_accuracy", "DOUBLE", "top1_correct / evaluated; null when nothing was evaluated."),
            Column("top5_accuracy", "DOUBLE", "top5_correct / evaluated; null when nothing was evaluated."),
        ),
    ),
    TableDescription(
        "comparison_correctness",
        "Labelled images (their label is one of the models' classes) that one model of a pair gets right "
        "(top-1) and the other wrong.",
        (
            _A,
            _B,
            _IMAGE,
            _URI,
            _LABEL,
            _A_LABEL,
            _B_LABEL,
            Column("right", "VARCHAR", "Which model gets it right: 'a' or 'b'."),
        ),
    ),
)


@dataclass(frozen=True)
class PairAgreement:
    """One row of ``comparison_pairs``."""

    model_a: str
    model_b: str
    images: int
    agreements: int
    agreement: float | None
    labelled: int
    a_top1_correct: int
    b_top1_correct: int
    a_only_correct: int
    b_only_correct: int

    @property
    def changed(self) -> int:
        """Images whose top-1 class differs between the two models."""
        return self.images - self.agreements


@dataclass(frozen=True)
class ComparisonSummary:
    """What compare_models() stored: the models in order and each pair's numbers."""

    models: tuple[str, ...]
    pairs: tuple[PairAgreement, ...]


def _label_classes(conn: duckdb.DuckDBPyConnection) -> pa.Table:
    """label -> the predicted class names it matches, for each distinct label the models know.

    The vocabulary is the synonyms of ``model_classes``' names; without that table (or with it
    empty) the names the models predicted (their top-k labels)."""
    predicted = [
        name for (name,) in conn.execute(
            "SELECT DISTINCT unnest(topk_labels[1:5]) FROM model_predictions "
            "UNION SELECT DISTINCT class_label FROM model_predictions"
        ).fetchall() if name is not None
    ]
    names = []
    if has_table(conn, "model_classes"):
        names = [name for (name,) in conn.execute("SELECT class_label FROM model_classes").fetchall()]
    vocabulary = frozenset().union(*(synonyms(name) for name in names or predicted))
    by_name: dict[str, set[str]] = {}  # a normalized name -> the predicted class names it is a synonym of
    for class_label in predicted:
        for name in synonyms(class_label):
            by_name.setdefault(name, set()).add(class_label)
    labels, classes = [], []
    for (label,) in conn.execute("SELECT DISTINCT label FROM model_predictions WHERE label IS NOT NULL").fetchall():
        truth = truth_names(label)
        if truth & vocabulary:
            labels.append(label)
            classes.append(sorted(set().union(*(by_name.get(name, ()) for name in truth))))
    return pa.table({"label": pa.array(labels, pa.string()), "classes": pa.array(classes, pa.list_(pa.string()))})


# each pair of models once: a before b in configuration order
_PAIRS = """
WITH ordered AS (SELECT model_name, row_number() OVER (ORDER BY position, model_name) AS rank FROM models)
SELECT a.model_name AS model_a, b.model_name AS model_b, a.rank AS rank_a, b.rank AS rank_b
FROM ordered a JOIN ordered b ON a.rank < b.rank
"""

# one row per pair and image both predicted; a_right/b_right are null unless the label is known
_BOTH = """
SELECT p.model_a, p.model_b, p.rank_a, p.rank_b, a.image_id, a.uri, a.label,
       a.class_index = b.class_index AS agree,
       a.class_label AS a_label, a.confidence AS a_confidence, b.class_label AS b_label, b.confidence AS b_confidence,
       list_contains(k.classes, a.class_label) AS a_right, list_contains(k.classes, b.class_label) AS b_right
FROM _comparison_pairs p
JOIN model_predictions a ON a.model_name = p.model_a
JOIN model_predictions b ON b.model_name = p.model_b AND b.image_id = a.image_id
LEFT JOIN _comparison_labels k ON k.label = a.label
"""

_STATEMENTS = {
    "comparison_pairs": """
SELECT p.model_a, p.model_b,
       count(x.image_id) AS images,
       count(x.image_id) FILTER (WHERE x.agree) AS agreements,
       count(x.image_id) FILTER (WHERE x.agree) / nullif(count(x.image_id), 0) AS agreement,
       count(x.a_right) AS labelled,
       count(x.image_id) FILTER (WHERE x.a_right) AS a_top1_correct,
       count(x.image_id) FILTER (WHERE x.b_right) AS b_top1_correct,
       count(x.image_id) FILTER (WHERE x.a_right AND NOT x.b_right) AS a_only_correct,
       count(x.image_id) FILTER (WHERE x.b_right AND NOT x.a_right) AS b_only_correct
FROM _comparison_pairs p LEFT JOIN _comparison_both x ON x.model_a = p.model_a AND x.model_b = p.model_b
GROUP BY p.model_a, p.model_b, p.rank_a, p.rank_b ORDER BY p.rank_a, p.rank_b
""",
    "comparison_classes": """
SELECT model_a, model_b, a_label AS class_label, count(*) AS images,
       count(*) FILTER (WHERE agree) AS agreements, count(*) FILTER (WHERE agree) / count(*) AS agreement
FROM _comparison_both GROUP BY model_a, model_b, rank_a, rank_b, a_label
ORDER BY rank_a, rank_b, images DESC, class_label
""",
    "comparison_changes": """
SELECT model_a, model_b, image_id, uri, label, a_label, a_confidence, b_label, b_confidence
FROM _comparison_both WHERE NOT agree
QUALIFY row_number() OVER (PARTITION BY rank_a, rank_b
                           ORDER BY greatest(a_confidence, b_confidence) DESC, image_id) <= $max_changed
ORDER BY rank_a, rank_b, greatest(a_confidence, b_confidence) DESC, image_id
""",
    "model_accuracy": """
SELECT m.model_name, m.position, m.kind,
       count(p.label) AS labelled,
       count(k.label) AS evaluated,
       count(k.label) FILTER (WHERE list_contains(k.classes, p.class_label)) AS top1_correct,
       count(k.label) FILTER (WHERE list_has_any(k.classes, p.topk_labels[1:5])) AS top5_correct,
       count(k.label) FILTER (WHERE list_contains(k.classes, p.class_label)) / nullif(count(k.label), 0)
           AS top1_accuracy,
       count(k.label) FILTER (WHERE list_has_any(k.classes, p.topk_labels[1:5])) / nullif(count(k.label), 0)
           AS top5_accuracy
FROM models m
LEFT JOIN model_predictions p ON p.model_name = m.model_name
LEFT JOIN _comparison_labels k ON k.label = p.label
GROUP BY m.model_name, m.position, m.kind ORDER BY m.position, m.model_name
""",
    "comparison_correctness": """
SELECT model_a, model_b, image_id, uri, label, a_label, b_label, CASE WHEN a_right THEN 'a' ELSE 'b' END AS "right"
FROM _comparison_both WHERE a_right <> b_right
ORDER BY rank_a, rank_b, "right", image_id
""",
}


def compare_models(conn: duckdb.DuckDBPyConnection, max_changed: int = MAX_CHANGED) -> ComparisonSummary:
    """Compute and store the comparison tables from ``models`` and ``model_predictions``."""
    missing = [name for name in ("models", "model_predictions") if not has_table(conn, name)]
    if missing:
        raise ValueError(f"comparing models needs the {' and '.join(missing)} table(s): refresh the warehouse first")
    conn.register("_comparison_labels", _label_classes(conn))
    try:
        with one_transaction(conn):
            conn.execute(f"CREATE OR REPLACE TEMP VIEW _comparison_pairs AS {_PAIRS}")
            conn.execute(f"CREATE OR REPLACE TEMP VIEW _comparison_both AS {_BOTH}")
            for name, statement in _STATEMENTS.items():
                parameters = {"max_changed": max_changed} if "$max_changed" in statement else {}
                conn.execute(f"CREATE OR REPLACE TABLE {name} AS {statement}", parameters)
            conn.execute("DROP VIEW _comparison_both")
            conn.execute("DROP VIEW _comparison_pairs")
    finally:
        conn.unregister("_comparison_labels")
    models = conn.execute("SELECT model_name FROM models ORDER BY position, model_name").fetchall()
    return ComparisonSummary(tuple(name for (name,) in models), stored_pairs(conn))


def stored_pairs(conn: duckdb.DuckDBPyConnection) -> tuple[PairAgreement, ...]:
    """The stored ``comparison_pairs`` rows in configuration order; empty before the first comparison."""
    if not has_table(conn, "comparison_pairs"):
        return ()
    columns = ", ".join(f'p."{column.name}"' for column in COMPARISON_TABLES["comparison_pairs"].columns)
    query = f"SELECT {columns} FROM comparison_pairs p"
    if has_table(conn, "models"):  # configuration order, whatever order DuckDB keeps rows in
        query += (" LEFT JOIN models a ON a.model_name = p.model_a LEFT JOIN models b ON b.model_name = p.model_b"
                  " ORDER BY a.position, p.model_a, b.position, p.model_b")
    return tuple(PairAgreement(*row) for row in conn.execute(query).fetchall())


def _compared(conn: duckdb.DuckDBPyConnection) -> bool:
    """Two or more models, and a stored comparison of them."""
    if not has_table(conn, "models") or not all(has_table(conn, name) for name in COMPARISON_TABLES):
        return False
    return conn.execute("SELECT count(*) FROM models").fetchone()[0] >= 2


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def comparison_html(
    conn: duckdb.DuckDBPyConnection, thumbnail: Callable[[str], str | None], changes_per_pair: int = 12
) -> str:
    """The report's comparison section (``<h2>`` and ``<div id="comparison">``): agreement per pair, each
    model's accuracy and, per pair, thumbnails of the images whose top-1 class changed; "" with fewer than
    two models or no stored comparison. ``thumbnail(uri)`` gives a ``data:`` URI or None."""
    if not _compared(conn):
        return ""
    card = Cards(thumbnail).card  # an image changed in several pairs is decoded once

    parts = ['<h2>Model comparison</h2><div id="comparison">', '<table id="comparison-pairs"><tr><th>model A</th>'
             "<th>model B</th><th>images</th><th>agreement</th><th>changed</th><th>labelled</th>"
             "<th>A top-1</th><th>B top-1</th><th>only A right</th><th>only B right</th></tr>"]
    pairs = stored_pairs(conn)
    for p in pairs:
        parts.append(
            f"<tr><td>{_e(p.model_a)}</td><td>{_e(p.model_b)}</td><td>{p.images}</td>"
            f"<td>{_e(_percent(p.agreements, p.images))}</td><td>{p.changed}</td><td>{p.labelled}</td>"
            f"<td>{_e(_percent(p.a_top1_correct, p.labelled))}</td>"
            f"<td>{_e(_percent(p.b_top1_correct, p.labelled))}</td>"
            f"<td>{p.a_only_correct}</td><td>{p.b_only_correct}</td></tr>"
        )
    parts.append('</table><h3>Accuracy of each model</h3><table id="model-accuracy"><tr><th>model</th><th>kind</th>'
                 "<th>labelled</th><th>evaluated</th><th>top-1</th><th>top-5</th></tr>")
    accuracy = conn.execute(
        "SELECT model_name, kind, labelled, evaluated, top1_correct, top5_correct FROM model_accuracy "
        "ORDER BY position, model_name"
    ).fetchall()
    parts += [
        f"<tr><td>{_e(name)}</td><td>{_e(kind)}</td><td>{labelled}</td><td>{evaluated}</td>"
        f"<td>{_e(_percent(top1, evaluated))}</td><td>{_e(_percent(top5, evaluated))}</td></tr>"
        for name, kind, labelled, evaluated, top1, top5 in accuracy
    ]
    parts.append("</table>")
    # the image's key in the source (images.relative_path) names it in captions; its uri where that is unknown
    key, joined = "c.uri", "comparison_changes c"
    if has_table(conn, "images"):
        key, joined = "coalesce(i.relative_path, c.uri)", joined + " LEFT JOIN images i ON i.image_id = c.image_id"
    for p in pairs:
        rows = conn.execute(
            f"SELECT c.uri, {key}, c.label, c.a_label, c.a_confidence, c.b_label, c.b_confidence FROM {joined} "
            "WHERE c.model_a = ? AND c.model_b = ? ORDER BY greatest(c.a_confidence, c.b_confidence) DESC, c.image_id "
            "LIMIT ?",
            [p.model_a, p.model_b, changes_per_pair],
        ).fetchall()
        cards = "".join(
            card(uri, key, f"{_e(image_name(key))}" + (f" <small>(label {_e(label)})</small>" if label is not None else "")
                 + f"<br>{_e(p.model_a)}: {_e(a_label)} {a_conf:.2f}<br>{_e(p.model_b)}: {_e(b_label)} {b_conf:.2f}")
            for uri, key, label, a_label, a_conf, b_label, b_conf in rows
        )
        parts.append(
            f"<h3>{_e(p.model_a)} vs {_e(p.model_b)}: {p.changed} of {p.images} images change class"
            f"{' (the most confident shown)' if p.changed > len(rows) else ''}</h3>"
            f'<div class="cards" id="{_e(f"changes-{p.model_a}-{p.model_b}")}">{cards}</div>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def comparison_markdown(conn: duckdb.DuckDBPyConnection) -> str:
    """The stored agreement per pair of models as a Markdown table (Dagster UI metadata); "" with fewer
    than two models or no stored comparison."""
    if not _compared(conn):
        return ""
    headers = ("model A", "model B", "images", "agreement", "changed", "labelled", "A top-1", "B top-1")
    rows = [
        (p.model_a, p.model_b, p.images, _percent(p.agreements, p.images), p.changed, p.labelled,
         _percent(p.a_top1_correct, p.labelled), _percent(p.b_top1_correct, p.labelled))
        for p in stored_pairs(conn)
    ]
    return table(headers, rows)
