"""The Dagster UI itself, as a user meets it: ``dagster dev`` (as ``make dev`` starts it) on
127.0.0.1, its pages opened in a real headless Chromium, and one partition materialized through
Dagster's GraphQL API with the mutation the UI's "Materialize" button sends.
"""

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from inference_assets.core.collection.manifest import read_manifest
from inference_assets.core.collection.partitioning import partition_keys
from inference_assets.core.storage.layout import Layout
from inference_assets.definitions import ASSET_CHECKS, ASSETS

from inference_assets_tests.support import browser
from inference_assets_tests.support.dagster_ui import asset_graph_url, dagster_dev
from inference_assets_tests.support.environment import install_instance_config, pipeline_env
from tools import screenshots

KEYS = partition_keys(4)
SPECS = [spec for asset in ASSETS for spec in asset.specs]
GROUPS = sorted({spec.group_name for spec in SPECS})
PARTITIONED = sorted(spec.key.to_user_string() for spec in SPECS if spec.partitions_def is not None)
CHECKS = [spec for checks in ASSET_CHECKS for spec in checks.check_specs]
WAIT_MS = 20_000  # virtual time for the UI's scripts and GraphQL queries to settle
WIDE = "2400,1000"  # wide enough for the graph to draw whole nodes (zoomed out, it draws names only)


# Dagster's run page has Apollo Client log one numbered diagnostic (Apollo 3.14's message 85,
# printed as "An error occurred! For more details, see ... go.apollo.dev/c/err#...") for any
# run, the ones `make run` makes included; the page renders in full. Other pages log none.
APOLLO_DIAGNOSTIC = "go.apollo.dev/c/err"


def _load(url: str, tolerated: str | None = None) -> browser.Page:
    """The page in a wide window; fails on any console error but a ``tolerated`` one."""
    page = browser.load(url, wait_ms=WAIT_MS, size=WIDE)
    errors = [line for line in page.errors() if tolerated is None or tolerated not in line]
    assert not errors, errors
    return page


def test_the_asset_graph_checks_and_partitions_in_a_browser_then_one_partition_from_graphql(image_root, tmp_path):
    env = install_instance_config(pipeline_env(image_root, tmp_path))
    env["INFERENCE_PARTITIONS"] = str(len(KEYS))
    with dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        server.wait_until_loaded()
        server.skip_welcome_dialog()
        base = server.base_url

        # the asset graph, every group expanded: each asset, its checks row and its partitions
        graph = _load(asset_graph_url(base, GROUPS)).text
        assert "Global asset lineage" in graph
        for name in [*GROUPS, *(spec.key.to_user_string() for spec in SPECS)]:
            assert f" | {name} | " in graph, f"{name} is not on the asset graph"
        assert graph.count(" | Asset checks | ") == len(SPECS)
        assert graph.count(f" | {len(KEYS)} partitions | ") == len(PARTITIONED) == 2

        # each check, with its description, on its asset's Checks tab
        for check in CHECKS:
            asset = check.asset_key.to_user_string()
            page = _load(f"{base}/assets/{asset}?view=checks&checkDetail={check.name}").text
            assert f" | Checks ({sum(c.asset_key == check.asset_key for c in CHECKS)}) | " in page
            assert f" | {check.name} | " in page and check.description in page, f"{asset}: {check.name}"

        # the partitions of each partitioned asset, none materialized yet
        for asset in PARTITIONED:
            page = _load(f"{base}/assets/{asset}?view=partitions").text
            assert all(f" | {key} | " in page for key in KEYS), asset
            assert f" | Missing ({len(KEYS)}) | " in page and " | Materialized (0) | " in page, asset

        # "Materialize" as the UI sends it: the manifest, then one partition of the two partitioned assets
        assert server.wait_for_run(server.launch_run(["image_manifest"])) == "SUCCESS"
        manifest = read_manifest(Layout(tmp_path / "work").manifest_path)
        counts = dict(zip(*[v.to_pylist() for v in pc.value_counts(manifest["partition"]).flatten()]))
        key = max(KEYS, key=lambda k: counts.get(k, 0))  # the partition with the most images
        run_id = server.launch_run(PARTITIONED, partition=key)
        assert server.wait_for_run(run_id) == "SUCCESS", server.log_tail()

        # the UI shows the run's success and that one partition, with its prediction metadata
        run = _load(f"{base}/runs/{run_id}", tolerated=APOLLO_DIAGNOSTIC).text
        assert f" | {run_id[:8]} | Success | " in run
        for asset in PARTITIONED:
            page = _load(f"{base}/assets/{asset}?view=partitions&partition={key}").text
            assert " | Materialized (1) | " in page and f" | Missing ({len(KEYS) - 1}) | " in page, asset
        details = _load(f"{base}/assets/prediction_files?view=partitions&partition={key}").text
        for label, value in [("predicted", counts[key]), ("failed", 0), ("device", "cpu"), ("precision", "fp32")]:
            assert f" | {label} | {value} | " in details, f"{label} is not {value} in the partition's metadata"
        assert " | images_per_second | " in details and " | sample_predictions | " in details

        # the README's picture of the graph (make screenshots), cropped to the graph: all nine nodes
        shot = screenshots.asset_graph(base, tmp_path / "asset-graph.png", tmp_path)
        with Image.open(shot) as image:
            assert image.mode == "P" and 1000 < image.width < 2400 and 200 < image.height < 1300, image.size
            gray = np.asarray(image.convert("L"))
        # text on a light page, not a blank or dark one (the README's picture: 0.47 % dark, 96 % light), and
        # text across the whole width: each quarter holds a group's nodes (0.32-0.74 % dark), none cut off
        dark = gray < 128
        assert 0.002 < dark.mean() < 0.05 and (gray > 240).mean() > 0.5, (dark.mean(), (gray > 240).mean())
        assert all(band.mean() > 0.001 for band in np.array_split(dark, 4, axis=1)), "a quarter of the graph is empty"
        assert shot.stat().st_size < 100_000
