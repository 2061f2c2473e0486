"""The model comparison on a hand-built warehouse: three models' predictions of a few labelled
images (folder labels, a WordNet id, a label no class has, an unlabelled image, a hostile label),
every stored number checked against a direct computation over the inserted rows."""

from __future__ import annotations

from html.parser import HTMLParser

import duckdb
import pytest

from inference_assets.core.reporting.comparison import (
    COMPARISON_TABLES,
    compare_models,
    comparison_html,
    comparison_markdown,
)
from inference_assets.core.warehouse.database import table_columns

pytestmark = pytest.mark.fast

HOSTILE = "<script>alert(1)</script>"
CLASSES = ["tabby, tabby cat", "tiger cat", "espresso", "cup", HOSTILE, "Egyptian cat"]

# image -> (relative path, label); 'holiday' is no class, i7 has no label
IMAGES = {
    "i1": ("tabby/a.jpg", "tabby"),
    "i2": ("tabby/b.jpg", "tabby"),
    "i3": ("n02123045/c.jpg", "n02123045"),  # ImageNet's WordNet id of 'tabby, tabby cat'
    "i4": ("Tiger_Cat/d.jpg", "Tiger_Cat"),
    "i5": ("espresso/e.jpg", "espresso"),
    "i6": ("holiday/f.jpg", "holiday"),
    "i7": ("g.jpg", None),
    "i8": (f"evil/{HOSTILE}.jpg", HOSTILE),
}
# what the test knows about the labels: the class indices each known label stands for
RIGHT = {"tabby": {0}, "n02123045": {0}, "Tiger_Cat": {1}, "espresso": {2}, HOSTILE: {4}}

# configured in this order; positions make lite2 first, and names sort otherwise
MODELS = [("lite0", 1, "model"), ("lite_mean", 2, "ensemble"), ("lite2", 0, "model")]
ORDER = ["lite2", "lite0", "lite_mean"]  # by position
# model -> image -> (top-k class indices, most probable first; the top-1's confidence)
PREDICTIONS = {
    "lite2": {
        "i1": ([0, 1, 5], 0.9), "i2": ([1, 0], 0.6), "i3": ([0], 0.8), "i4": ([1, 0], 0.7),
        "i5": ([3, 2], 0.5), "i6": ([2], 0.4), "i7": ([3], 0.3), "i8": ([4, 2], 0.95),
    },
    "lite0": {  # no prediction of i8
        "i1": ([0], 0.85), "i2": ([0, 1], 0.55), "i3": ([5, 1, 3, 2, 4, 0], 0.5),  # i3's class 6th: no top-5 hit
        "i4": ([0, 1], 0.65), "i5": ([2, 3], 0.7), "i6": ([3], 0.45), "i7": ([3], 0.2),
    },
    "lite_mean": {
        "i1": ([0], 0.88), "i2": ([0, 1], 0.5), "i3": ([0, 5], 0.6), "i4": ([1, 0], 0.6),
        "i5": ([2, 3], 0.7), "i6": ([2], 0.42), "i7": ([4, 3], 0.25), "i8": ([2, 4], 0.5),
    },
}

_DDL = """
CREATE TABLE images (image_id VARCHAR PRIMARY KEY, relative_path VARCHAR NOT NULL, uri VARCHAR NOT NULL,
  size_bytes BIGINT, modified_at TIMESTAMPTZ, content_hash VARCHAR, label VARCHAR, partition VARCHAR NOT NULL,
  error VARCHAR);
CREATE TABLE model_predictions (model_name VARCHAR NOT NULL, image_id VARCHAR NOT NULL, uri VARCHAR NOT NULL,
  partition VARCHAR NOT NULL, label VARCHAR, class_index INTEGER NOT NULL, class_label VARCHAR NOT NULL,
  confidence FLOAT NOT NULL, topk_indices INTEGER[] NOT NULL, topk_labels VARCHAR[] NOT NULL,
  topk_probs FLOAT[] NOT NULL, model VARCHAR NOT NULL, model_id VARCHAR, runtime VARCHAR,
  content_hash VARCHAR NOT NULL, predicted_at TIMESTAMPTZ, PRIMARY KEY (model_name, image_id));
CREATE TABLE models (model_name VARCHAR PRIMARY KEY, position INTEGER NOT NULL, kind VARCHAR NOT NULL,
  is_primary BOOLEAN NOT NULL, model VARCHAR NOT NULL, tta VARCHAR, members VARCHAR[], member_weights DOUBLE[],
  predictions BIGINT NOT NULL);
CREATE TABLE model_classes (class_index INTEGER, class_label VARCHAR);
"""


