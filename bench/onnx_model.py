"""The benchmark's model exported to ONNX, as a user would bring it: a folder with ``model.onnx`` (class
names in its metadata) and a model card stating the model's own preprocessing (timm's data config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from inference_assets.core.models.loading import ModelSpec, load_classifier
from inference_assets.core.models.runtimes import export_onnx


def export_model_folder(spec: ModelSpec, folder: Path) -> Path:
    """Write ``folder/model.onnx`` (dynamic batch, fp32) and ``folder/model_card.json``; return ``folder``."""
    from timm.data import resolve_data_config

    from inference_assets.core.models.loading import _timm_pretrained_cfg

    if spec.library != "timm":
        raise SystemExit(f"the ONNX peer exports timm models; {spec.arch!r} is not one")
    classifier = load_classifier(spec, "cpu")
    folder.mkdir(parents=True, exist_ok=True)
    height, width = classifier.preprocessing.input_size
    export_onnx(classifier.module, folder / "model.onnx", torch.zeros(1, 3, height, width),
                metadata={"class_names": json.dumps(classifier.labels)})
    config = resolve_data_config(pretrained_cfg=_timm_pretrained_cfg(spec.arch))
    card = {key: list(config[key]) if isinstance(config[key], tuple) else config[key]
            for key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")}
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
