"""The ``models`` resource: the models run beside the primary one, and the ensembles of them."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from inference_assets.core.errors import ConfigError
from inference_assets.core.models.loading import DEFAULT_MODEL
from inference_assets.core.models.model_list import Ensemble, ModelList, default_primary_name, parse_model_list
from inference_assets.resources.model import ModelResource
from inference_assets.settings import for_deployment, variables_named


@contextmanager
def _named_in_the_list(name: str) -> Iterator[None]:
    """A listed model's ConfigError, naming the model and the model list's variable (not the primary model's)."""
    try:
        yield
    except ConfigError as error:
        message = re.sub(r"\b(set|in) (weights|name|class_names|card|model_card)\b", r"\1 its \2", str(error))
        raise for_deployment(ConfigError(f"model {name!r} of the model list: {message} (in models)",
                                         settings=["models"])) from None


class ModelListResource(ConfigurableResource):
    """The model list (``core/models/model_list.py``): more models over the same images, compared with
    the primary one (the ``model`` resource), and ensembles of them. Empty: the primary model alone.

    The list decides which assets the code location has (one ``<name>/prediction_files`` per model or
    ensemble), so it is read when the code location loads; a run checks that its models are still
    the listed ones.
    """

    entries: str = Field(
        default="",
        description="name=model pairs (lite1=tf_efficientnet_lite1,lite2=tf_efficientnet_lite2), or a YAML/JSON "
        "file with models (each with model, weights, class_names, card, batch_size, top_k, tta), ensembles "
        "({members: [a, b]} or {members: {a: 1, b: 2}}) and the primary model's name.",
    )

    _list: ModelList = PrivateAttr()
    _models: dict = PrivateAttr(default_factory=dict)
    _warn: object = PrivateAttr(default=print)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._list = self.model_list
        self._warn = context.log.warning

    def check_configuration(self) -> None:
        """Before any run (``make run``'s preflight): the list reads, and each listed model is one the
        ``model`` resource accepts (its files, card, class names; weights fetched where they must be)."""
        for listed in self.model_list.models:
            self._resource(listed).check_configuration(partial(_named_in_the_list, listed.name))

    def _resource(self, listed) -> ModelResource:
        fields = {"weights": listed.weights, "class_names": listed.class_names, "card": listed.card}
        return ModelResource(name=listed.model, batch_size=listed.batch_size, top_k=listed.top_k, tta=listed.tta,
                             **{key: value for key, value in fields.items() if value is not None})

    @property
    def model_list(self) -> ModelList:
        with variables_named():
            listed = parse_model_list(self.entries)
        return listed

    def primary_name(self, model: ModelResource) -> str:
        """The primary model's name in the results: the list's ``primary``, else its architecture or file name."""
        return self._list.primary or default_primary_name(model.name, DEFAULT_MODEL)

    def names(self, model: ModelResource) -> list[str]:
        """Every model's name, the primary one first, then the listed models and the ensembles; checked."""
        primary = self.primary_name(model)
        with variables_named():
            self._list.check_ensembles(primary)
        return self._list.names(primary)

    def model(self, name: str) -> ModelResource:
        """The listed model ``name`` as a checked ``model`` resource (its network loads on first use)."""
        if name not in self._models:
            with variables_named():
                listed = self._list.model(name)
            self._models[name] = self._resource(listed).prepare(self._warn, partial(_named_in_the_list, name))
        return self._models[name]

    def ensemble(self, name: str) -> Ensemble:
        for ensemble in self._list.ensembles:
            if ensemble.name == name:
                return ensemble
        raise KeyError(name)
