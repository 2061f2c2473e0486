"""Reading weights files as training scripts write them, without running any code they hold.

- ``.safetensors``: tensors only (safetensors never unpickles); class names may sit in its
  string metadata under ``class_names`` (a JSON list).
- ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(..., weights_only=True)``; a bare state_dict
  or one wrapped as ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``
  (nested wrappers too), with the ``module.`` prefix of DataParallel/DDP removed; a
  ``class_names`` / ``classes`` entry beside it gives the class names.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from inference_assets.core.errors import ConfigError
from inference_assets.core.models.class_names import names_from_value

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
NAME_KEYS = ("class_names", "classes", "label_names", "labels")


@dataclass
class Checkpoint:
    state: dict[str, torch.Tensor]
    class_names: list[str] | None = None


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip holding TorchScript ``code/`` (a state_dict saved by
    ``torch.save`` is a zip too, but has only ``data.pkl`` and tensors)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def read_checkpoint(path: Path) -> Checkpoint:
    """The state_dict (and class names, if carried) in a weights file; one-line errors otherwise."""
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise ConfigError(
            f"weights file {str(path)!r} could not be read safely ({type(exc).__name__}): "
            "save a plain state_dict with torch.save(model.state_dict(), path), or use .safetensors"
        ) from exc
    names = None
    while isinstance(obj, dict):
        names = names or _names_entry(obj, path)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ConfigError(
            f"weights file {str(path)!r} holds no state_dict: save model.state_dict() "
            "(alone or as {'state_dict': ..., 'class_names': [...]})"
        )
    return Checkpoint(state=_strip_prefix(tensors), class_names=names)


def _names_entry(obj: dict, path: Path) -> list[str] | None:
    for key in NAME_KEYS:
        value = obj.get(key)
        if isinstance(value, (list, tuple, dict)) and value and not any(isinstance(v, torch.Tensor) for v in
                                                                         (value.values() if isinstance(value, dict) else value)):
            return names_from_value(value, f"weights file {str(path)!r} entry {key!r}")
    return None


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(
            f"weights file {str(path)!r} is not a readable safetensors file ({' '.join(str(exc).split())[:100]}): "
            "save it again with safetensors.torch.save_file(model.state_dict(), path)"
        ) from None
    names = None
    for key in NAME_KEYS:
        if key in metadata:
            try:
                names = names_from_value(json.loads(metadata[key]), f"weights file {str(path)!r} metadata {key!r}")
            except json.JSONDecodeError:
                raise ConfigError(f"weights file {str(path)!r}: metadata {key!r} must be a JSON list of names") from None
            break
    return Checkpoint(state=_strip_prefix(state), class_names=names)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP's ``module.`` (and torch.compile's ``_orig_mod.``) from every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state
