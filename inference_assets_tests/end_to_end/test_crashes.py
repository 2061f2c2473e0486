"""SIGKILL at random (seeded) moments in each stage; a plain re-run ends identical to a clean run."""

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from inference_assets.core.images.pixel_store import read_pixel_shard

from inference_assets_tests.support.environment import PROJECT_ROOT, SAMPLE_IMAGES, pipeline_env

# How long after a stage's STEP_START the kill may come (the stage's length on 2 cores, roughly).
STAGES = {"preprocessed_images": 0.4, "prediction_files": 2.5, "prediction_results": 0.4}
KILLS_PER_STAGE = 2


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """48 real-photo variants (crops, scales, re-encodes) in labelled folders, plus two broken files."""
    root = tmp_path_factory.mktemp("collection") / "images"
    rng = np.random.default_rng(11)
    photos = sorted(p for p in SAMPLE_IMAGES.rglob("*") if p.is_file())
    for i in range(48):
        source = photos[i % len(photos)]
        image = Image.open(source).convert("RGB")
        x, y = rng.integers(0, 60, 2)
        crop = image.crop((x, y, image.width - rng.integers(0, 60), image.height - rng.integers(0, 60)))
        label = source.parent.name if source.parent != SAMPLE_IMAGES else "unlabelled"
        (root / label).mkdir(parents=True, exist_ok=True)
        crop.resize((int(crop.width * rng.uniform(0.6, 1.2)), int(crop.height * rng.uniform(0.6, 1.2)))).save(
            root / label / f"variant_{i:02d}.jpg", quality=int(rng.integers(70, 95))
        )
    (root / "unlabelled" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "unlabelled" / "empty.png").write_bytes(b"")
    return root


def _run(env) -> None:
    done = subprocess.run([sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _run_and_kill(env, stage: str, delay: float) -> tuple[bool, bool]:
    """Start the pipeline and SIGKILL it ``delay`` s after ``stage`` starts.

    Returns (was the process still running, had ``stage`` not finished yet) at the kill. The
    output is drained on a thread so a full pipe never stalls the pipeline.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_assets.run", "--log-level", "DEBUG"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    started = f"{stage} - STEP_START"
    while process.poll() is None and not any(started in line for line in list(lines)):
        time.sleep(0.01)
    time.sleep(delay)
    was_running = process.poll() is None
    seen = list(lines)  # everything the pipeline had logged up to the kill
    process.send_signal(signal.SIGKILL)
    process.wait()
    reader.join(timeout=10)
    in_stage = was_running and not any(f"{stage} - STEP_SUCCESS" in line for line in seen)
    return was_running, in_stage


def _contents(database: str):
    with duckdb.connect(database, read_only=True) as conn:
        return (
            conn.execute("SELECT * EXCLUDE (uri) FROM images ORDER BY image_id").fetchall(),
            conn.execute(
                "SELECT * EXCLUDE (uri, predicted_at, device) FROM predictions ORDER BY image_id"
            ).fetchall(),
            conn.execute("SELECT * EXCLUDE (uri, failed_at) FROM failures ORDER BY image_id").fetchall(),
        )


def _nothing_partial_looks_complete(work: Path) -> None:
    """Every file a reader would take as complete opens and is consistent."""
    manifest = work / "work" / "manifest" / "image_manifest.parquet"
    if manifest.exists():
        pq.read_table(manifest)
    for index in (work / "work" / "preprocessed").glob("*/*.parquet"):
        shard = read_pixel_shard(index.parent, index.stem)  # checks the pixels file matches the index
        if shard.shape[0]:
            shard.read_rows(shard.shape[0] - 1, shard.shape[0])  # the last row is all there
    for results in (work / "work" / "predictions").glob("*/*.parquet"):
        pq.read_table(results)
    database = work / "warehouse.duckdb"
    if database.exists():
        with duckdb.connect(str(database), read_only=True) as conn:
            tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            for table in tables & {"images", "predictions", "failures"}:
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()


def test_sigkill_in_each_stage_then_rerun_gives_the_clean_result(collection, tmp_path):
    clean = tmp_path / "clean"
    _run(pipeline_env(collection, clean))
    expected = _contents(str(clean / "warehouse.duckdb"))
    assert len(expected[1]) == 48 and len(expected[2]) == 2

    rng = random.Random(20261121)
    killed_while_running = 0
    killed_in_stage = {stage: 0 for stage in STAGES}
    for stage, window in STAGES.items():
        for attempt in range(KILLS_PER_STAGE):
            work = tmp_path / f"{stage}-{attempt}"
            env = pipeline_env(collection, work)
            running, in_stage = _run_and_kill(env, stage, rng.uniform(0, window))
            killed_while_running += running
            killed_in_stage[stage] += in_stage
            _nothing_partial_looks_complete(work)
            _run(env)
            assert _contents(str(work / "warehouse.duckdb")) == expected, f"after a kill in {stage}"
            leftovers = [p.name for p in (work / "work").rglob(".*.tmp-*")]
            assert leftovers == [], leftovers
    assert killed_while_running >= len(STAGES) * KILLS_PER_STAGE - 1  # the kills landed mid-run
    print(f"kills: {killed_while_running} while running, in stage: {killed_in_stage}")
    assert all(killed_in_stage.values()), killed_in_stage  # and each stage was hit while it ran
