"""What every benchmark peer shares: the image list, the model, its reference transform, the output file.

Each peer is a separate process (``python -m bench.peers.<name> ...``) so that its speed and
peak memory are its own. It prints one JSON line: ``{"images": n, "seconds": s, ...}``, where
``seconds`` runs from the first image read to the last prediction written: interpreter start,
imports and (for Ray) ``ray.init()`` are outside it, model loading is inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from inference_assets.core.inference.devices import autocast_dtype
from inference_assets.core.models.loading import Classifier, ModelSpec, load_classifier

PREDICTION_SCHEMA = pa.schema([("path", pa.string()), ("class_index", pa.int32())])


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--images", type=Path, required=True, help="the collection's root folder")
    p.add_argument("--out", type=Path, required=True, help="Parquet file of (path, class_index) to write")
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="bundled")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    return p


def image_paths(root: Path) -> list[Path]:
    """The collection's images (``.jpg``/``.png``, as ``bench.collection`` writes them), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix in {".jpg", ".png"} and p.is_file())


def relative(paths: list[Path], root: Path) -> list[str]:
    """The key predictions are compared on: the path relative to the collection root."""
    return [p.relative_to(root).as_posix() for p in paths]


def load_model(args) -> Classifier:
    return load_classifier(model_spec(args), torch.device(args.device))


def reference_transform(spec: ModelSpec):
    """The model's own evaluation transform as its library documents it (PIL image -> normalized tensor).

    Built from the model's pretrained config (timm) or weights preset (torchvision), without
    loading any weights.
    """
    from inference_assets.core.models.loading import _timm_pretrained_cfg, _torchvision_weights

    if spec.library == "timm":
        import timm.data

        return timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=_timm_pretrained_cfg(spec.arch)))
    return _torchvision_weights(spec).transforms()


def model_spec(args) -> ModelSpec:
    return ModelSpec(name=args.model, weights=args.weights)


def autocast(args):
    dtype = autocast_dtype(args.precision)
    return torch.autocast(device_type=torch.device(args.device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def write_predictions(out: Path, paths: list[str], class_indices: list[int]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"path": paths, "class_index": class_indices}, schema=PREDICTION_SCHEMA), out)


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
