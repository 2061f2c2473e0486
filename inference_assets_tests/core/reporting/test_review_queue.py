"""The review queue on a hand-made warehouse (the contract's images, models and model_predictions tables):
which images are queued and why, in which order, and the exports (CSV, Label Studio tasks and labelling
interface, report section, Markdown) read back with the parsers their readers use."""

import csv
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import duckdb
import pytest
from markdown_it import MarkdownIt

from inference_assets.core.reporting.review_queue import (
    REVIEW_TABLES,
    build_review_queue,
    label_studio_classes,
    local_files_url,
    review_html,
    review_markdown,
    write_label_studio_config,
    write_label_studio_tasks,
    write_review_csv,
)
from inference_assets.core.warehouse.database import table_columns

pytestmark = pytest.mark.fast

CLASSES = ["tabby, tabby cat", "tiger cat", "espresso", "cup", "tench, Tinca tinca"]
MODELS = [("lite0", "model"), ("lite1", "model"), ("lite_mean", "ensemble")]  # position order, lite0 primary

# image_id -> (label, {model: (top-1 class, confidence)})
IMAGES = {
    "a": ("tabby", {"lite0": ("tabby, tabby cat", 0.9), "lite1": ("tabby, tabby cat", 0.8),
                    "lite_mean": ("tabby, tabby cat", 0.85)}),  # 'tabby' is 'tabby, tabby cat': fine
    "b": ("tabby", {"lite0": ("tiger cat", 0.8), "lite1": ("tiger cat", 0.7),
                    "lite_mean": ("tiger cat", 0.75)}),  # label_mismatch
    "c": ("n02123159", {"lite0": ("tiger cat", 0.9), "lite1": ("tiger cat", 0.9),
                        "lite_mean": ("tiger cat", 0.9)}),  # WordNet id of 'tiger cat': fine
    "d": ("n01440764", {"lite0": ("cup", 0.9), "lite1": ("cup", 0.9),
                        "lite_mean": ("cup", 0.9)}),  # WordNet id of tench: label_mismatch
    "e": ("holiday photos", {"lite0": ("cup", 0.95), "lite1": ("cup", 0.9),
                             "lite_mean": ("cup", 0.9)}),  # unknown label: never a mismatch
    "f": (None, {"lite0": ("espresso", 0.3), "lite1": ("espresso", 0.35),
                 "lite_mean": ("espresso", 0.32)}),  # low_confidence
    "g": (None, {"lite0": ("espresso", 0.9), "lite1": ("cup", 0.7),
                 "lite_mean": ("espresso", 0.6)}),  # models_disagree (1 of 3)
    "h": ("tabby, tabby cat", {"lite0": ("tiger cat", 0.45), "lite1": ("tabby, tabby cat", 0.5),
                               "lite_mean": ("tiger cat", 0.47)}),  # all three reasons
    "i": ("Tabby_Cat", {"lite0": ("tabby, tabby cat", 0.4), "lite1": ("tabby, tabby cat", 0.6)}),  # low_confidence
    "j": ("tabby", {"lite1": ("cup", 0.2)}),  # the primary model did not predict it: not considered
    "k": ("tabby", {}),  # unreadable, predicted by none
}
# rank order: score = 2 * mismatch + disagreement + (1 - confidence) / 10 (3 models)
EXPECTED = [
    ("h", ["label_mismatch", "models_disagree", "low_confidence"], 2 + 1 / 3 + 0.055),
    ("b", ["label_mismatch"], 2.02),
    ("d", ["label_mismatch"], 2.01),
    ("g", ["models_disagree"], 1 / 3 + 0.01),
    ("f", ["low_confidence"], 0.07),
    ("i", ["low_confidence"], 0.06),
]


