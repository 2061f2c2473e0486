"""``make gpu-check``: the GPU path proven on a real GPU by one command, its results in one folder.

1. **Tests**: the CUDA-marked tests (``inference_assets_tests/core/inference/test_cuda.py``): fp32 exactness
   against CPU, bf16/fp16 autocast against fp32, the batch-size probe, out-of-memory back-off
   under a real memory limit, GPU assignment on the real device, a whole Dagster run on the GPU,
   JPEG decoding on the GPU; every figure they record goes in the results.
2. **Benchmark** (``bench/run.py`` on the device): the project end to end, its predictions stage
   against a bare forward pass at the same (probed) batch size, and the DataLoader loop at its
   fastest batch size; medians of interleaved rounds; the targets checked.
3. **JPEG decoding on the device** (``core/images/device_decoding.py``): its speed against the Pillow path
   on all cores, and its agreement with it (pixels and top-1).

Without CUDA the same command runs what a CPU can: the tests are reported as skipped, the benchmark
runs on CPU on a few images, decoding uses torchvision's CPU decoder. CI runs it that way
(``test_gpu_check.py``), so it is ready whenever a GPU is.

Writes ``OUT/gpu-check.json`` and ``OUT/gpu-check.md``, the tests' JUnit XML and the benchmark's
own files under ``OUT/bench/``. Exits 1 when a test fails or a stage errs; the targets are reported,
not enforced (a benchmark is not a test).

    python -m bench.gpu_check --out bench/results/gpu [--images N] [--repeats R]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.collection import benchmark_collection
from bench.common import image_paths
from bench.machine import describe

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BENCH_WORK") or PROJECT_ROOT / "bench" / "work")
TARGETS = {
    "predict stage / model limit": 0.90,  # the predictions stage against a bare forward at the same batch
    "project / dataloader": 5.0,  # end to end against the DataLoader loop at its best batch size
}


def run_tests(out: Path) -> dict:
    """The CUDA-marked tests in a subprocess; their outcomes and recorded figures from JUnit XML."""
    xml = out / "cuda-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", "-o",
               "junit_family=xunit1", f"--junitxml={xml}", "inference_assets_tests/core/inference/test_cuda.py"]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    (out / "cuda-tests.log").write_text(completed.stdout + completed.stderr)
    tests = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = "passed"
            message = ""
            for kind in ("failure", "error", "skipped"):
                element = case.find(kind)
                if element is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                    message = (element.get("message") or "").splitlines()[0][:300] if element.get("message") else ""
            properties = {p.get("name"): p.get("value") for p in case.iter("property")}
            tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "message": message, "figures": properties})
    counts = {o: sum(1 for t in tests if t["outcome"] == o) for o in ("passed", "failed", "error", "skipped")}
    # pytest's 5: nothing collected; 0: all passed or skipped
    ok = completed.returncode in (0, 5) and not counts["failed"] and not counts["error"] and bool(tests)
    return {"ok": ok, "returncode": completed.returncode, "seconds": time.perf_counter() - start,
            "counts": counts, "tests": tests}


def run_benchmark(out: Path, images: int, repeats: int, device: str) -> dict:
    """``bench/run.py`` on ``device`` with the peers the GPU targets need; its summary JSON."""
    results = out / "bench"
    on_cuda = device == "cuda"
    environment = {
        **os.environ,
        "BENCH_IMAGES": str(images),
        "BENCH_REPEATS": str(repeats),
        "BENCH_DEVICE": device,
        "BENCH_PEERS": "project,dataloader,model_limit,decode_limit",
        "BENCH_VARIANTS": "bf16" if on_cuda else "none",  # autocast end to end, against the exact run
        "BENCH_DATALOADER_BATCHES": os.environ.get("BENCH_DATALOADER_BATCHES") or ("64,256" if on_cuda else "8"),
        "BENCH_RESULTS": str(results),
    }
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "bench.run"], cwd=PROJECT_ROOT, env=environment,
                               capture_output=True, text=True)
    (out / "bench.log").write_text(completed.stdout + completed.stderr)
    written = sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if completed.returncode != 0 or not written:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-5:]
        return {"ok": False, "returncode": completed.returncode, "error": " | ".join(tail)}
    summary = json.loads(written[-1].read_text())
    ratios = {k: v for k, v in summary.get("ratios", {}).items()}
    targets = {name: {"target": target, "value": ratios.get(name),
                      "met": None if ratios.get(name) is None else ratios[name] >= target}
               for name, target in TARGETS.items()}
    project = summary["peers"].get("project", {})
    predict = project.get("details", [{}])[-1].get("metadata", {}).get("predict", {})
    return {"ok": True, "seconds": time.perf_counter() - start, "files": [p.name for p in results.iterdir()],
            "images_per_second": {peer: p["images_per_second"] for peer, p in summary["peers"].items()},
            "ratios": ratios, "targets": targets, "project_batch_size": predict.get("batch_size"),
            "model_limit_batch_size": summary["peers"].get("model_limit", {}).get("details", [{}])[-1].get("batch_size"),
            "dataloader_batch_size": summary["config"].get("dataloader_batch_size"),
            "dataloader_sweep": summary["config"].get("dataloader_sweep"),
            "variants": {k: {"images_per_second": v["images_per_second"],
                             "top1_agreement_with_exact": v["top1_agreement_with_exact"]}
                         for k, v in summary.get("variants", {}).items()},
            "markdown": written[-1].with_suffix(".md").name}


def measure_decoding(images: int, device: str, rounds: int = 3) -> dict:
    """JPEG decoding + resize + crop on ``device`` (batches of 64) against Pillow on all cores."""
    from inference_assets.core.images.decoding import load_rgb
    from inference_assets.core.images.device_decoding import compare_with_pillow, decode_batch, resize_crop_batch
    from inference_assets.core.models.loading import ModelSpec, load_classifier

    files = image_paths(benchmark_collection(WORK, images))  # the benchmark's, which bench/run.py reuses
    encoded = [p.read_bytes() for p in files]
    classifier = load_classifier(ModelSpec(), torch.device(device))
    preprocessing = classifier.preprocessing
    target = torch.device(device)

    def on_device() -> int:
        count = 0
        for start in range(0, len(encoded), 64):
            decoded = decode_batch(encoded[start:start + 64], target)
            count += len(resize_crop_batch([i for i in decoded.images if i is not None], preprocessing))
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        return count

    def pillow_one(data: bytes):
        return preprocessing.resize_crop(load_rgb(io.BytesIO(data)))

    def with_pillow() -> int:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            return sum(1 for _ in pool.map(pillow_one, encoded, chunksize=8))

    rates = {"device": [], "pillow": []}
    on_device()  # warm: nvJPEG handles, kernels
    for _ in range(rounds):
        for name, job in (("device", on_device), ("pillow", with_pillow)):
            start = time.perf_counter()
            count = job()
            rates[name].append(count / (time.perf_counter() - start))
    sample = encoded[:256]
    agreement, device_pixels, pillow_pixels = compare_with_pillow(sample, preprocessing, target)
    with torch.inference_mode():
        normalize = preprocessing.normalize
        top1_device = classifier.module(normalize(device_pixels.to(target))).argmax(-1)
        top1_pillow = classifier.module(normalize(pillow_pixels.to(target))).argmax(-1)
    return {
        "device": device, "images": len(encoded),
        "device_images_per_second": statistics.median(rates["device"]),
        "pillow_images_per_second": statistics.median(rates["pillow"]),
        "pillow_workers": os.cpu_count(),
        "speedup": statistics.median(rates["device"]) / statistics.median(rates["pillow"]),
        "agreement_sample": agreement.images,
        "decoded_on_device": agreement.decoded_on_device, "decoded_by_pillow": agreement.decoded_by_pillow,
        "mean_abs_pixel_difference": agreement.mean_abs_difference,
        "max_abs_pixel_difference": agreement.max_abs_difference,
        "share_within_2_levels": agreement.share_within_2_levels,
        "top1_agreement": float((top1_device == top1_pillow).float().mean()),
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# GPU check: {result['device']}", "",
             f"- When: {result['date']}; took {result['seconds']:.0f} s",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
             f"Python {m['python']}",
             "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v), ""]
    tests = result["tests"]
    lines += [f"## Tests: {', '.join(f'{v} {k}' for k, v in tests['counts'].items() if v) or 'none ran'}", "",
              "| test | outcome | figures |", "|---|---|---|"]
    for t in tests["tests"]:
        figures = "; ".join(f"{k} = {v}" for k, v in t["figures"].items()) or t["message"]
        lines.append(f"| {t['name']} | {t['outcome']} | {figures.replace('|', '/')} |")
    bench = result["benchmark"]
    lines += ["", "## Benchmark", ""]
    if not bench.get("ok"):
        lines.append(f"Failed: {bench.get('error')}")
    else:
        lines += ["| peer | images/s (median) |", "|---|---:|"]
        lines += [f"| {peer} | {rate:.1f} |" for peer, rate in bench["images_per_second"].items()]
        lines += ["", "| target | value | met |", "|---|---:|---|"]
        for name, t in bench["targets"].items():
            value = "–" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"| {name} ≥ {t['target']:g} | {value} | {'–' if t['met'] is None else 'yes' if t['met'] else 'no'} |")
        lines += ["", f"Batch sizes: project {bench['project_batch_size']}, model limit {bench['model_limit_batch_size']}, "
                  f"DataLoader {bench['dataloader_batch_size']} (tried: {bench['dataloader_sweep']}). "
                  f"Full table: bench/{bench['markdown']}."]
        for name, v in bench["variants"].items():
            lines.append(f"Variant {name}: {v['images_per_second']:.1f} img/s, top-1 = exact run: "
                         f"{v['top1_agreement_with_exact']}.")
    d = result["decoding"]
    lines += ["", f"## JPEG decoding on {d['device']} (decode + resize + crop)", "",
              f"- {d['images']} images: {d['device_images_per_second']:.1f} img/s on the device against "
              f"{d['pillow_images_per_second']:.1f} with Pillow on {d['pillow_workers']} threads ({d['speedup']:.2f}×)",
              f"- Agreement on {d['agreement_sample']} images ({d['decoded_on_device']} decoded on the device, "
              f"{d['decoded_by_pillow']} by the Pillow fallback): mean |Δpixel| {d['mean_abs_pixel_difference']:.3f}, "
              f"max {d['max_abs_pixel_difference']}, {100 * d['share_within_2_levels']:.3f} % within 2 levels; "
              f"top-1 agreement {100 * d['top1_agreement']:.1f} %", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the results (created)")
    p.add_argument("--images", type=int, default=0, help="benchmark collection size (default 1000 on CUDA, 48 on CPU)")
    p.add_argument("--repeats", type=int, default=0, help="benchmark rounds (default 3 on CUDA, 1 on CPU)")
    args = p.parse_args()
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = args.images or (1000 if device == "cuda" else 48)
    repeats = args.repeats or (3 if device == "cuda" else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {device}: tests ...", flush=True)
    tests = run_tests(args.out)
    print(f"  {tests['counts']} in {tests['seconds']:.0f}s; benchmark ({images} images, {repeats} rounds) ...", flush=True)
    benchmark = run_benchmark(args.out, images, repeats, device)
    print(f"  {'done' if benchmark['ok'] else 'FAILED'}; JPEG decoding ...", flush=True)
    decoding = measure_decoding(images, device)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": device,
              "machine": describe(), "tests": tests, "benchmark": benchmark, "decoding": decoding,
              "seconds": time.perf_counter() - start}
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "gpu-check.md").write_text(text)
    print(text)
    if not (tests["ok"] and benchmark["ok"]):
        raise SystemExit(f"gpu-check: {'tests failed' if not tests['ok'] else 'the benchmark failed'} "
                         f"(see {args.out}/cuda-tests.log and bench.log)")


if __name__ == "__main__":
    main()