def _uri(image_id: str) -> str:
    return f"/data/{IMAGES[image_id][0]}"


def _warehouse(path, models=MODELS, predictions=PREDICTIONS) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    conn.execute(_DDL)
    conn.executemany("INSERT INTO model_classes VALUES (?, ?)", list(enumerate(CLASSES)))
    conn.executemany(
        "INSERT INTO images VALUES (?, ?, ?, 1, NULL, ?, ?, 'shard-00', NULL)",
        [(i, path_, _uri(i), f"sha256:{i}", label) for i, (path_, label) in IMAGES.items()],
    )
    for name, position, kind in models:
        conn.execute("INSERT INTO models VALUES (?, ?, ?, ?, 'arch', NULL, NULL, NULL, ?)",
                     [name, position, kind, position == 0, len(predictions.get(name, {}))])
    rows = []
    for name, by_image in predictions.items():
        for image_id, (topk, confidence) in by_image.items():
            probs = [confidence] + [0.01] * (len(topk) - 1)
            rows.append((name, image_id, _uri(image_id), IMAGES[image_id][1], topk[0], CLASSES[topk[0]], confidence,
                         topk, [CLASSES[k] for k in topk], probs, f"sha256:{image_id}"))
    for row in rows:
        conn.execute(
            "INSERT INTO model_predictions VALUES "
            "(?, ?, ?, 'shard-00', ?, ?, ?, ?, ?, ?, ?, 'arch', NULL, NULL, ?, NULL)",
            row,
        )
    return conn


def _f32(x: float) -> float:
    """``x`` as DuckDB's FLOAT stores it."""
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def _top1(name: str, image_id: str) -> int:
    return PREDICTIONS[name][image_id][0][0]


def _right(name: str, image_id: str) -> bool:
    return _top1(name, image_id) in RIGHT[IMAGES[image_id][1]]


def _pairs():
    return [(a, b) for i, a in enumerate(ORDER) for b in ORDER[i + 1:]]


def _common(a: str, b: str) -> list[str]:
    return sorted(set(PREDICTIONS[a]) & set(PREDICTIONS[b]))


def _known(image_id: str) -> bool:
    return IMAGES[image_id][1] in RIGHT


def _expected_changes(a: str, b: str) -> list[tuple]:
    changed = [i for i in _common(a, b) if _top1(a, i) != _top1(b, i)]
    changed.sort(key=lambda i: (-max(PREDICTIONS[a][i][1], PREDICTIONS[b][i][1]), i))
    return [
        (a, b, i, _uri(i), IMAGES[i][1], CLASSES[_top1(a, i)], _f32(PREDICTIONS[a][i][1]),
         CLASSES[_top1(b, i)], _f32(PREDICTIONS[b][i][1]))
        for i in changed
    ]


def _shape(columns):
    return [(c.name, c.type, c.nullable, c.unique) for c in columns]


def _check_described(conn):
    for name, described in COMPARISON_TABLES.items():
        assert _shape(table_columns(conn, name)) == _shape(described.columns), f"{name}: described != DuckDB's"
        assert described.description.strip() and all(c.description.strip() for c in described.columns), name


