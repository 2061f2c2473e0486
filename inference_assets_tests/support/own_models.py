"""A user's own classifier, saved in every form the project loads.

The network is the bundled EfficientNet-Lite0 with a new 4-class head: the ImageNet head's rows
for espresso, tripod, missile and tabby, so that on the sample photos (whose folders carry those
labels) it makes real, checkable predictions. Each form below is the same network on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inference_assets.core.models.loading import ModelSpec, load_classifier
from inference_assets.core.models.runtimes import export_onnx

CLASS_NAMES = ["espresso", "tripod", "missile", "tabby"]
IMAGENET_ROWS = [967, 872, 657, 281]
ARCH = "tf_efficientnet_lite0"
# tf_efficientnet_lite0's own preprocessing, as a model card states it (timm's pretrained_cfg keys)
CARD_PREPROCESSING = {"input_size": 224, "interpolation": "bicubic", "crop_pct": 0.875, "scaling": "tf"}


def four_class_network() -> torch.nn.Module:
    import timm

    imagenet = load_classifier(ModelSpec(), "cpu").module
    net = timm.create_model(ARCH, pretrained=False, num_classes=len(CLASS_NAMES))
    state = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("classifier.")}
    state["classifier.weight"] = imagenet.classifier.weight[IMAGENET_ROWS].clone()
    state["classifier.bias"] = imagenet.classifier.bias[IMAGENET_ROWS].clone()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def reference_outputs(net: torch.nn.Module, images: list[Path]) -> dict[str, np.ndarray]:
    """The network's outputs (logits) on each image through timm's own reference transform, by file name."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(model=net), is_training=False)
    with torch.inference_mode():
        return {p.name: net(transform(Image.open(p).convert("RGB")).unsqueeze(0))[0].numpy() for p in images}


@dataclass
class Form:
    """One way of saving the network, as the ``model`` resource is configured for it."""

    name: str
    model: str
    weights: str = "bundled"
    class_names: str | None = None
    multi_label_threshold: float | None = None

    def resource_config(self) -> dict:
        config = {"name": self.model, "weights": self.weights}
        if self.class_names:
            config["class_names"] = self.class_names
        return config


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _card(path: Path, **keys) -> None:
    _write(path, json.dumps({**CARD_PREPROCESSING, **keys}))


class _Nhwc(torch.nn.Module):
    """The network behind an NHWC input and a softmax: what a Keras/TensorFlow export looks like."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).softmax(dim=-1)


def save_every_form(net: torch.nn.Module, root: Path) -> list[Form]:
    """The network saved as each form, with its class names given the way that form gives them."""
    import timm.models
    from safetensors.torch import save_file

    state = net.state_dict()
    names_txt = _write(root / "names" / "classes.txt", "\n".join(CLASS_NAMES) + "\n")
    names_json_list = _write(root / "names" / "classes.json", json.dumps(CLASS_NAMES))
    names_json_map = _write(root / "names" / "map.json", json.dumps({str(i): n for i, n in enumerate(CLASS_NAMES)}))
    names_csv = _write(root / "names" / "classes.csv", "index,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASS_NAMES)))
    forms = []

    def checkpoint(name: str, obj, suffix: str = ".pth") -> str:
        path = root / "checkpoints" / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
        return str(path)

    forms.append(Form("bare state_dict .pth + names.txt", ARCH, checkpoint("bare", state), names_txt))
    forms.append(Form("{'state_dict'} wrapper + JSON list", ARCH, checkpoint("wrapped", {"state_dict": state, "epoch": 9}),
                      names_json_list))
    ddp = {f"module.{k}": v for k, v in state.items()}
    forms.append(Form("{'model'} wrapper with module. prefixes + JSON map", ARCH,
                      checkpoint("ddp", {"model": ddp, "optimizer": {"lr": 0.1}}), names_json_map))
    forms.append(Form("{'model_state_dict'} .bin + CSV", ARCH, checkpoint("msd", {"model_state_dict": state}, ".bin"),
                      names_csv))
    forms.append(Form("checkpoint carrying class_names", ARCH,
                      checkpoint("named", {"state_dict": state, "class_names": CLASS_NAMES}, ".pt")))
    safetensors_path = root / "checkpoints" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors_path),
              metadata={"class_names": json.dumps(CLASS_NAMES)})
    forms.append(Form(".safetensors carrying class_names", ARCH, str(safetensors_path)))

    folder = root / "timm_folder"
    timm.models.save_for_hf(net, str(folder), model_config={"label_names": CLASS_NAMES}, safe_serialization=True)
    forms.append(Form("timm / Hugging Face model folder", str(folder)))

    card_dir = root / "state_dict_with_card"
    card_dir.mkdir(parents=True)
    torch.save(state, card_dir / "weights.pth")
    _card(card_dir / "model_card.yaml", architecture=ARCH, class_names=CLASS_NAMES)
    forms.append(Form("a folder: state_dict + card naming the architecture", str(card_dir)))

    example = torch.zeros(1, 3, 224, 224)
    scripted = root / "torchscript" / "classifier.pt"
    scripted.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.trace(net, example), str(scripted))
    _card(scripted.with_name("classifier.card.json"), class_names=CLASS_NAMES)
    forms.append(Form("TorchScript + card beside it", str(scripted)))

    exported = root / "export" / "classifier.pt2"
    exported.parent.mkdir(parents=True)
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 224, 224),)), str(exported))  # a fixed batch of 2
    _card(exported.parent / "model_card.json", class_names=CLASS_NAMES)
    forms.append(Form("torch.export .pt2 (fixed batch 2) + card", str(exported)))

    onnx_dir = root / "onnx_folder"
    export_onnx(net, onnx_dir / "classifier.onnx", example, dynamic_batch=True,
                metadata={"class_names": json.dumps(CLASS_NAMES)})
    _write(onnx_dir / "model_card.yaml", "\n".join(f"{k}: {v}" for k, v in CARD_PREPROCESSING.items()) + "\n")
    forms.append(Form("ONNX, dynamic batch, names in its metadata: a folder with a YAML card", str(onnx_dir)))

    nhwc = root / "onnx_nhwc" / "classifier.onnx"
    export_onnx(_Nhwc(net), nhwc, torch.zeros(1, 224, 224, 3), dynamic_batch=False)
    _card(nhwc.with_name("model_card.json"), output="probabilities", class_names=CLASS_NAMES)
    forms.append(Form("ONNX, NHWC, fixed batch 1, probabilities out", str(nhwc)))

    multi = root / "multi_label" / "tagger.pt"
    multi.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.trace(net, example), str(multi))
    _card(multi.with_name("tagger.card.json"), class_names=CLASS_NAMES, activation="sigmoid", threshold=0.3)
    forms.append(Form("multi-label TorchScript (sigmoid, threshold 0.3)", str(multi), multi_label_threshold=0.3))
    return forms