def _warehouse(conn, images=IMAGES, models=MODELS, classes=CLASSES):
    """The contract's tables, filled with ``images`` (ids double as file names under /photos/)."""
    conn.execute("""CREATE TABLE images (image_id VARCHAR PRIMARY KEY, relative_path VARCHAR NOT NULL,
        uri VARCHAR NOT NULL, size_bytes BIGINT, modified_at TIMESTAMPTZ, content_hash VARCHAR, label VARCHAR,
        partition VARCHAR NOT NULL, error VARCHAR)""")
    conn.execute("""CREATE TABLE model_predictions (model_name VARCHAR NOT NULL, image_id VARCHAR NOT NULL,
        uri VARCHAR NOT NULL, partition VARCHAR NOT NULL, label VARCHAR, class_index INTEGER NOT NULL,
        class_label VARCHAR NOT NULL, confidence FLOAT NOT NULL, topk_indices INTEGER[] NOT NULL,
        topk_labels VARCHAR[] NOT NULL, topk_probs FLOAT[] NOT NULL, model VARCHAR NOT NULL, model_id VARCHAR,
        runtime VARCHAR, content_hash VARCHAR NOT NULL, predicted_at TIMESTAMPTZ,
        PRIMARY KEY (model_name, image_id))""")
    conn.execute("""CREATE TABLE models (model_name VARCHAR PRIMARY KEY, position INTEGER NOT NULL,
        kind VARCHAR NOT NULL, is_primary BOOLEAN NOT NULL, model VARCHAR NOT NULL, tta VARCHAR,
        members VARCHAR[], member_weights DOUBLE[], predictions BIGINT NOT NULL)""")
    conn.execute("CREATE TABLE model_classes (class_index INTEGER, class_label VARCHAR)")
    conn.executemany("INSERT INTO model_classes VALUES (?, ?)", list(enumerate(classes)))
    index = {name: i for i, name in enumerate(classes)}
    for position, (name, kind) in enumerate(models):
        members = [m for m, k in models if k == "model"] if kind == "ensemble" else None
        conn.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, NULL, ?, NULL, 0)",
                     [name, position, kind, position == 0, f"arch-{name}", members])
    for image_id, (label, predicted) in images.items():
        uri = f"/photos/{image_id}.jpg"
        conn.execute("INSERT INTO images VALUES (?, ?, ?, 10, NULL, 'sha256:x', ?, 'shard-00', ?)",
                     [image_id, f"{image_id}.jpg", uri, label, None if predicted else "cannot read"])
        for model_name, (class_label, confidence) in predicted.items():
            conn.execute(
                "INSERT INTO model_predictions VALUES (?, ?, ?, 'shard-00', ?, ?, ?, ?, [?], [?], [?], ?, NULL, "
                "'pytorch', 'sha256:x', NULL)",
                [model_name, image_id, uri, label, index[class_label], class_label, confidence, index[class_label],
                 class_label, confidence, f"arch-{model_name}"])