def test_pairs_agreement_and_accuracy_equal_a_direct_computation(tmp_path):
    conn = _warehouse(tmp_path / "wh.duckdb")
    summary = compare_models(conn)
    assert summary.models == tuple(ORDER)
    _check_described(conn)

    expected_pairs = []
    for a, b in _pairs():
        common = _common(a, b)
        labelled = [i for i in common if _known(i)]
        agreements = sum(_top1(a, i) == _top1(b, i) for i in common)
        expected_pairs.append((
            a, b, len(common), agreements, agreements / len(common), len(labelled),
            sum(_right(a, i) for i in labelled), sum(_right(b, i) for i in labelled),
            sum(_right(a, i) and not _right(b, i) for i in labelled),
            sum(_right(b, i) and not _right(a, i) for i in labelled),
        ))
    assert conn.execute("FROM comparison_pairs").fetchall() == expected_pairs
    assert [tuple(vars(p).values()) for p in summary.pairs] == expected_pairs
    # a sanity anchor, counted by hand: lite2 and lite0 share i1..i7 and agree on i1 and i7
    assert expected_pairs[0][:4] == ("lite2", "lite0", 7, 2)

    expected_accuracy = []
    for name, position, kind in sorted(MODELS, key=lambda m: m[1]):
        rows = PREDICTIONS[name]
        labelled = [i for i in rows if IMAGES[i][1] is not None]
        evaluated = [i for i in labelled if _known(i)]
        top1 = sum(_right(name, i) for i in evaluated)
        top5 = sum(bool(RIGHT[IMAGES[i][1]] & set(rows[i][0][:5])) for i in evaluated)
        expected_accuracy.append((name, position, kind, len(labelled), len(evaluated), top1, top5,
                                  top1 / len(evaluated), top5 / len(evaluated)))
    assert conn.execute("FROM model_accuracy").fetchall() == expected_accuracy
    # by hand: lite0 predicted 6 labelled images, 5 known (not holiday); i1, i2, i5 right; i3's class is 6th
    assert expected_accuracy[1][:7] == ("lite0", 1, "model", 6, 5, 3, 4)

    expected_classes = []
    for a, b in _pairs():
        per_class: dict[str, list[int]] = {}
        for i in _common(a, b):
            counts = per_class.setdefault(CLASSES[_top1(a, i)], [0, 0])
            counts[0] += 1
            counts[1] += _top1(a, i) == _top1(b, i)
        for label, (n, agree) in sorted(per_class.items(), key=lambda item: (-item[1][0], item[0])):
            expected_classes.append((a, b, label, n, agree, agree / n))
    assert conn.execute("FROM comparison_classes").fetchall() == expected_classes

    expected_correctness = sorted(
        ((a, b, i, _uri(i), IMAGES[i][1], CLASSES[_top1(a, i)], CLASSES[_top1(b, i)], "a" if _right(a, i) else "b")
         for a, b in _pairs() for i in _common(a, b) if _known(i) and _right(a, i) != _right(b, i)),
        key=lambda row: (ORDER.index(row[0]), ORDER.index(row[1]), row[7], row[2]),
    )
    assert conn.execute("FROM comparison_correctness").fetchall() == expected_correctness


def test_changes_are_exactly_the_images_whose_top1_class_differs(tmp_path):
    conn = _warehouse(tmp_path / "wh.duckdb")
    compare_models(conn)
    expected = [row for a, b in _pairs() for row in _expected_changes(a, b)]
    assert conn.execute("FROM comparison_changes").fetchall() == expected
    for a, b in _pairs():  # every pair's changed count is images - agreements
        (changed,) = conn.execute("SELECT images - agreements FROM comparison_pairs WHERE model_a = ? AND model_b = ?",
                                  [a, b]).fetchone()
        assert changed == len(_expected_changes(a, b)) > 2

    compare_models(conn, max_changed=2)  # the two most confident of each pair
    assert conn.execute("FROM comparison_changes").fetchall() == [
        row for a, b in _pairs() for row in _expected_changes(a, b)[:2]]


