"""A static, self-contained HTML report of the DuckDB results: no network, no external files
(charts and thumbnails are inline ``data:`` PNGs, the style is inline). Sections: summary
numbers, charts, a gallery of predictions grouped by class, the least confident predictions,
failures with their reasons, and the evaluation when the images carry labels."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from inference_assets.core.reporting import charts
from inference_assets.core.reporting.calibration import calibration_html, stored_calibrations
from inference_assets.core.reporting.cards import Cards, image_name
from inference_assets.core.reporting.cards import escape as _e
from inference_assets.core.reporting.charts import class_distribution_png, confidence_histogram_png
from inference_assets.core.reporting.comparison import comparison_html
from inference_assets.core.reporting.evaluation import stored_summary
from inference_assets.core.reporting.review_queue import review_html
from inference_assets.core.reporting.thumbnails import png_data_uri
from inference_assets.core.storage.atomic import atomic_output
from inference_assets.core.warehouse.database import failure_reasons, has_table, outcome_counts

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.numbers{display:flex;gap:1rem;flex-wrap:wrap;margin:1.5rem 0}
.number{background:#f3f6fa;border-radius:8px;padding:.8rem 1.2rem;min-width:8rem}
.number b{display:block;font-size:1.8rem} .number span{color:#555}
.charts img{max-width:100%;margin-right:1rem}
.class{margin:1.2rem 0} .class h3{margin:.2rem 0}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{width:120px;font-size:.75rem;text-align:center;word-break:break-all}
.card img{width:96px;height:96px;object-fit:contain;background:#eee;border-radius:4px}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem} td,th{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left}
.bad{color:#a33}
"""


@dataclass
class ReportSummary:
    images: int
    predicted: int
    failed: int
    classes: int
    thumbnails: int
    evaluated: int
    bytes: int


# the image's key in the source (the images table), for captions; its uri where that is unknown
_KEY = "coalesce((SELECT relative_path FROM images i WHERE i.image_id = t.image_id), t.uri)"


def results_charts(conn: duckdb.DuckDBPyConnection, classes: int = 15) -> tuple[bytes, bytes] | None:
    """PNGs of the most frequent predicted classes and of the top-1 confidences (None: no predictions, or
    no matplotlib here: ``charts.available()``)."""
    if not charts.available():
        return None
    counts = conn.execute(
        "SELECT class_label, count(*) FROM predictions GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?", [classes]
    ).fetchall()
    if not counts:
        return None
    confidences = [r[0] for r in conn.execute("SELECT confidence FROM predictions").fetchall()]
    return (
        class_distribution_png([c for c, _ in counts], [n for _, n in counts]),
        confidence_histogram_png(confidences),
    )