@pytest.fixture
def conn(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as connection:
        _warehouse(connection)
        yield connection


def _queue(conn):
    return conn.execute("SELECT rank, image_id, reasons, score FROM review_queue ORDER BY rank").fetchall()


def test_the_queue_holds_the_doubtful_images_with_their_reasons_most_doubtful_first(conn):
    summary = build_review_queue(conn)
    queue = _queue(conn)
    assert [(image_id, reasons) for _, image_id, reasons, _ in queue] == [(i, r) for i, r, _ in EXPECTED]
    assert [rank for rank, *_ in queue] == [1, 2, 3, 4, 5, 6]
    assert [score for *_, score in queue] == pytest.approx([s for *_, s in EXPECTED])
    assert (summary.models, summary.considered, summary.flagged, summary.queued) == (
        ("lite0", "lite1", "lite_mean"), 9, 6, 6)
    assert summary.reasons == {"label_mismatch": 3, "models_disagree": 2, "low_confidence": 3}
    # each model's top-1, in configuration order, naming who said what
    assert conn.execute("SELECT uri, label, primary_label, primary_confidence, predictions FROM review_queue "
                        "WHERE image_id = 'g'").fetchone() == (
        "/photos/g.jpg", None, "espresso", 0.9,
        [{"model_name": "lite0", "class_label": "espresso", "confidence": 0.9},
         {"model_name": "lite1", "class_label": "cup", "confidence": 0.7},
         {"model_name": "lite_mean", "class_label": "espresso", "confidence": 0.6}])
    # rebuilding replaces (never appends); a threshold and a limit
    build_review_queue(conn, low_confidence=0.35, limit=4)
    assert [image_id for _, image_id, *_ in _queue(conn)] == ["h", "b", "d", "g"]
    build_review_queue(conn, low_confidence=0.35)
    assert [image_id for _, image_id, *_ in _queue(conn)] == ["h", "b", "d", "g", "f"]  # i (0.4) no longer low


def test_the_described_table_is_the_table_made(conn):
    build_review_queue(conn)
    described = REVIEW_TABLES["review_queue"].columns
    assert [(c.name, c.type, c.nullable, c.unique) for c in table_columns(conn, "review_queue")] == [
        (c.name, c.type, c.nullable, c.unique) for c in described]
    assert all(c.description.strip() for c in described)


def test_with_one_model_models_never_disagree(tmp_path):
    images = {"g": (None, {"lite0": ("espresso", 0.9)}), "f": (None, {"lite0": ("cup", 0.2)})}
    with duckdb.connect() as conn:
        _warehouse(conn, images=images, models=[("lite0", "model")])
        summary = build_review_queue(conn)
        assert _queue(conn) == [(1, "f", ["low_confidence"], pytest.approx(0.8 / 2))]
        assert summary.reasons == {"low_confidence": 1}


def test_the_csv_reads_back_as_the_table(conn, tmp_path):
    build_review_queue(conn)
    assert write_review_csv(conn, tmp_path / "out" / "review.csv") == 6
    with open(tmp_path / "out" / "review.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "image_id", "uri", "label", "reasons", "score", "primary_label",
                             "primary_confidence", "lite0_label", "lite0_confidence", "lite1_label",
                             "lite1_confidence", "lite_mean_label", "lite_mean_confidence"]
    stored = conn.execute("SELECT rank, image_id, uri, label, reasons, score, primary_label, primary_confidence, "
                          "predictions FROM review_queue ORDER BY rank").fetchall()
    assert len(rows) == len(stored)
    for row, (rank, image_id, uri, label, reasons, score, primary, confidence, predictions) in zip(rows, stored):
        assert (int(row["rank"]), row["image_id"], row["uri"], row["label"] or None) == (rank, image_id, uri, label)
        assert (row["reasons"].split("|"), float(row["score"])) == (reasons, score)
        assert (row["primary_label"], float(row["primary_confidence"])) == (primary, confidence)
        by_model = {p["model_name"]: p for p in predictions}
        for model in ("lite0", "lite1", "lite_mean"):
            if model in by_model:
                assert row[f"{model}_label"] == by_model[model]["class_label"]
                assert float(row[f"{model}_confidence"]) == by_model[model]["confidence"]
            else:
                assert row[f"{model}_label"] == row[f"{model}_confidence"] == ""
    assert rows[5]["lite_mean_label"] == "" and rows[5]["primary_confidence"] == "0.4"  # i: lite_mean left it out
    assert not list((tmp_path / "out").glob(".*tmp*"))  # written atomically, nothing left behind


def test_label_studio_tasks_and_interface(conn, tmp_path):
    build_review_queue(conn)
    assert write_label_studio_tasks(conn, tmp_path / "tasks.jsonl") == 6
    lines = (tmp_path / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines]
    assert [t["data"]["image_id"] for t in tasks] == [i for i, _, _ in EXPECTED]
    first = tasks[0]
    assert first["data"] == {"image": "/photos/h.jpg", "image_id": "h", "rank": 1, "label": "tabby, tabby cat",
                             "reasons": ["label_mismatch", "models_disagree", "low_confidence"]}
    assert first["predictions"] == [
        {"model_version": model, "score": score, "result": [
            {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}
        for model, label, score in [("lite0", "tiger cat", 0.45), ("lite1", "tabby, tabby cat", 0.5),
                                    ("lite_mean", "tiger cat", 0.47)]]
    assert all(len(t["predictions"]) == len(IMAGES[t["data"]["image_id"]][1]) for t in tasks)

    # the caller maps uris to what Label Studio opens: here its local-files URLs
    write_label_studio_tasks(conn, tmp_path / "local.jsonl", image_url=local_files_url("/photos"))
    task = json.loads((tmp_path / "local.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert task["data"]["image"] == "/data/local-files/?d=h.jpg"

    write_label_studio_config(conn, tmp_path / "config.xml")
    root = ET.fromstring((tmp_path / "config.xml").read_text(encoding="utf-8"))
    assert root.tag == "View"
    assert root.find("Image").attrib == {"name": "image", "value": "$image"}
    choices = root.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("choice", "image")
    # every top-1 in the queue, and tench: the class d's WordNet label names
    expected = ["cup", "espresso", "tabby, tabby cat", "tench, Tinca tinca", "tiger cat"]
    assert [c.get("value") for c in choices.findall("Choice")] == expected == label_studio_classes(conn)
    # every result's choice is one the interface offers, and the result names its controls
    for t in tasks:
        for p in t["predictions"]:
            (result,) = p["result"]
            assert (result["from_name"], result["to_name"]) == (choices.get("name"), root.find("Image").get("name"))
            assert set(result["value"]["choices"]) <= set(expected)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


HOSTILE = "<img src=x onerror=alert(1)>"


def test_hostile_labels_and_names_are_text_in_the_html_and_markdown(tmp_path):
    images = {"x": (HOSTILE, {"lite0": (HOSTILE, 0.2), '"><script>': ("cup", 0.9)})}
    with duckdb.connect() as conn:
        _warehouse(conn, images=images, models=[("lite0", "model"), ('"><script>', "model")],
                   classes=["cup", HOSTILE])
        build_review_queue(conn)
        section = review_html(conn, lambda uri: "data:image/png;base64,AAAA", files={"CSV": "/out/<b>.csv"})
        parser = _Collector()
        parser.feed(section)
        assert section.startswith('<h2>Review queue</h2><div id="review-queue">')
        assert {tag for tag, _ in parser.tags} <= {"h2", "div", "p", "ul", "li", "code", "img", "br", "span", "small"}
        assert [a["src"] for t, a in parser.tags if t == "img"] == ["data:image/png;base64,AAAA"]
        text = "".join(parser.text)
        assert HOSTILE in text and '"><script>: cup 0.90' in text and "/out/<b>.csv" in text
        assert "1 image to review" in text and "models_disagree" in text and "#1 x.jpg" in text
        assert [a["class"] for t, a in parser.tags if t == "div" and "class" in a] == ["cards", "card"]
        markdown = review_markdown(conn)
        tokens = MarkdownIt("gfm-like").parse(markdown)
        inline = [c for t in tokens for c in (t.children or [])]
        assert not any(t.type.startswith("html") for t in [*tokens, *inline])
        assert HOSTILE in [c.content for c in inline if c.type == "text"]
        assert markdown.startswith("1 image to review:")
        root = ET.fromstring((lambda p: (write_label_studio_config(conn, p), p.read_text())[1])(tmp_path / "c.xml"))
        assert {c.get("value") for c in root.iter("Choice")} == {"cup", HOSTILE}


def test_the_html_and_markdown_show_the_first_images_and_the_total(conn):
    build_review_queue(conn)
    section = review_html(conn, lambda uri: None, limit=2)
    assert section.count('class="card"') == 2 and section.count("no picture") == 2
    assert "6 images to review (the first 2 below)" in section
    markdown = review_markdown(conn, limit=3)
    assert markdown.startswith("6 images to review (the first 3):")
    assert "| rank | image | label | reasons | score | lite0 | lite1 | lite\\_mean |" in markdown
    cup = "cup \\(0.90\\)"
    assert f"| 3 | d.jpg | n01440764 | label\\_mismatch | 2.010 | {cup} | {cup} | {cup} |" in markdown
    assert "| 4 |" not in markdown


def test_an_empty_database_gives_an_empty_queue_and_empty_files(tmp_path):
    with duckdb.connect(str(tmp_path / "empty.duckdb")) as conn:
        summary = build_review_queue(conn)
        assert (summary.considered, summary.queued) == (0, 0)
        assert conn.execute("SELECT count(*) FROM review_queue").fetchone() == (0,)
        assert write_review_csv(conn, tmp_path / "review.csv") == 0
        assert (tmp_path / "review.csv").read_text().splitlines() == [
            "rank,image_id,uri,label,reasons,score,primary_label,primary_confidence"]
        assert write_label_studio_tasks(conn, tmp_path / "tasks.jsonl") == 0
        assert (tmp_path / "tasks.jsonl").read_bytes() == b""
        write_label_studio_config(conn, tmp_path / "config.xml")
        assert ET.fromstring((tmp_path / "config.xml").read_text()).find("Choices").findall("Choice") == []
        assert "No image to review" in review_html(conn, lambda uri: None)
        assert review_markdown(conn) == "No image to review."
    with duckdb.connect() as conn:  # the tables exist, but nothing is predicted yet
        _warehouse(conn, images={"k": ("tabby", {})})
        assert build_review_queue(conn).queued == 0
        assert write_review_csv(conn, tmp_path / "review2.csv") == 0
        with open(tmp_path / "review2.csv", newline="") as fh:
            assert list(csv.reader(fh))[0][-2:] == ["lite_mean_label", "lite_mean_confidence"]


def test_writers_need_a_built_queue(tmp_path):
    with duckdb.connect() as conn, pytest.raises(ValueError, match="build_review_queue"):
        write_review_csv(conn, tmp_path / "review.csv")
    assert not (tmp_path / "review.csv").exists()