def test_the_html_section_escapes_labels_and_shows_each_pairs_changes(tmp_path):
    conn = _warehouse(tmp_path / "wh.duckdb")
    compare_models(conn)
    calls = []

    def thumbnail(uri: str) -> str | None:
        calls.append(uri)
        return None if uri == _uri("i2") else "data:image/png;base64,iVBORw0KGgo="

    text = comparison_html(conn, thumbnail, changes_per_pair=3)
    assert text.startswith('<h2>Model comparison</h2><div id="comparison">')
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(calls) == len(set(calls)), "an image was decoded twice"

    class Cards(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.where, self.cards, self.text = [], None, {}, []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.tags.append(tag)
            if (attrs.get("id") or "").startswith("changes-"):
                self.where = attrs["id"]
                self.cards[self.where] = []
            elif attrs.get("class") == "card" and self.where:
                self.cards[self.where].append(attrs["title"])

        def handle_data(self, data):
            self.text.append(data)

    parser = Cards()
    parser.feed(text)
    assert "script" not in parser.tags and "model-accuracy" in text
    assert f"lite2: {HOSTILE} 0.95" in "".join(parser.text)  # a hostile class, shown as text
    assert f"(label {HOSTILE})" in "".join(parser.text)  # a hostile label too
    assert parser.cards == {
        f"changes-{a}-{b}": [row[3] for row in _expected_changes(a, b)[:3]] for a, b in _pairs()
    }
    assert text.count('<div class="bad">no picture</div>') == sum(
        _uri("i2") in [row[3] for row in _expected_changes(a, b)[:3]] for a, b in _pairs())
    # lite2 vs lite0 agree on 2 of 7 images: 28.6 %
    assert "<td>lite2</td><td>lite0</td><td>7</td><td>28.6%</td>" in text

    markdown = comparison_markdown(conn)
    header = "| model A | model B | images | agreement | changed | labelled | A top-1 | B top-1 |"
    assert markdown.splitlines()[0] == header
    assert "| lite2 | lite0 | 7 | 28.6% | 5 |" in markdown
    assert len(markdown.splitlines()) == 2 + len(_pairs())


def test_an_empty_or_single_model_warehouse_gives_empty_tables_and_no_section(tmp_path):
    conn = _warehouse(tmp_path / "empty.duckdb", models=[], predictions={})
    summary = compare_models(conn)
    assert (summary.models, summary.pairs) == ((), ())
    _check_described(conn)  # typed all the same
    assert all(conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,) for name in COMPARISON_TABLES)
    assert comparison_html(conn, lambda uri: None) == "" and comparison_markdown(conn) == ""

    one = {"lite2": PREDICTIONS["lite2"]}
    conn = _warehouse(tmp_path / "one.duckdb", models=[("lite2", 0, "model")], predictions=one)
    summary = compare_models(conn)
    assert (summary.models, summary.pairs) == (("lite2",), ())
    assert conn.execute("SELECT model_name, labelled, evaluated FROM model_accuracy").fetchall() == [("lite2", 7, 6)]
    assert comparison_html(conn, lambda uri: None) == "" and comparison_markdown(conn) == ""

    two = [("lite2", 0, "model"), ("lite0", 1, "model")]
    conn = _warehouse(tmp_path / "nothing.duckdb", models=two, predictions={})
    compare_models(conn)  # configured but nothing predicted: null rates, no error
    assert conn.execute("SELECT images, agreement, labelled FROM comparison_pairs").fetchall() == [(0, None, 0)]
    assert conn.execute("SELECT labelled, top1_accuracy FROM model_accuracy").fetchall() == [(0, None), (0, None)]


def test_a_failed_comparison_leaves_the_stored_one(tmp_path):
    conn = _warehouse(tmp_path / "wh.duckdb")
    compare_models(conn)
    before = {name: conn.execute(f"FROM {name}").fetchall() for name in COMPARISON_TABLES}
    conn.execute("DELETE FROM model_predictions WHERE model_name = 'lite0'")
    conn.execute("ALTER TABLE models DROP COLUMN kind")  # model_accuracy, made after three tables, fails
    with pytest.raises(duckdb.BinderException):
        compare_models(conn)
    assert {name: conn.execute(f"FROM {name}").fetchall() for name in COMPARISON_TABLES} == before


def test_without_the_warehouse_tables_a_clear_error(tmp_path):
    with duckdb.connect(str(tmp_path / "bare.duckdb")) as conn:
        with pytest.raises(ValueError, match="models and model_predictions"):
            compare_models(conn)
        assert comparison_html(conn, lambda uri: None) == "" and comparison_markdown(conn) == ""