def build_report(
    conn: duckdb.DuckDBPyConnection,
    thumbnail: Callable[[str], str | None],
    title: str = "Image classification results",
    classes_in_gallery: int = 12,
    images_per_class: int = 8,
    least_confident: int = 12,
    review_files: dict[str, str] | None = None,
) -> tuple[str, ReportSummary]:
    """The report's HTML, and what it shows (for metadata); with several models, their comparison,
    calibration and the review queue (``review_files``: the queue's exported files) follow."""
    images, predicted, failed = outcome_counts(conn)
    models = [r[0] for r in conn.execute("SELECT DISTINCT model || ' (' || weights || ')' FROM predictions").fetchall()]
    counts = conn.execute(
        "SELECT class_label, count(*) FROM predictions GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    shown = Cards(thumbnail)  # an image in the gallery and among the least confident is decoded once
    card = shown.card

    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(", ".join(models) or "no predictions yet")} · generated '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        '<div class="numbers" id="summary">',
        f'<div class="number" id="images"><b>{images}</b><span>images</span></div>',
        f'<div class="number" id="predicted"><b>{predicted}</b><span>predicted</span></div>',
        f'<div class="number" id="failed"><b>{failed}</b><span>failed</span></div>',
        f'<div class="number" id="classes"><b>{len(counts)}</b><span>classes predicted</span></div>',
    ]
    evaluation = stored_summary(conn)
    if evaluation and evaluation.evaluated:
        accuracies = (("top1", "top-1", evaluation.top1_accuracy), ("top5", "top-5", evaluation.top5_accuracy))
        for key, name, value in accuracies:
            parts.append(f'<div class="number" id="{key}"><b>{value:.1%}</b><span>{name} accuracy</span></div>')
    parts.append("</div>")

    if counts:
        drawn = results_charts(conn)
        if drawn is None:
            parts.append(f'<h2>Charts</h2><p id="no-charts">{html.escape(charts.MISSING)}</p>')
        else:
            class_chart, confidence_chart = drawn
            parts += [
                '<h2>Charts</h2><div class="charts">',
                f'<img id="class-chart" alt="predicted classes" src="{png_data_uri(class_chart)}">',
                f'<img id="confidence-chart" alt="confidence histogram" src="{png_data_uri(confidence_chart)}">',
                "</div>",
            ]
        positives = conn.execute(
            "SELECT label, count(*) FROM (SELECT unnest(positive_labels) AS label FROM predictions "
            "WHERE positive_labels IS NOT NULL) GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
        multi_label = conn.execute("SELECT count(*) FROM predictions WHERE positive_labels IS NOT NULL").fetchone()[0]
        if multi_label:  # a multi-label model: how often each label passed its threshold
            parts.append(f'<h2>Labels above the threshold</h2><div id="positive-labels"><p>{multi_label} images '
                         "scored by a multi-label model; an image counts under every label at or above the threshold "
                         "(galleries below group by the most probable one).</p>")
            parts.append("<table><tr><th>label</th><th>images</th></tr>")
            parts += [f"<tr><td>{_e(label)}</td><td>{n}</td></tr>" for label, n in positives]
            parts.append("</table></div>")
        parts.append('<h2>Predictions by class</h2><div id="gallery">')
        for label, n in counts[:classes_in_gallery]:
            rows = conn.execute(
                f"SELECT uri, {_KEY}, confidence FROM predictions t WHERE class_label = ? "
                "ORDER BY confidence DESC, uri LIMIT ?",
                [label, images_per_class],
            ).fetchall()
            cards = "".join(card(uri, key, f"{_e(image_name(key))}<br>{conf:.2f}") for uri, key, conf in rows)
            parts.append(f'<div class="class"><h3>{_e(label)} <small>({n})</small></h3><div class="cards">{cards}</div></div>')
        parts.append("</div>")
        low = conn.execute(
            f"SELECT uri, {_KEY}, class_label, confidence, topk_labels[1:3] FROM predictions t "
            "ORDER BY confidence, uri LIMIT ?",
            [least_confident],
        ).fetchall()
        cards = "".join(
            card(uri, key, f"{_e(label)} {conf:.2f}<br><small>{_e(' / '.join(alts[1:]))}</small>")
            for uri, key, label, conf, alts in low
        )
        parts.append(f'<h2>Least confident</h2><div class="cards" id="least-confident">{cards}</div>')

    parts.append('<h2>Failures</h2><div id="failures">')
    if failed:
        reasons = failure_reasons(conn, limit=50)
        parts.append("<table><tr><th>stage</th><th>reason</th><th>images</th></tr>")
        parts += [f"<tr><td>{_e(s)}</td><td>{_e(r)}</td><td>{n}</td></tr>" for s, r, n in reasons]
        parts.append("</table><table><tr><th>image</th><th>stage</th><th>reason</th></tr>")
        rows = conn.execute(f"SELECT uri, {_KEY}, stage, error FROM failures t ORDER BY uri LIMIT 200").fetchall()
        parts += [
            f'<tr><td title="{_e(u)}">{_e(image_name(k))}</td><td>{_e(s)}</td><td class="bad">{_e(r)}</td></tr>'
            for u, k, s, r in rows
        ]
        parts.append("</table>")
    else:
        parts.append("<p>None: every image was predicted.</p>")
    parts.append("</div>")

    if evaluation and evaluation.evaluated:
        parts.append('<h2>Evaluation against the labels</h2><div id="evaluation">')
        parts.append(
            f"<p>{evaluation.evaluated} labelled images: top-1 {evaluation.top1_accuracy:.1%}, "
            f"top-5 {evaluation.top5_accuracy:.1%}"
            + (f"; {evaluation.unknown_labels} with labels the model does not know (left out)"
               if evaluation.unknown_labels else "")
            + ".</p>"
        )
        per_class = conn.execute(
            "SELECT label, images, top1_accuracy, top5_accuracy FROM evaluation_classes ORDER BY top1_accuracy, label LIMIT 50"
        ).fetchall()
        parts.append("<table><tr><th>label</th><th>images</th><th>top-1</th><th>top-5</th></tr>")
        parts += [f"<tr><td>{_e(l)}</td><td>{n}</td><td>{a:.1%}</td><td>{b:.1%}</td></tr>" for l, n, a, b in per_class]
        parts.append("</table>")
        confusions = conn.execute("SELECT label, predicted, images FROM evaluation_confusions LIMIT 20").fetchall()
        if confusions:
            parts.append("<h3>Most confused</h3><table><tr><th>label</th><th>predicted as</th><th>images</th></tr>")
            parts += [f"<tr><td>{_e(l)}</td><td>{_e(p)}</td><td>{n}</td></tr>" for l, p, n in confusions]
            parts.append("</table>")
        parts.append("</div>")
    calibrations = stored_calibrations(conn)
    sections = (
        comparison_html(conn, thumbnail),
        calibration_html(conn, calibrations) if calibrations else "",
        review_html(conn, thumbnail, files=review_files) if has_table(conn, "review_queue") else "",
    )
    parts += [section for section in sections if section]
    parts.append("</body></html>")
    text = "\n".join(parts)
    summary = ReportSummary(images, predicted, failed, len(counts), shown.pictures, evaluation.evaluated if evaluation else 0, len(text.encode()))
    return text, summary


def write_report(path: Path, text: str) -> None:
    """Write the page atomically (a reader never sees half a report)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
