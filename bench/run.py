"""``make bench``: this project against the Ray Data tutorial, Daft, a DataLoader loop and a per-image loop,
and against the machine's own limits, on one generated collection, in one run.

Settings (environment):

- ``BENCH_IMAGES`` [2000]: collection size; ``BENCH_SEED`` [0].
- ``BENCH_REPEATS`` [3]: rounds; every peer runs once per round (interleaved, so a noisy
  spell hits all of them) and the medians are reported; ``project_models`` runs once, in the last round.
- ``BENCH_PEERS`` [all]: comma list of ``project, project_onnx, ray_data, daft, dataloader, per_image,
  model_limit, model_limit_torch, decode_limit, project_models``. ``model_limit`` is the forward pass in the runtime the
  project's default (``auto``) picks; ``model_limit_torch`` in PyTorch eager. ``daft`` is Daft's documented image batch-inference pattern
  (``bench/peers/daft_udf.py``; Daft's own resize to the input size, not the model's transform). ``project_onnx`` is the project with the same model exported to ONNX (a model folder
  with a card, as a user brings one) and run in ONNX Runtime, fp32. ``project_models`` is the project with a
  model list (``INFERENCE_MODELS``, issue 17): the primary model (Lite0) beside Lite1, Lite2 and their
  ensemble ``lite_mean`` (``<BENCH_WORK>/models.yaml``, bundled weights, offline); the results' ``models``
  section (and the Markdown's "Models") gives each model's prediction step (images/s, seconds), the
  ensemble's, the preprocessing of the pixel sets, and each pair's top-1 agreement and each model's
  accuracy from DuckDB's ``comparison_pairs`` and ``model_accuracy`` (accuracy on the images whose label
  is one of the models' classes; null where none is). About three times the project's run, so once a benchmark.
- ``BENCH_MODELS`` [the list above]: ``project_models``' model list instead (``INFERENCE_MODELS``'s forms:
  ``name=model`` pairs or a YAML/JSON file).
- ``BENCH_VARIANTS`` [``torch,onnxruntime,openvino-int8,bf16,jpeg_draft,compile,incremental``; ``none`` for
  none]: the project's options, each run once and compared with the exact path; ``torch`` / ``openvino`` /
  ``onnxruntime`` / ``openvino-int8`` are ``INFERENCE_RUNTIME`` (a converted runtime converts in its own fresh work folder, so its run pays the
  conversion); ``incremental`` re-runs after adding 1 % new images.
- The project's own runs (default runtime ``auto``) share one converted-network cache,
  ``<BENCH_WORK>/converted``, emptied when the benchmark starts: round 1 pays the conversion, later
  rounds reuse it, as later runs of a real deployment do.
- ``BENCH_DATALOADER_BATCHES`` [``8,16,32,64`` on CPU, ``64,128,256,512`` on CUDA]: the DataLoader loop
  runs at each of these batch sizes in the first round; the fastest is its batch size for the other
  rounds, and its first-round run counts as its round-1 result (the loop at its best on this machine).
- ``BENCH_SCALE`` [0]: also run the project alone on this many images (e.g. 20000) and compare
  its speed and peak memory with the ``BENCH_IMAGES`` run.
- ``BENCH_WORK`` [bench/work], ``BENCH_RESULTS`` [bench/results]: where generated files and results go.
- ``BENCH_DEVICE`` [auto], ``BENCH_MODEL`` / ``BENCH_WEIGHTS`` [the bundled EfficientNet-Lite0],
  ``BENCH_PRECISION`` [fp32].

Writes ``bench/results/<date>-<device>-<images>.json`` and ``.md`` (the table the README quotes; with
``project_models``, a "Models" section after it).
Generated images and work files go under ``bench/work/`` (git-ignored).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

from bench.collection import benchmark_collection, build_collection
from bench.machine import cpu_flags, describe
from bench.measure import Measured, run_measured

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
WORK = Path(os.environ.get("BENCH_WORK") or BENCH_DIR / "work")
RESULTS = Path(os.environ.get("BENCH_RESULTS") or BENCH_DIR / "results")

PEERS = ("project", "project_onnx", "ray_data", "daft", "dataloader", "per_image", "model_limit", "model_limit_torch",
         "decode_limit", "project_models")
# the project with a model list (Lite0 + Lite1 + Lite2 + their ensemble): each model's speed and their agreement
MODELS_PEER = "project_models"
DEFAULT_MODEL_LIST = """\
# the project_models peer's model list (bench/run.py writes it; BENCH_MODELS replaces it)
{primary}models:
{lite0}  lite1: {{model: tf_efficientnet_lite1, weights: bundled}}   # 240x240: its own pixel set
  lite2: {{model: tf_efficientnet_lite2, weights: bundled}}   # 260x260: its own pixel set
