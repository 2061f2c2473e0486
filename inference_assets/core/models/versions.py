"""Code versions of the partitioned assets, from the configured model, found without loading it.

Dagster shows a partition as stale ("has a new code version") when the code version its last
materialization recorded is not the asset's current one. These versions are computed when the
code location loads, from the model settings, so switching the model, its weights, its class
names or its preprocessing shows the affected partitions as needing work before any run:

- ``pixels`` (``preprocessed_images``): the fingerprint the pixel store keys stored pixels by
  (resize, crop, interpolation, JPEG draft mode; the name of their ``preprocessed/`` folder).
  Mean and std are applied at inference, so they are not part of it.
- ``predictions`` (``prediction_files``): the pixels version, the normalization (mean, std,
  channel order), the architecture or model format, the weights (a SHA-256 of the file's bytes,
  as ``model_id`` has it; a name for bundled, timm or torchvision weights), the class names
  file's names, and what the model card says (class names, output, activation, threshold, ...).

Nothing here builds a network or reads a tensor: timm's pretrained config, a model folder's
``config.json`` or torchvision's weights preset give the preprocessing. An ONNX or
``torch.export`` model may fix its input size inside the file; without ``input_size`` in its
card, the file's digest stands in for its preprocessing. A setting that cannot be resolved (a
missing file, an unknown model) still gets a version, made of the settings themselves, so the
code location loads and the step that checks the model reports the problem, in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.preprocessing import Preprocessing, from_timm_config
from inference_assets.core.models.checkpoints import is_torchscript
from inference_assets.core.models.class_names import read_class_names
from inference_assets.core.models.loading import (
    DEFAULT_PREPROCESSING,
    DEFAULT_WEIGHTS,
    STATE_DICT_SUFFIXES,
    ModelSpec,
    _card,
    _local_weights_path,
    _single_model_file,
    _with_card,
    architecture_preprocessing,
    content_digest,
    named_weights_id,
)
from inference_assets.core.models.model_card import ModelCard

SCHEME = "1"  # change when what goes into a version changes


@dataclass(frozen=True)
class AssetVersions:
    """The code versions of ``preprocessed_images`` (``pixels``) and ``prediction_files`` (``predictions``)."""

    pixels: str
    predictions: str


@dataclass(frozen=True)
class _Resolved:
    name: str  # short readable name: the architecture, or the model file's stem
    preprocessing: Preprocessing | None  # None: the model file decides its input size
    weights: str  # what the weights are
    card: ModelCard
    fixed_by: str = ""  # the digest of the file that decides the input size, when preprocessing is None


def asset_versions(spec: ModelSpec, jpeg_draft: bool = False) -> AssetVersions:
    """The code versions for a model as configured (``jpeg_draft``: pixels decoded in draft mode)."""
    try:
        model = _resolve(spec)
        class_names = read_class_names(spec.class_names) if spec.class_names else None
    except Exception as exc:  # noqa: BLE001 -- the code location must load: the step that checks the model says what is wrong
        version = f"unresolved-{_digest(SCHEME, repr(spec), str(jpeg_draft), ' '.join(str(exc).split()))[:16]}"
        return AssetVersions(pixels=version, predictions=version)
    if model.preprocessing is not None:
        pixels_made_by = model.preprocessing.with_jpeg_draft() if jpeg_draft else model.preprocessing
        pixels = pixels_made_by.fingerprint
        p = model.preprocessing
        normalization = repr((p.mean, p.std, p.channel_order))
    else:
        pixels = f"file-{_digest(SCHEME, model.fixed_by, _card_settings(model.card), str(jpeg_draft))[:12]}"
        normalization = ""
    predictions = _digest(SCHEME, pixels, normalization, model.weights, json.dumps(class_names),
                          _card_settings(model.card))
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", model.name)[:40]
    return AssetVersions(pixels=pixels, predictions=f"{slug}-{predictions[:16]}")


def _resolve(spec: ModelSpec) -> _Resolved:
    """What decides the model's predictions, as ``models.describe_model`` resolves it, minus the network."""
    if not spec.is_path:
        weights_path = Path(spec.weights).expanduser() if spec.weights_kind == "file" else None
        return _architecture(spec, _card(spec, weights_path if weights_path and weights_path.exists() else None))
    path = Path(spec.name).expanduser()
    if spec.weights != DEFAULT_WEIGHTS:
        raise ConfigError(f"weights {spec.weights!r} apply to an architecture, not to model path {spec.name!r}")
    if not path.exists():
        raise ConfigError(f"model path {spec.name!r} not found")
    card = _card(spec, path)
    if path.is_dir() and (path / "config.json").is_file():
        return _timm_folder(path, card)
    file = _single_model_file(path) if path.is_dir() else path
    suffix = file.suffix.lower()
    whole = suffix in (".onnx", ".pt2", ".ts", ".torchscript") or (suffix != ".safetensors" and is_torchscript(file))
    if not whole and suffix in STATE_DICT_SUFFIXES:
        if not card.architecture:
            raise ConfigError(f"model file {str(file)!r} is a state_dict without an architecture in its card")
        return _architecture(ModelSpec(card.architecture, str(file), spec.class_names, card.path), card)
    if not whole:
        raise ConfigError(f"model file {str(file)!r} has an unknown format")
    digest = content_digest(file)
    weights = f"{suffix}:{digest}"
    if suffix in (".onnx", ".pt2") and not card.input_size:  # the file may fix its input size
        return _Resolved(file.stem, None, weights, card, fixed_by=digest)
    return _Resolved(file.stem, _with_card(None, dict(DEFAULT_PREPROCESSING), card, always_from_cfg=True), weights,
                     card)


def _architecture(spec: ModelSpec, card: ModelCard) -> _Resolved:
    library = spec.library
    if spec.weights_kind == "file":
        weights = f"file:{content_digest(_local_weights_path(spec))}"
    else:
        weights = named_weights_id(spec, library)
    base, base_cfg = architecture_preprocessing(spec, library)
    return _Resolved(spec.arch, _with_card(base, base_cfg, card), f"{library}:{spec.arch}:{weights}", card)


def _timm_folder(folder: Path, card: ModelCard) -> _Resolved:
    from timm.models._hub import load_model_config_from_path

    try:
        pretrained_cfg, arch, _ = load_model_config_from_path(folder)
    except Exception as exc:  # a broken config.json: the step says how
        raise ConfigError(f"model folder {str(folder)!r}: config.json could not be read ({type(exc).__name__})") from None
    weights_path = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights_path is None:
        raise ConfigError(f"model folder {str(folder)!r} has no model.safetensors or pytorch_model.bin")
    weights = f"timm-folder:{arch}:{content_digest(weights_path)}+{content_digest(folder / 'config.json')}"
    preprocessing = _with_card(from_timm_config(pretrained_cfg), pretrained_cfg, card)
    return _Resolved(arch, preprocessing, weights, card)


def _card_settings(card: ModelCard) -> str:
    """What a model card says, without where it is or its informational keys."""
    fields = {f.name: getattr(card, f.name) for f in dataclasses.fields(card) if f.name not in ("path", "raw")}
    return json.dumps(fields, sort_keys=True, default=list)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
