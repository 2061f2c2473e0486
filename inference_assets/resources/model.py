"""The ``model`` resource: which classifier runs, with its class names, card, batch size and top-k."""

from collections.abc import Callable
import torch
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.preprocessing import Preprocessing
from inference_assets.core.models.loading import (
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    Classifier,
    ModelInfo,
    ModelSpec,
    check_weights_available,
    describe_model,
    load_classifier,
)
from inference_assets.core.models.model_list import TTA_CHOICES
from inference_assets.settings import variables_named


class ModelResource(ConfigurableResource):
    """Which classifier to run (an architecture with weights, or your own model file or folder), its
    class names and model card, the batch size, and how many classes to keep.

    Checked at the start of each step, before any image is decoded (a missing file, an unknown
    format, a head that does not match the class names fail there, in one line); the network is
    loaded only by the step that predicts, once per step.
    """

    name: str = Field(
        default=DEFAULT_MODEL,
        description="A timm or torchvision architecture (tf_efficientnet_lite0, resnet50; 'timm:'/'torchvision:' "
        "prefixes pick the library), or the path of a model file (.onnx, .pt2, TorchScript .pt, a state_dict "
        "whose card names its architecture) or of a model folder (timm/Hugging Face layout, or one model file "
        "and a model card).",
    )
    weights: str = Field(
        default=DEFAULT_WEIGHTS,
        description="For an architecture: 'bundled' (tf_efficientnet_lite0/1/2's ImageNet weights shipped as packages), a "
        "torchvision weights name such as IMAGENET1K_V1, 'pretrained' (timm hub), or a local checkpoint "
        "(.pth/.pt/.bin/.safetensors, any number of classes).",
    )
    class_names: str | None = Field(
        default=None,
        description="A file of class names in output order: .txt (one per line), .json (a list or {index: name}) "
        "or .csv (index,name). Default: the model card's, the model's own, ImageNet's, or class_<i>.",
    )
    card: str | None = Field(
        default=None,
        description="A model card (.json/.yaml): class names, input size, resize, crop, interpolation, mean/std or "
        "scaling, channel order, layout, output, activation. Default: model_card.json/.yaml or "
        "<model>.card.json/.yaml beside the model.",
    )
    batch_size: int = Field(
        default=0,
        ge=0,
        description="Images per forward pass; 0 = automatic: 8 on CPU; on CUDA the largest power of two that "
        "fits in the GPU's memory, found by a probe (256 for a model that is not a torch module, e.g. ONNX).",
    )
    top_k: int = Field(default=5, gt=0, description="How many classes to keep per image.")
    tta: str | None = Field(
        default=None,
        description="Test-time augmentation: 'flip' predicts each image and its mirror image and keeps the mean "
        "of both probabilities (two forward passes; its results are kept apart from the plain model's).",
    )

    _info: ModelInfo = PrivateAttr()
    _classifiers: dict = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.prepare(context.log.warning)

    def prepare(self, warn: Callable[[str], None], errors: Callable = variables_named) -> "ModelResource":
        """Check the model (one-line ConfigErrors here, before any work) and describe it; returns itself.
        ``errors``: how a ConfigError is worded for the deployment (default: naming the model variables)."""
        with errors():
            if self.tta not in (None, *TTA_CHOICES):
                raise ConfigError(f"model tta {self.tta!r} is not known: use 'flip' or leave it unset")
            self._info = describe_model(self.spec)
        for warning in self._info.warnings:
            warn(warning)
        return self

    def check_configuration(self, errors: Callable = variables_named) -> None:
        """Before any run: unknown models, bad files, cards and class names; torchvision weights are
        fetched into the hub cache here."""
        with errors():
            check_weights_available(self.spec)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, weights=self.weights, class_names=self.class_names, card=self.card)

    @property
    def info(self) -> ModelInfo:
        """The checked model: format, class names, preprocessing, identity."""
        return self._info

    @property
    def preprocessing(self) -> Preprocessing:
        return self._info.preprocessing

    @property
    def weights_id(self) -> str:
        """What exactly the weights are (recorded with every prediction)."""
        return self._info.weights_id

    @property
    def slug(self) -> str:
        """Names the folder of this model's per-partition result files (changes with weights, classes,
        preprocessing, activation or test-time augmentation)."""
        return self._info.slug + (f"-{self.tta}" if self.tta else "")

    def load(self, device: torch.device) -> Classifier:
        """The classifier on ``device``, loaded on first use in this step."""
        key = str(device)
        if key not in self._classifiers:
            self._classifiers[key] = load_classifier(self.spec, device)
        return self._classifiers[key]
