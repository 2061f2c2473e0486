"""Charts as PNG bytes (matplotlib's Agg canvas, no display and no global pyplot state).

matplotlib is imported when a chart is drawn, not with this module: importing the code location
stays faster, and a worker without matplotlib (a slim GPU image, ``make gpu-check``'s wheel folder)
still predicts and loads DuckDB; its metadata and report say that charts need matplotlib.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence

_BLUE = "#3b6ea8"
MISSING = "charts need matplotlib, which is not installed here (pip install matplotlib)"


def available() -> bool:
    """Whether matplotlib can be imported (charts can be drawn)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # blocked, or a broken installation
        return False


def _figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=80)
    return out.getvalue()


def class_distribution_png(labels: Sequence[str], counts: Sequence[int], title: str = "Predicted classes") -> bytes:
    """Horizontal bars, most frequent class on top."""
    figure = _figure((6.4, max(1.6, 0.32 * len(labels) + 0.8)))
    axes = figure.add_subplot()
    short = [label if len(label) <= 32 else label[:31] + "…" for label in labels]
    axes.barh(list(range(len(labels)))[::-1], counts, color=_BLUE)
    axes.set_yticks(list(range(len(labels)))[::-1], short)
    axes.set_xlabel("images")
    axes.set_title(title)
    axes.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def confidence_histogram_png(confidences: Sequence[float], title: str = "Top-1 confidence") -> bytes:
    figure = _figure((6.4, 2.8))
    axes = figure.add_subplot()
    axes.hist(list(confidences), bins=20, range=(0.0, 1.0), color=_BLUE, edgecolor="white")
    axes.set_xlabel("confidence of the top-1 class")
    axes.set_ylabel("images")
    axes.set_title(title)
    axes.yaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def reliability_diagram_png(bins: Sequence, title: str = "Reliability", scaled: Sequence | None = None) -> bytes:
    """A reliability diagram: per confidence bin (objects with ``lower``, ``upper``, ``images``,
    ``confidence`` and ``accuracy``, as :func:`.calibration.reliability_bins` makes), a bar of its
    accuracy, the gap to its mean confidence outlined in red, and the diagonal of perfect
    calibration; ``scaled`` (the bins after temperature scaling) is drawn as a line on top."""
    figure = _figure((4.8, 4.2))
    axes = figure.add_subplot()
    filled = [b for b in bins if b.images]
    widths = [b.upper - b.lower for b in filled]
    axes.bar([b.lower for b in filled], [b.accuracy for b in filled], width=widths, align="edge",
             color=_BLUE, edgecolor="white", label="accuracy")
    gaps = [b.confidence - b.accuracy for b in filled]
    axes.bar([b.lower for b in filled], gaps, bottom=[b.accuracy for b in filled], width=widths, align="edge",
             color="none", edgecolor="#c0392b", hatch="//", label="gap to confidence")
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    if scaled:
        points = [(b.confidence, b.accuracy) for b in scaled if b.images]
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, color="#e67e22",
                  label="after temperature scaling")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence of the top-1 class")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)
