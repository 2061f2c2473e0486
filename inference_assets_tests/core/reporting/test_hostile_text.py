"""File names and labels are text, never markup: in the Dagster UI's Markdown metadata and in the
HTML report, hostile names and labels render as themselves (rendered here with markdown-it, a
CommonMark parser with GFM tables and autolinks, and Python's HTML parser)."""

import shutil
from html.parser import HTMLParser

import pytest
from dagster import DagsterEventType, MarkdownMetadataValue
from markdown_it import MarkdownIt

from inference_assets.core.reporting.markdown import Markdown, escape, table
from inference_assets_tests.conftest import cpu_resources, run_all_steps, source_resource, work_area_resource
from inference_assets_tests.support.environment import SAMPLE_IMAGES

# folder names become labels; file names become captions and alt texts
HOSTILE_LABELS = ["tab|by\nrow", "![x](evil.png)", "<img src=x onerror=alert(1)>", "[click](javascript:alert(1))"]
HOSTILE_FILES = ["a#b.jpg", "pipe|name\n.jpg", "**bold** `code`.jpg"]


def _render(text: str) -> list:
    return MarkdownIt("gfm-like").parse(text)  # CommonMark + GFM tables, strikethrough and autolinks


def _check_markdown(name: str, text: str) -> str:
    """Asserts ``text`` renders as tables/text/data: images only; returns its plain text."""
    plain = []
    for token in _render(text):
        assert not token.type.startswith("html"), (name, token)
        for child in token.children or []:
            assert child.type not in ("link_open", "html_inline"), (name, child, text)
            if child.type == "image":
                assert child.attrs["src"].startswith("data:image/png;base64,"), (name, child.attrs["src"][:80])
            if child.type == "text":
                plain.append(child.content)
    # every row of a table has as many cells as its header
    widths, width = [], 0
    for token in _render(text):
        if token.type == "tr_open":
            width = 0
        elif token.type in ("th_open", "td_open"):
            width += 1
        elif token.type == "tr_close":
            widths.append(width)
    assert len(set(widths)) <= 1, (name, widths, text)
    return "\n".join(plain)


def test_escaped_text_renders_as_itself():
    for value in [*HOSTILE_LABELS, *HOSTILE_FILES, "\\ back\\slash", "\x1b[31mred\u2028",
                  "see http://example.com/x", "www.example.com", "mail a@b.com", "OSError: a-b.c ~~x~~ $x$"]:
        rendered = _render(escape(value))
        texts = [c.content for t in rendered for c in (t.children or []) if c.type == "text"]
        kinds = {c.type for t in rendered for c in (t.children or [])}
        assert kinds == {"text"}, (value, kinds)
        shown = value.replace("\n", "\\n").replace("\x1b", "\\x1b").replace("\u2028", "\\u2028")
        assert "".join(texts) == shown
    rows = _render(table(("label", "images"), [(HOSTILE_LABELS[0], 3), (Markdown("![ok](data:image/png;base64,AA)"), 1)]))
    assert [t.type for t in rows].count("tr_open") == 3
    assert any(c.type == "image" for t in rows for c in (t.children or []))  # our own Markdown passes through


@pytest.fixture
def hostile_collection(tmp_path):
    root = tmp_path / "images"
    photos = sorted(p for p in SAMPLE_IMAGES.rglob("*.jpg"))
    for i, label in enumerate(HOSTILE_LABELS):
        (root / label).mkdir(parents=True)
        for j, name in enumerate(HOSTILE_FILES):
            shutil.copy(photos[(i + j) % len(photos)], root / label / name)
    (root / HOSTILE_LABELS[1] / "<b onclick=x>broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def test_hostile_names_and_labels_in_ui_metadata_and_report(hostile_collection, tmp_path):
    work_area = work_area_resource(tmp_path / "work")
    results = run_all_steps(
        cpu_resources(source_resource(image_root=str(hostile_collection)), work_area, tmp_path / "warehouse.duckdb")
    )

    seen = {}
    for result in results:
        for event in result.all_events:
            if event.event_type != DagsterEventType.ASSET_MATERIALIZATION:
                continue
            materialization = event.event_specific_data.materialization
            for key, value in materialization.metadata.items():
                if isinstance(value, MarkdownMetadataValue):
                    name = f"{materialization.asset_key.to_user_string()}.{key}"
                    seen[name] = _check_markdown(name, value.md_str)
    # the hostile labels and names are shown, as text, where the UI shows labels and names
    evaluation_text = seen["evaluation.labels_not_in_the_model"]
    for label in HOSTILE_LABELS:
        assert label.replace("\n", "\\n") in evaluation_text
    names = seen["prediction_files.sample_predictions"]
    assert any(name.replace("\n", "\\n") in names for name in HOSTILE_FILES), names

    # the report: no element or attribute from user data, names shown whole
    report = work_area.layout.report_path

    class Elements(HTMLParser):
        tags, captions, sources, handlers, titles = [], [], [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.handlers += [name for name, _ in attrs if name.startswith("on")]
            self.titles += [value for name, value in attrs if name == "title"]
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.captions.append(data)

    page = Elements()
    page.feed(report.read_text())
    assert not {"script", "a", "iframe"} & set(page.tags) and not page.handlers, (set(page.tags), page.handlers)
    assert all(src.startswith("data:image/png;base64,") for src in page.sources)
    assert "a#b.jpg" in page.captions and "b.jpg" not in page.captions
    assert "<b onclick=x>broken.jpg" in page.captions
    # the full location is the caption's tooltip, whole
    assert str(hostile_collection / HOSTILE_LABELS[2] / "a#b.jpg") in page.titles
