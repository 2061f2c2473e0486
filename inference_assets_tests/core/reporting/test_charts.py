"""Charts are drawn where matplotlib is installed; without it (a slim GPU worker) nothing else fails."""

import duckdb
import pytest

from inference_assets.core.reporting import charts
from inference_assets.core.reporting.report import results_charts

pytestmark = pytest.mark.fast


@pytest.fixture
def conn():
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE predictions (class_label VARCHAR, confidence DOUBLE)")
        conn.execute("INSERT INTO predictions VALUES ('espresso', 0.9), ('tripod', 0.6), ('espresso', 0.7)")
        yield conn


def test_charts_are_pngs_where_matplotlib_is_installed(conn):
    assert charts.available()
    distribution, histogram = results_charts(conn)
    assert distribution.startswith(b"\x89PNG") and histogram.startswith(b"\x89PNG")


def test_without_matplotlib_there_are_no_charts_and_a_line_saying_why(conn, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is not installed
    assert not charts.available()
    assert results_charts(conn) is None
    assert charts.MISSING == "charts need matplotlib, which is not installed here (pip install matplotlib)"


def test_a_reliability_diagram_is_a_png_with_or_without_scaled_bins():
    from inference_assets.core.reporting.calibration import reliability_bins

    bins = reliability_bins([0.95, 0.9, 0.6, 0.55, 0.2], [True, False, True, True, False], bins=5)  # some empty
    assert charts.reliability_diagram_png(bins, "Reliability").startswith(b"\x89PNG")
    assert charts.reliability_diagram_png(bins, "Reliability", scaled=bins).startswith(b"\x89PNG")
    assert charts.reliability_diagram_png([], "nothing evaluated").startswith(b"\x89PNG")
