"""Several models over one collection: the models compared with the primary one, and ensembles.

The primary model is the one the pipeline has always run (the ``model`` setting). A model list
names more models to run beside it over the same images, and ensembles of them; each appears in
the results under its name. It is written inline, ``name=model`` pairs::

    lite1=tf_efficientnet_lite1,lite2=tf_efficientnet_lite2

or as a YAML/JSON file (``models.yaml``) for everything else::

    primary: lite0                 # the primary model's name (default: its architecture or file name)
    models:
      lite1: {model: tf_efficientnet_lite1}
      lite2: {model: tf_efficientnet_lite2, batch_size: 16}
      mine: {model: models/mine.pt2, class_names: models/classes.txt}
      lite0_flip: {model: tf_efficientnet_lite0, tta: flip}   # test-time augmentation: a model of its own
    ensembles:
      lite_mean: {members: [lite0, lite1, lite2]}             # mean of the members' probabilities
      lite_weighted: {members: {lite0: 1, lite1: 1, lite2: 2}}

A model takes every form the ``model`` setting does (``model``, ``weights``, ``class_names``,
``card``), plus ``batch_size``, ``top_k`` and ``tta`` (``flip``: the mean of the probabilities
of the image and of its mirror image, two forward passes). An ensemble is computed from its
members' stored probabilities, no forward pass; its members share their class names.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from inference_assets.core.errors import ConfigError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a Dagster asset key part and a DuckDB-friendly value
TTA_CHOICES = ("flip",)
_MODEL_KEYS = {"model", "weights", "class_names", "card", "batch_size", "top_k", "tta"}


@dataclass(frozen=True)
class ListedModel:
    """A model of the list: its name, and the settings the ``model`` resource takes."""

    name: str
    model: str
    weights: str | None = None  # None: the model resource's default
    class_names: str | None = None
    card: str | None = None
    batch_size: int = 0
    top_k: int = 5
    tta: str | None = None


@dataclass(frozen=True)
class Ensemble:
    """A named mean of members' probabilities, weighted by ``weights`` (normalized to sum to 1)."""

    name: str
    members: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def description(self) -> str:
        parts = [m if w == 1 else f"{m}*{w:g}" for m, w in zip(self.members, self.weights)]
        return f"ensemble({','.join(parts)})"


@dataclass(frozen=True)
class ModelList:
    """The models beside the primary one, and the ensembles; empty: the primary model alone."""

    primary: str | None = None  # the primary model's name in the results; None: derived from its setting
    source: str = ""  # what it was read from: the inline pairs or the file's path, as written
    models: tuple[ListedModel, ...] = ()
    ensembles: tuple[Ensemble, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.models or self.ensembles)

    def names(self, primary: str) -> list[str]:
        return [primary, *(m.name for m in self.models), *(e.name for e in self.ensembles)]

    def model(self, name: str) -> ListedModel:
        for listed in self.models:
            if listed.name == name:
                return listed
        raise ConfigError(f"model {name!r} is not in the model list: add it to models, or use one of "
                          f"{[m.name for m in self.models]}", settings=["models"])

    def check_ensembles(self, primary: str) -> None:
        """Every name is used once, and every ensemble's members are models (the primary one or listed ones)."""
        known = self.names(primary)
        if len(set(known)) != len(known):
            twice = sorted({n for n in known if known.count(n) > 1})
            raise ConfigError(f"model list: {twice} named more than once (the primary model is {primary!r}): "
                              "give each model and ensemble its own name in models", settings=["models"])
        models = [primary, *(m.name for m in self.models)]
        for ensemble in self.ensembles:
            unknown = [m for m in ensemble.members if m not in models]
            if unknown:
                raise ConfigError(f"ensemble {ensemble.name!r}: members {unknown} are not models of the list "
                                  f"(models: {models}): fix the ensemble's members in models", settings=["models"])


def default_primary_name(model: str | None, default: str) -> str:
    """The primary model's name in the results: its architecture (``tf_efficientnet_lite0``) or its
    file or folder's name, made an identifier."""
    text = (model or default).rstrip("/").split(":")[-1]
    stem = Path(text).name.split(".")[0] if ("/" in text or "." in text) else text
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "model"
    return name if name[0].isalpha() else f"m_{name}"


def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"model list: {what} name {name!r} is not valid: use letters, digits and _ , starting "
                          "with a letter (it names assets and rows), in models", settings=["models"])
    return name


