"""A model card: one small JSON or YAML file beside a model, saying what its format does not carry.

Keys (timm's ``pretrained_cfg`` names where they exist; all optional unless said):

- ``class_names`` (or ``label_names``): a list of names, or an ``{index: name}`` map;
- ``architecture``: the timm/torchvision architecture a state_dict file is for (required for one);
- ``input_size``: ``224``, ``[H, W]`` or ``[3, H, W]``;
- ``resize``: ``shorter`` (scale the shorter side, then center-crop) or ``exact`` (scale both sides);
  ``crop_pct``: the crop's fraction of the resized image (1.0: no margin); ``crop_mode``: timm's
  ``center`` / ``squash`` / ``border`` (``resize`` sets it);
- ``interpolation``: ``bilinear``, ``bicubic``, ``nearest``, ``lanczos``, ...;
- ``mean`` / ``std`` (three numbers on the 0..1 scale), or ``scaling``: ``torch`` (ImageNet mean/std),
  ``tf`` ([-1, 1]), ``caffe`` (BGR, ImageNet mean subtracted on the 0..255 scale) or ``0-1``;
- ``channel_order``: ``rgb`` or ``bgr``; ``layout``: ``NCHW`` or ``NHWC`` (ONNX inputs);
- ``output``: ``logits`` (default) or ``probabilities``; ``activation``: ``softmax`` (default) or
  ``sigmoid`` (multi-label, with ``threshold``, default 0.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from inference_assets.core.errors import ConfigError
from inference_assets.core.models.class_names import names_from_value

CARD_NAMES = ("model_card.json", "model_card.yaml", "model_card.yml")
CARD_SUFFIXES = (".card.json", ".card.yaml", ".card.yml")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALINGS = {
    "torch": (IMAGENET_MEAN, IMAGENET_STD, "rgb"),
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "rgb"),
    "0-1": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb"),
    # Keras' "caffe" mode: RGB -> BGR, then x*255 - [103.939, 116.779, 123.68]
    "caffe": ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255, 1 / 255, 1 / 255), "bgr"),
}
_CHOICES = {
    "resize": ("shorter", "exact"),
    "crop_mode": ("center", "squash", "border"),
    "interpolation": ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"),
    "scaling": tuple(SCALINGS),
    "channel_order": ("rgb", "bgr"),
    "layout": ("nchw", "nhwc"),
    "output": ("logits", "probabilities"),
    "activation": ("softmax", "sigmoid"),
}
_INFORMATIONAL = {"name", "description", "license", "source", "notes", "num_classes", "first_conv", "classifier",
                  "pool_size", "hf_hub_id", "architecture_args", "tag", "url"}


@dataclass(frozen=True)
class ModelCard:
    """What a card says; ``None`` where it is silent."""

    path: str | None = None
    class_names: list[str] | None = None
    architecture: str | None = None
    input_size: tuple[int, int] | None = None  # (height, width)
    crop_pct: float | None = None
    crop_mode: str | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str | None = None
    layout: str | None = None
    output: str = "logits"
    activation: str = "softmax"
    threshold: float = 0.5
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def preprocessing_keys(self) -> dict:
        """The timm ``pretrained_cfg`` keys it sets (what overrides a model's own preprocessing)."""
        keys = {
            "input_size": (3, *self.input_size) if self.input_size else None,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
        }
        return {k: v for k, v in keys.items() if v is not None}


def find_card(model_path: Path) -> Path | None:
    """The card beside a model: ``<name>.card.json|yaml`` or ``model_card.json|yaml`` in its folder."""
    folder = model_path if model_path.is_dir() else model_path.parent
    candidates = [] if model_path.is_dir() else [model_path.with_name(model_path.stem + s) for s in CARD_SUFFIXES]
    candidates += [folder / name for name in CARD_NAMES]
    return next((c for c in candidates if c.is_file()), None)


def read_card(path: str | Path) -> ModelCard:
    """Read and check a card; any problem is a one-line ConfigError naming the file and key."""
    path = Path(path).expanduser()
    where = f"model card {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} not found: give the path of an existing .json or .yaml card")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # JSON, YAML and decoding errors alike
        detail = " ".join(str(exc).split())[:120]
        raise ConfigError(f"{where} could not be parsed ({type(exc).__name__}: {detail}): fix its syntax") from None
    return card_from_dict(data, where, str(path))


def card_from_dict(data: object, where: str, path: str | None = None) -> ModelCard:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values (got {type(data).__name__})")
    data = dict(data)
    allowed = set(_CHOICES) | _INFORMATIONAL | {f.name for f in ModelCard.__dataclass_fields__.values()} | {"label_names"}
    unknown = sorted(set(data) - allowed - {"path", "raw"})
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}: use one of {', '.join(sorted(allowed - _INFORMATIONAL - {'path', 'raw'}))}")
    for key, choices in _CHOICES.items():
        if key in data:
            value = data[key]
            if not isinstance(value, str) or value.lower() not in choices:
                raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)} (got {value!r}): correct that key in the card")
            data[key] = value.lower()
    names = data.get("class_names", data.get("label_names"))
    mean, std, order = _normalization(data, where)
    crop_mode = data.get("crop_mode") or {"shorter": "center", "exact": "squash", None: None}[data.get("resize")]
    return ModelCard(
        path=path,
        class_names=names_from_value(names, where) if names is not None else None,
        architecture=_typed(data, "architecture", str, where),
        input_size=_input_size(data.get("input_size"), where),
        crop_pct=_fraction(data, "crop_pct", where),
        crop_mode=crop_mode,
        interpolation=data.get("interpolation"),
        mean=mean,
        std=std,
        channel_order=order,
        layout=data["layout"].upper() if "layout" in data else None,
        output=data.get("output", "logits"),
        activation=data.get("activation", "softmax"),
        threshold=_fraction(data, "threshold", where) if "threshold" in data else 0.5,
        raw=data,
    )


def _typed(data: dict, key: str, kind: type, where: str):
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__} (got {value!r}): correct that key in the card")
    return value


def _fraction(data: dict, key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where}: {key} must be a number in (0, 1] (got {value!r}): correct that key in the card")
    return float(value)


def _triple(data: dict, key: str, where: str) -> tuple[float, float, float] | None:
    value = data.get(key)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{where}: {key} must be a list of three numbers on the 0..1 scale (got {value!r}): correct that key in the card")
    if key == "std" and any(v <= 0 for v in value):
        raise ConfigError(f"{where}: std values must be positive (got {value!r}): correct that key in the card")
    return tuple(float(v) for v in value)


def _normalization(data: dict, where: str):
    mean, std, order = None, None, data.get("channel_order")
    if "scaling" in data:
        mean, std, scaling_order = SCALINGS[data["scaling"]]
        order = order or scaling_order
    mean = _triple(data, "mean", where) or mean
    std = _triple(data, "std", where) or std
    return mean, std, order


def _input_size(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        sizes = [value, value]
    elif isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, int) for v in value):
        if len(value) == 3 and value[0] != 3:
            raise ConfigError(f"{where}: input_size [C, H, W] must have 3 channels (got {list(value)}): correct that key in the card")
        sizes = list(value[-2:])
    else:
        raise ConfigError(f"{where}: input_size must be 224, [H, W] or [3, H, W] (got {value!r}): correct that key in the card")
    if min(sizes) < 1:
        raise ConfigError(f"{where}: input_size must be positive (got {value!r}): correct that key in the card")
    return sizes[0], sizes[1]