ensembles:
  lite_mean: {{members: [lite0, lite1, lite2]}}   # the mean of the three models' probabilities
"""
TITLES = {
    "project": "this project, end to end (Dagster: manifest → pixels → predictions → DuckDB)",
    "project_onnx": "this project, end to end, the same model exported to ONNX (ONNX Runtime, fp32)",
    "ray_data": "Ray Data tutorial pipeline",
    "daft": "Daft: download → decode_image → resize → batched model UDF (its documented pattern)",
    "dataloader": "PyTorch DataLoader loop (its fastest batch size here, workers = cores)",
    "per_image": "per-image loop (batch 1)",
    "model_limit": "limit: forward pass alone on ready tensors (the project's default runtime)",
    "model_limit_torch": "forward pass alone on ready tensors, PyTorch eager",
    "decode_limit": "limit: decode + resize + crop alone, all cores",
    "project_models": "this project, end to end, with a model list (every model and ensemble predicted, compared)",
}


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


class Bench:
    def __init__(self) -> None:
        import torch

        from inference_assets.core.inference.devices import default_batch_size

        self.images = int(env("BENCH_IMAGES", "2000"))
        self.seed = int(env("BENCH_SEED", "0"))
        self.repeats = int(env("BENCH_REPEATS", "3"))
        self.peers = [p.strip() for p in env("BENCH_PEERS", ",".join(PEERS)).split(",") if p.strip()]
        variants = env("BENCH_VARIANTS", "torch,onnxruntime,openvino-int8,bf16,jpeg_draft,compile,incremental")
        self.variants = [v.strip() for v in variants.split(",") if v.strip() and v.strip() != "none"]
        self.scale = int(env("BENCH_SCALE", "0"))
        device = env("BENCH_DEVICE", "auto")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = env("BENCH_MODEL", "tf_efficientnet_lite0")
        self.weights = env("BENCH_WEIGHTS", "bundled")
        self.precision = env("BENCH_PRECISION", "fp32")
        self.batch_size = default_batch_size(torch.device(self.device))  # the project's automatic choice
        sweep = "64,128,256,512" if self.device.startswith("cuda") else "8,16,32,64"
        self.dataloader_batches = [int(b) for b in env("BENCH_DATALOADER_BATCHES", sweep).split(",") if b.strip()]
        self.dataloader_batch = self.dataloader_batches[0]  # the fastest of them, once round 1 has measured them
        self.dataloader_sweep: dict[int, float] = {}
        self.cores = os.cpu_count() or 1
        self.timeout = float(env("BENCH_TIMEOUT", "7200"))
        self.logs = WORK / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._onnx_exported = False
        self.converted = WORK / "converted"  # the project's default runtime's converted networks, shared by its rounds

    # --- running peers ------------------------------------------------------------------

    def collection(self, count: int) -> Path:
        return benchmark_collection(WORK, count, self.seed)

    def command(self, peer: str, images: Path, out: Path, **options) -> list[str]:
        common = ["--images", str(images), "--out", str(out), "--model", self.model, "--weights", self.weights,
                  "--device", self.device, "--precision", options.pop("precision", self.precision),
                  "--workers", str(self.cores)]
        py = [sys.executable, "-m"]
        if peer == "project_onnx":
            peer = "project"
            common[common.index("--model") + 1] = str(self.onnx_model())
        if peer == MODELS_PEER:
            peer = "project"
            common += ["--models", self.model_list()]
        if peer == "project":
            extra = ["--work", str(options.pop("work")), "--batch-size", "0"]
            extra += ["--draft"] if options.pop("draft", False) else []
            extra += ["--compile"] if options.pop("compile", False) else []
            runtime = options.pop("runtime", "auto")
            extra += ["--runtime", runtime] + (["--converted", str(self.converted)] if runtime == "auto" else [])
            return py + ["bench.peers.project", *common, *extra]
        if peer == "ray_data":
            return py + ["bench.peers.ray_data", *common, "--batch-size", str(self.batch_size), "--concurrency", "1"]
        if peer == "daft":
            return py + ["bench.peers.daft_udf", *common, "--batch-size", str(self.batch_size)]
        if peer == "dataloader":
            return py + ["bench.peers.dataloader_loop", *common, "--batch-size",
                         str(options.pop("batch_size", self.dataloader_batch))]
        if peer == "per_image":
            return py + ["bench.peers.per_image", *common]
        if peer in ("model_limit", "model_limit_torch"):
            # on CUDA at the batch size the project probes (0: the same probe), on CPU at its fixed one
            size = 0 if self.device.startswith("cuda") else self.batch_size
            runtime = "auto" if peer == "model_limit" else "torch"
            return py + ["bench.peers.limits", "model", *common, "--batch-size", str(size), "--runtime", runtime,
                         "--converted", str(self.converted)]
        if peer == "decode_limit":
            return py + ["bench.peers.limits", "decode", *common]
        raise ValueError(f"unknown peer {peer!r}: use {', '.join(PEERS)}")

    def run(self, peer: str, images: Path, label: str, **options) -> dict:
        out = WORK / "predictions" / f"{label}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        if peer in ("project", "project_onnx", MODELS_PEER) and "work" not in options:
            options["work"] = WORK / "project" / label
            shutil.rmtree(options["work"], ignore_errors=True)
        command = self.command(peer, images, out, **options)
        environment = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
        print(f"--> {label}", flush=True)
        measured: Measured = run_measured(command, environment, PROJECT_ROOT, self.timeout, self.logs / f"{label}.log")
        report = measured.report
        if measured.returncode != 0 or "seconds" not in report:
            print(measured.output_tail, file=sys.stderr)
            raise SystemExit(f"{label} failed (exit {measured.returncode}); log: {self.logs / f'{label}.log'}")
        result = {
            "peer": peer,
            "images": report["images"],
            "seconds": report["seconds"],
            "images_per_second": report["images"] / report["seconds"],
            "wall_seconds": measured.wall_seconds,
            "peak_pss_mib": measured.peak_pss_mib,
            "peak_rss_mib": measured.peak_rss_mib,
            "report": report,
            "predictions": str(out) if out.exists() else None,
        }
        print(f"    {result['images_per_second']:.1f} img/s, {result['seconds']:.1f}s, peak {result['peak_pss_mib']:.0f} MiB",
              flush=True)
        return result

    def onnx_model(self) -> Path:
        """The benchmark's model as an ONNX model folder (exported once per run)."""
        folder = WORK / "onnx_model"
        if not self._onnx_exported:
            from bench.onnx_model import export_model_folder
            from inference_assets.core.models.loading import ModelSpec

            shutil.rmtree(folder, ignore_errors=True)
            export_model_folder(ModelSpec(self.model, self.weights), folder)
            self._onnx_exported = True
        return folder

    def model_list(self) -> str:
        """``INFERENCE_MODELS`` of the ``project_models`` peer: ``BENCH_MODELS``, else a YAML file written to
        ``<BENCH_WORK>/models.yaml``: Lite1, Lite2 and the ensemble of Lite0, Lite1 and Lite2 beside the
        primary model (``BENCH_MODEL``, named ``lite0`` when it is Lite0; else Lite0 is listed too)."""
        if os.environ.get("BENCH_MODELS", "").strip():
            return os.environ["BENCH_MODELS"].strip()
        path = WORK / "models.yaml"
        lite0 = self.model == "tf_efficientnet_lite0"
        path.write_text(DEFAULT_MODEL_LIST.format(
            primary="primary: lite0\n" if lite0 else "",
            lite0="" if lite0 else "  lite0: {model: tf_efficientnet_lite0, weights: bundled}\n"))
        return str(path)

    # --- the benchmark ------------------------------------------------------------------

    def main(self) -> dict:
        images = self.collection(self.images)
        shutil.rmtree(self.converted, ignore_errors=True)  # round 1 pays the conversion
        runs: dict[str, list[dict]] = {peer: [] for peer in self.peers}
        for round_ in range(1, self.repeats + 1):
            for peer in self.peers:
                if peer == MODELS_PEER and round_ < self.repeats:
                    continue  # once, in the last round: three models' run is the longest
                if peer == "dataloader" and round_ == 1:
                    runs[peer].append(self.dataloader_sweep_run(images))
                else:
                    runs[peer].append(self.run(peer, images, f"{peer}-{round_}"))
        variants, skipped = {}, {}
        exact = runs.get("project", [{}])[-1]
        for variant in self.variants:
            if variant == "bf16":
                if self.device == "cpu" and not {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
                    print("--> bf16 skipped: this CPU has no native bf16 (avx512_bf16 / amx_bf16)", flush=True)
                    skipped[variant] = "this CPU has no native bf16 instructions (avx512_bf16 / amx_bf16)"
                    continue
                variants[variant] = self.run("project", images, "project-bf16", precision="bf16")
            elif variant in ("torch", "openvino", "onnxruntime", "openvino-int8"):
                if self.device != "cpu":
                    skipped[variant] = (f"PyTorch runs the project on {self.device} already" if variant == "torch"
                                        else f"a CPU runtime; this benchmark runs on {self.device}")
                    continue
                variants[variant] = self.run("project", images, f"project-{variant}", runtime=variant)
            elif variant == "jpeg_draft":
                variants[variant] = self.run("project", images, "project-jpeg-draft", draft=True)
            elif variant == "compile":
                variants[variant] = self.run("project", images, "project-compile", compile=True)
            elif variant == "incremental" and exact:
                work = WORK / "project" / f"project-{self.repeats}"
                variants[variant] = self.incremental(images, self.images, work, "project-incremental")
        scale = self.scale_run(runs) if self.scale else None
        summary = self.summarize(images, runs, variants, scale)
        summary["skipped_variants"] = skipped
        return summary

    def dataloader_sweep_run(self, images: Path) -> dict:
        """The DataLoader loop at every ``BENCH_DATALOADER_BATCHES`` size; keeps the fastest for later rounds."""
        results = {size: self.run("dataloader", images, f"dataloader-bs{size}-1", batch_size=size)
                   for size in self.dataloader_batches}
        self.dataloader_sweep = {size: r["images_per_second"] for size, r in results.items()}
        self.dataloader_batch = max(results, key=lambda size: results[size]["images_per_second"])
        print(f"    DataLoader loop: batch {self.dataloader_batch} is the fastest of {self.dataloader_batches}", flush=True)
        return results[self.dataloader_batch]

    def incremental(self, images: Path, count: int, work: Path, label: str) -> dict:
        """Add 1 % new images to the collection and re-run the project over a full run's outputs in ``work``."""
        added = max(1, count // 100)
        build_collection(images, count + added, self.seed, start=count)
        try:
            result = self.run("project", images, label, work=work)
        finally:
            for path in images.rglob("img_*"):
                if int(path.stem.split("_")[1]) >= count:
                    path.unlink()
        result["added_images"] = added
        return result

    def scale_run(self, runs: dict) -> dict:
        big = self.collection(self.scale)
        result = self.run("project", big, f"project-{self.scale}")
        work = WORK / "project" / f"project-{self.scale}"
        result["incremental"] = self.incremental(big, self.scale, work, f"project-{self.scale}-incremental")
        shutil.rmtree(work, ignore_errors=True)
        return result

    # --- the report -----------------------------------------------------------------------

    def summarize(self, images: Path, runs: dict, variants: dict, scale: dict | None) -> dict:
        def median(peer: str, key: str) -> float | None:
            values = [r[key] for r in runs.get(peer, [])]
            return statistics.median(values) if values else None

        rates = {peer: median(peer, "images_per_second") for peer in runs}
        reference = self.top1(runs["per_image"][-1]) if "per_image" in runs else None
        summary = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": describe(),
            "config": {
                "images": self.images, "seed": self.seed, "repeats": self.repeats, "device": self.device,
                "model": self.model, "weights": self.weights, "precision": self.precision,
                "batch_size": self.batch_size, "collection": json.loads((images / ".complete").read_text()),
                "dataloader_batch_size": self.dataloader_batch,
                "dataloader_sweep": {str(k): round(v, 2) for k, v in self.dataloader_sweep.items()},
            },
            "peers": {},
            "variants": {},
        }
        for peer, results in runs.items():
            summary["peers"][peer] = {
                "title": TITLES[peer],
                "images_per_second": rates[peer],
                "images_per_second_runs": [round(r["images_per_second"], 2) for r in results],
                "seconds": median(peer, "seconds"),
                "peak_pss_mib": median(peer, "peak_pss_mib"),
                "top1_agreement_with_reference": self.agreement(reference, results[-1]),
                "details": [r["report"] for r in results],
            }
            if peer == "project_onnx" and "project" in runs:  # the ONNX path against the PyTorch path
                summary["peers"][peer]["top1_agreement_with_project"] = self.agreement(
                    self.top1(runs["project"][-1]), results[-1])
        ratios = {}
        project = rates.get("project")
        if project:
            if rates.get("project_onnx"):  # the same pipeline, the model in ONNX Runtime instead of PyTorch
                ratios["project_onnx / project"] = rates["project_onnx"] / project
            for peer in ("ray_data", "daft", "dataloader", "per_image"):
                if rates.get(peer):
                    ratios[f"project / {peer}"] = project / rates[peer]
            if rates.get("model_limit") and rates.get("model_limit_torch"):
                ratios["model limit / PyTorch eager forward"] = rates["model_limit"] / rates["model_limit_torch"]
            if rates.get("model_limit") and rates.get("decode_limit"):
                limit = 1 / (1 / rates["model_limit"] + 1 / rates["decode_limit"])
                summary["limit_images_per_second"] = limit
                ratios["project / limit"] = project / limit
            if "predict" in runs["project"][-1]["report"].get("stages", {}) and rates.get("model_limit"):
                predict = statistics.median(
                    r["report"]["images"] / r["report"]["stages"]["predict"] for r in runs["project"]
                )
                ratios["predict stage / model limit"] = predict / rates["model_limit"]
        summary["ratios"] = ratios
        if runs.get(MODELS_PEER):
            summary["models"] = self.models_summary(runs[MODELS_PEER])
        exact = runs["project"][-1] if "project" in runs else None
        for name, result in variants.items():
            entry = {
                "images_per_second": result["images_per_second"],
                "seconds": result["seconds"],
                "peak_pss_mib": result["peak_pss_mib"],
                "top1_agreement_with_exact": self.agreement(self.top1(exact), result) if exact else None,
                "top1_agreement_with_reference": self.agreement(reference, result),
                "report": result["report"],
            }
            if name == "incremental" and project:
                entry["added_images"] = result["added_images"]
                entry["cost_vs_full_run"] = result["seconds"] / median("project", "seconds")
            summary["variants"][name] = entry
        if scale:
            summary["scale"] = {
                "images": [self.images, self.scale],
                "images_per_second": [rates["project"], scale["images_per_second"]],
                "peak_pss_mib": [median("project", "peak_pss_mib"), scale["peak_pss_mib"]],
                "speed_change": scale["images_per_second"] / rates["project"] - 1,
                "memory_change": scale["peak_pss_mib"] / median("project", "peak_pss_mib") - 1,
                "report": scale["report"],
                "incremental": {
                    "added_images": scale["incremental"]["added_images"],
                    "seconds": scale["incremental"]["seconds"],
                    "cost_vs_full_run": scale["incremental"]["seconds"] / scale["seconds"],
                    "stages": scale["incremental"]["report"].get("stages"),
                },
            }
        return summary

    @staticmethod
    def models_summary(results: list[dict]) -> dict:
        """The ``project_models`` peer per model: its prediction step's images/s and seconds (medians over the
        rounds), its kind and accuracy; the preprocessing of the pixel sets; each pair's top-1 agreement
        (DuckDB ``comparison_pairs`` and ``model_accuracy`` after the last round)."""
        details = [r["report"] for r in results]
        last = details[-1]
        tables = last["models"]
        accuracy = {row["model_name"]: row for row in tables["accuracy"]}

        def median(key: str, field: str) -> float | None:
            values = [d["metadata"][key][field] for d in details
                      if d["metadata"].get(key, {}).get(field) is not None]
            return statistics.median(values) if values else None

        models = []
        for row in tables["models"]:
            key = "predict" if row["is_primary"] else f"{row['model_name']}/prediction_files"
            step = last["metadata"].get(key, {})
            acc = accuracy.get(row["model_name"], {})
            models.append({
                "name": row["model_name"], "kind": row["kind"], "primary": row["is_primary"], "model": row["model"],
                "tta": row["tta"], "members": row["members"], "asset": key if key != "predict" else "prediction_files",
                "images_per_second": median(key, "images_per_second"), "seconds": median(key, "seconds"),
                "images_per_second_runs": [d["metadata"].get(key, {}).get("images_per_second") for d in details],
                "predicted": step.get("predicted"), "predictions_in_duckdb": row["predictions"],
                "runtime": step.get("runtime"), "batch_size": step.get("batch_size"),
                "evaluated": acc.get("evaluated"), "top1_accuracy": acc.get("top1_accuracy"),
                "top5_accuracy": acc.get("top5_accuracy"),
            })
        pre = last["metadata"].get("preprocess", {})
        seconds, sets = median("preprocess", "seconds"), pre.get("pixel_sets") or 1
        return {
            "rounds": len(details),
            "models": models,
            "preprocessing": {
                "pixel_sets": pre.get("pixel_sets"), "input_size": pre.get("input_size"),
                "computed": pre.get("computed"), "seconds": seconds,
                "seconds_per_pixel_set": seconds / sets if seconds is not None else None,
                "images_per_second": median("preprocess", "images_per_second"),
            },
            "pairs": tables["pairs"],
            "accuracy_measured": any(m["evaluated"] for m in models),
        }

    @staticmethod
    def top1(result: dict | None) -> dict[str, int] | None:
        if not result or not result.get("predictions"):
            return None
        table = pq.read_table(result["predictions"]).to_pydict()
        return dict(zip(table["path"], table["class_index"], strict=True))

    def agreement(self, reference: dict | None, result: dict) -> dict | None:
        theirs = self.top1(result)
        if reference is None or theirs is None:
            return None
        same = sum(1 for path, index in reference.items() if theirs.get(path) == index)
        missing = sum(1 for path in reference if path not in theirs)
        return {"images": len(reference), "same": same, "missing": missing, "rate": same / len(reference)}


def main() -> None:
    bench = Bench()
    summary = bench.main()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{summary['date'][:10]}-{bench.device}-{bench.images}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    from bench.report import markdown

    text = markdown(summary)
    (RESULTS / f"{stem}.md").write_text(text)
    print()
    print(text)
    print(f"written: {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
