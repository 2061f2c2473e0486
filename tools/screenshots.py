"""The README's pictures (``make screenshots``): the asset graph in the Dagster UI and the HTML report.

Runs the pipeline as ``make run`` does on the sample photos, in a temporary work area and
Dagster instance, starts ``dagster dev`` on it, and takes both pictures in headless Chromium.
They are cropped and stored as small palette PNGs in ``docs/images/``.

    .venv/bin/python -m tools.screenshots [--output docs/images]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from inference_assets_tests.support import browser
from inference_assets_tests.support.dagster_ui import asset_graph_url, dagster_dev
from inference_assets_tests.support.environment import (
    PROJECT_ROOT,
    SAMPLE_IMAGES,
    install_instance_config,
    pipeline_env,
)

GRAPH_WINDOW = "2400,1400"  # wide enough for whole nodes (checks, partitions); cropped afterwards
REPORT_WINDOW = "1200,1500"
GRAPH_GROUPS = ["images", "inference", "warehouse", "comparison", "report"]


def _content_box(image: Image.Image, left: int, top: int, right: int, margin: int = 24) -> tuple[int, int, int, int]:
    """The box around what is drawn between ``left`` and ``right``, below ``top`` (not the light dot grid)."""
    pixels = np.asarray(image.convert("L"))[top:, left:right]
    rows, cols = np.nonzero(pixels < 225)  # borders are ~214, the grid dots 234+
    if not len(rows):
        raise AssertionError("nothing drawn in the screenshot")
    h, w = image.height, image.width
    return (max(left + cols.min() - margin, 0), max(top + rows.min() - margin, 0),
            min(left + cols.max() + margin, w), min(top + rows.max() + margin, h))


def _save_small(image: Image.Image, output: Path, width: int | None = None, colors: int = 256) -> Path:
    """``image`` (scaled to ``width``) as a palette PNG: a few tens of KB instead of a few hundred."""
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE).save(output, optimize=True)
    return output


def asset_graph(base_url: str, output: Path, scratch: Path) -> Path:
    """The global asset lineage with every group expanded, cropped to the graph.

    The welcome dialog must have been skipped (``DagsterDev.skip_welcome_dialog``)."""
    raw = browser.screenshot(asset_graph_url(base_url, GRAPH_GROUPS), scratch / "graph-full.png",
                             size=GRAPH_WINDOW, wait_ms=20_000)
    with Image.open(raw) as image:
        # right of the navigation and the asset list, below the toolbar, left of the zoom
        # controls: the graph itself
        box = _content_box(image, left=560, top=120, right=image.width - 80)
        return _save_small(image.crop(box), output, colors=64)


def report(report_path: Path, output: Path, scratch: Path) -> Path:
    """The top of the HTML report: the numbers, the charts and the start of the gallery."""
    raw = browser.screenshot(report_path.as_uri(), scratch / "report-full.png", size=REPORT_WINDOW)
    with Image.open(raw) as image:
        return _save_small(image, output, width=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        work = Path(tmp)
        env = install_instance_config(pipeline_env(SAMPLE_IMAGES, work))
        print("running the pipeline on data/images (as make run) ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the pipeline failed:\n{(done.stdout + done.stderr)[-3000:]}")
        print("starting dagster dev ...", flush=True)
        with dagster_dev(env, work / "dagster_dev.log") as server:
            server.wait_until_loaded()
            server.skip_welcome_dialog()
            shots = [asset_graph(server.base_url, args.output / "asset-graph.png", work)]
        shots.append(report(work / "work" / "report" / "index.html", args.output / "report.png", work))
    for shot in shots:
        with Image.open(shot) as image:
            print(f"{shot.relative_to(PROJECT_ROOT) if shot.is_relative_to(PROJECT_ROOT) else shot}: "
                  f"{image.width}x{image.height}, {shot.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
