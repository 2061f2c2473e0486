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
