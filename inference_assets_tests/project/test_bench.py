"""``make bench`` keeps working: a tiny run of the real harness, every peer but Ray (a bench-only extra);
the ONNX Runtime path, Daft and the project with a model list (Lite0, Lite1, Lite2, their ensemble) included.

It checks the plumbing, not speed: every peer classifies every image, all agree on top-1 with
the reference loop, and the JSON and Markdown results are written with the machine's description.
"""

import json
import os
import subprocess
import sys

from inference_assets_tests.support.environment import PROJECT_ROOT


def test_bench_runs_every_peer_and_writes_results(tmp_path):
    env = {
        **os.environ,
        "BENCH_IMAGES": "12",
        "BENCH_REPEATS": "1",
        "BENCH_PEERS": "project,project_onnx,daft,dataloader,per_image,model_limit,model_limit_torch,decode_limit,"
                       "project_models",
        "BENCH_VARIANTS": "torch,jpeg_draft,incremental",
        "BENCH_DATALOADER_BATCHES": "4,8",  # the loop at each; the faster one counts
        "BENCH_DEVICE": "cpu",
        "BENCH_WORK": str(tmp_path / "work"),
        "BENCH_RESULTS": str(tmp_path / "results"),
        "PYTHONWARNINGS": "ignore",
        "BENCH_TIMEOUT": "180",  # per peer: one that hangs fails the run, naming itself, long before ours
    }
    out = subprocess.run(
        [sys.executable, "-m", "bench.run"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [result] = (tmp_path / "results").glob("*-cpu-12.json")
    summary = json.loads(result.read_text())
    assert summary["machine"]["cores"] == os.cpu_count() and summary["machine"]["libraries"]["torch"]
    assert summary["config"]["collection"] and sum(summary["config"]["collection"].values()) == 12
    for name in ("project", "project_onnx", "dataloader", "per_image", "project_models"):
        peer = summary["peers"][name]
        assert peer["images_per_second"] > 0 and peer["peak_pss_mib"] > 100
        assert peer["top1_agreement_with_reference"] == {"images": 12, "same": 12, "missing": 0, "rate": 1.0}
    assert set(summary["peers"]["project"]["details"][0]["stages"]) == {"manifest", "preprocess", "predict", "warehouse"}
    assert {"project / dataloader", "project / limit", "predict stage / model limit", "project_onnx / project"} <= set(
        summary["ratios"])
    assert summary["peers"]["project_onnx"]["top1_agreement_with_project"]["same"] == 12  # ONNX Runtime = PyTorch
    # the project's default runtime (auto) is OpenVINO here, and so is the model limit; PyTorch eager beside them
    assert summary["peers"]["project"]["details"][0]["metadata"]["predict"]["runtime"].startswith("openvino")
    assert summary["peers"]["model_limit"]["details"][0]["runtime"] == "openvino"
    assert summary["peers"]["model_limit_torch"]["details"][0]["runtime"] == "torch"
    assert "model limit / PyTorch eager forward" in summary["ratios"]
    torch_variant = summary["variants"]["torch"]
    assert torch_variant["report"]["metadata"]["predict"]["runtime"] == "pytorch (timm)"
    assert torch_variant["top1_agreement_with_exact"]["same"] == 12
    daft = summary["peers"]["daft"]  # Daft's own resize (no crop): its top-1 agreement is measured, not assumed
    assert daft["images_per_second"] > 0 and daft["top1_agreement_with_reference"]["missing"] == 0
    assert daft["details"][0]["images"] == 12 and "project / daft" in summary["ratios"]
    assert summary["peers"]["project_onnx"]["details"][0]["metadata"]["predict"]["predicted"] == 12
    incremental = summary["variants"]["incremental"]
    assert incremental["added_images"] == 1
    assert incremental["report"]["metadata"]["predict"]["predicted"] == 1  # only the new image is predicted
    assert incremental["report"]["metadata"]["predict"]["reused"] == 12
    models = summary["models"]  # each model's prediction step and their agreement (issue 17)
    assert [(m["name"], m["kind"]) for m in models["models"]] == [
        ("lite0", "model"), ("lite1", "model"), ("lite2", "model"), ("lite_mean", "ensemble")]
    assert all(m["predicted"] == 12 and m["images_per_second"] > 0 and m["seconds"] > 0 for m in models["models"])
    assert models["preprocessing"]["pixel_sets"] == 3 and models["preprocessing"]["seconds_per_pixel_set"] > 0
    assert [(p["model_a"], p["model_b"]) for p in models["pairs"]] == [
        ("lite0", "lite1"), ("lite0", "lite2"), ("lite0", "lite_mean"), ("lite1", "lite2"), ("lite1", "lite_mean"),
        ("lite2", "lite_mean")]
    assert all(p["images"] == 12 and 0 <= p["agreement"] <= 1 for p in models["pairs"])
    markdown = result.with_suffix(".md").read_text()
    assert "## Models" in markdown and "| lite_mean | ensemble | lite0, lite1, lite2 |" in markdown
    assert "| lite0 – lite1 | 12 |" in markdown
    assert "| this project, end to end" in markdown and "top-1 = reference" in markdown
    assert "Project forward pass (last round): openvino" in markdown
    assert "for the DataLoader loop, its fastest in round 1 (4: " in markdown
    assert "| this project, end to end, the same model exported to ONNX (ONNX Runtime, fp32) |" in markdown