def _listed(name: str, values: object) -> ListedModel:
    if isinstance(values, str):
        values = {"model": values}
    if not isinstance(values, dict) or "model" not in values:
        raise ConfigError(f"model list: model {name!r} needs a 'model' (an architecture or a model file), "
                          "in models", settings=["models"])
    unknown = sorted(set(values) - _MODEL_KEYS)
    if unknown:
        raise ConfigError(f"model list: model {name!r} has unknown keys {unknown}: use {sorted(_MODEL_KEYS)}, "
                          "in models", settings=["models"])
    tta = values.get("tta")
    if tta is not None and tta not in TTA_CHOICES:
        raise ConfigError(f"model list: model {name!r} has tta {tta!r}: use 'flip' or leave it out, in models",
                          settings=["models"])
    for key in ("batch_size", "top_k"):
        value = values.get(key)
        wrong = isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "batch_size" else 1)
        if value is not None and wrong:
            raise ConfigError(f"model list: model {name!r} has {key} {value!r}: use a whole number, in models",
                              settings=["models"])
    return ListedModel(
        name=_name(name, "model"),
        model=str(values["model"]),
        weights=None if values.get("weights") is None else str(values["weights"]),
        class_names=values.get("class_names"),
        card=values.get("card"),
        batch_size=values.get("batch_size") or 0,
        top_k=values.get("top_k") or 5,
        tta=tta,
    )


def _ensemble(name: str, values: object) -> Ensemble:
    members = values.get("members") if isinstance(values, dict) else values
    if isinstance(members, dict):
        names, weights = list(members), list(members.values())
    elif isinstance(members, list):
        names, weights = members, [1.0] * len(members)
    else:
        names, weights = [], []
    if len(names) < 2:
        raise ConfigError(f"model list: ensemble {name!r} needs at least two members (a list of model names, or "
                          "{name: weight}), in models", settings=["models"])
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        weights = [-1.0]
    if any(w <= 0 for w in weights):
        raise ConfigError(f"model list: ensemble {name!r} has a weight that is not a positive number, in models",
                          settings=["models"])
    return Ensemble(_name(name, "ensemble"), tuple(_name(n, "member") for n in names), tuple(weights))


def parse_model_list(text: str | None, base: Path | None = None) -> ModelList:
    """The model list of ``text``: a YAML/JSON file path, or inline ``name=model`` pairs separated by commas.

    A relative file path is read from ``base`` (default the current folder); raises a one-line
    ConfigError naming ``models`` for anything wrong."""
    text = (text or "").strip()
    return dataclasses.replace(_parse(text, base), source=text) if text else ModelList()


def _parse(text: str, base: Path | None) -> ModelList:
    if text.endswith((".yaml", ".yml", ".json")):
        path = Path(text).expanduser()
        path = path if path.is_absolute() or base is None else base / path
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"model list file {text!r} cannot be read ({exc.strerror or exc}): set models to a "
                              "YAML/JSON file that exists, or to name=model pairs", settings=["models"]) from None
        try:
            document = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
            raise ConfigError(f"model list file {text!r} is not valid: {str(exc).splitlines()[0]}: fix the file "
                              "named by models", settings=["models"]) from None
        return _from_document(document, text)
    models = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, equals, model = item.partition("=")
        if not equals or not model.strip():
            raise ConfigError(f"model list {text!r}: {item!r} is not name=model: write lite1=tf_efficientnet_lite1,"
                              "... or give a YAML file, in models", settings=["models"])
        models.append(_listed(name.strip(), model.strip()))
    return _checked(ModelList(models=tuple(models)))


def _from_document(document: object, where: str) -> ModelList:
    if not isinstance(document, dict) or not set(document) <= {"primary", "models", "ensembles"}:
        raise ConfigError(f"model list file {where!r}: expected a mapping with 'models' (and optionally 'primary', "
                          "'ensembles'): fix the file named by models", settings=["models"])
    models, ensembles = document.get("models") or {}, document.get("ensembles") or {}
    if not isinstance(models, dict) or not isinstance(ensembles, dict):
        raise ConfigError(f"model list file {where!r}: 'models' and 'ensembles' map names to settings: fix the "
                          "file named by models", settings=["models"])
    primary = document.get("primary")
    return _checked(ModelList(
        primary=None if primary is None else _name(primary, "primary model"),
        models=tuple(_listed(str(name), values) for name, values in models.items()),
        ensembles=tuple(_ensemble(str(name), values) for name, values in ensembles.items()),
    ))


def _checked(models: ModelList) -> ModelList:
    names = [m.name for m in models.models] + [e.name for e in models.ensembles]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"model list: {twice} named more than once: give each model and ensemble its own name, "
                          "in models", settings=["models"])
    return models
