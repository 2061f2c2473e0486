"""A PyTorch classifier's network run by a faster CPU runtime: OpenVINO or ONNX Runtime.

On a CPU, PyTorch eager is the ceiling of the forward pass; OpenVINO and ONNX Runtime fuse the
network's layers and run the same fp32 arithmetic faster (docs/performance.md has the figures).
The network is converted once per model and runtime: the model's identity (weights, class
names, preprocessing, activation), its input size, the runtime's and torch's versions name a
folder under ``<work_dir>/converted/``, written whole under a temporary name and renamed, so a
killed conversion leaves nothing that looks complete, and later steps, partitions and runs load
it instead of converting again. A changed model has another identity, so another folder.

Every converted network is checked against PyTorch before it is used, on a check batch (the
first images the step predicts): the same top-1 on each image, and probabilities within
``PARITY_TOLERANCE``. ``auto`` uses the fastest runtime that passes and falls back to PyTorch
(with a warning saying by how much the others differed); a runtime asked for by name is used
either way, with its measured difference logged.

Passing on the check batch does not prove every later image: an image whose two most probable
classes (or, for a multi-label model, a class and the threshold) are closer than the runtimes'
difference could rank differently. So a converted network is used through ``SettledNetwork``:
each image whose margin is under ``settle_margin`` (ten times the difference measured on the
check batch, at least ``2 * PARITY_TOLERANCE``) is run again in PyTorch and PyTorch's outputs are
kept, which makes the top-1 PyTorch's on every image, not only on the checked ones.

OpenVINO is asked for fp32 inference (its inference-precision hint: on CPUs with bf16 or AMX it
would otherwise compute in bf16) and its saved weights are not compressed to fp16.

``openvino-int8`` is the one approximate runtime, opt-in only (``auto`` never takes it): the
OpenVINO network quantized to int8 by NNCF's post-training quantization, calibrated on the first
``CALIBRATION_IMAGES`` preprocessed images of the step that converts it (the collection's own
images), and cached like any conversion (the calibration's size is recorded beside it). Its
agreement with PyTorch is measured and logged, not enforced, and no near-tie is settled: that
would send most images back to PyTorch. Needs the ``int8`` extra (``nncf``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from inference_assets.core.errors import ConfigError
from inference_assets.core.models.loading import Classifier
from inference_assets.core.models.runtimes import OnnxModel, export_onnx

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime", "openvino-int8")
AUTO_ORDER = ("openvino", "onnxruntime")  # fastest first, measured on CPU (docs/performance.md)
APPROXIMATE = ("openvino-int8",)  # never chosen by auto, never settled: agreement measured, not enforced
CALIBRATION_IMAGES = 300  # int8: images the quantization is calibrated on
PACKAGES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime",), "openvino-int8": ("openvino", "nncf")}
PARITY_TOLERANCE = 1e-4  # largest difference of any probability from PyTorch's
SETTLE_FACTOR = 10  # images closer to a tie than this many times the measured difference are settled by PyTorch


@dataclass(frozen=True)
class Parity:
    """How a converted network's probabilities compare with PyTorch's on the check batch."""

    images: int
    top1_equal: int
    max_difference: float

    @property
    def exact(self) -> bool:
        return self.top1_equal == self.images and self.max_difference <= PARITY_TOLERANCE

    def describe(self) -> str:
        return (f"top-1 equal on {self.top1_equal}/{self.images} check images, "
                f"largest probability difference {self.max_difference:.2e}")


@dataclass(frozen=True)
class RuntimeChoice:
    """The classifier to predict with, and what was decided on the way (for logs and metadata)."""

    classifier: Classifier
    runtime: str  # torch | openvino | onnxruntime
    parity: Parity | None  # None for PyTorch itself
    converted: Path | None  # the converted network's folder
    reused: bool  # the folder was there already
    notes: tuple[str, ...] = ()  # why a runtime was not used


def runtime_version(runtime: str) -> str:
    """The installed versions of the runtime's packages (``2026.4.1`` or ``2026.4.1-nncf3.4.0``), or ""
    when one is missing."""
    versions = []
    for package in PACKAGES.get(runtime, (runtime,)):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            return ""
        versions.append(version if not versions else f"{package}{version}")
    return "-".join(versions)


def available(runtime: str) -> bool:
    """Whether the runtime's packages are installed (PyTorch always is)."""
    return runtime == "torch" or bool(runtime_version(runtime))


def install_hint(runtime: str) -> str:
    return "pip install 'inference_assets[int8]'" if runtime == "openvino-int8" else f"pip install {runtime}"


def conversion_folder(cache_root: Path, classifier: Classifier, runtime: str) -> Path:
    """Where the network converted for ``runtime`` lives: one folder per model identity, input size and versions."""
    size = "x".join(str(s) for s in classifier.preprocessing.input_size)
    key = f"{classifier.info.slug}-{size}-{runtime}-{runtime_version(runtime)}-torch{torch.__version__.split('+')[0]}"
    return Path(cache_root) / key


def choose_runtime(
    classifier: Classifier,
    runtime: str,
    cache_root: Path,
    check_batch: torch.Tensor,
    threads: int,
    device: torch.device,
    torch_only: str = "",
    calibration: Callable[[], torch.Tensor] | None = None,
) -> RuntimeChoice:
    """The classifier to predict with for ``runtime`` (one of ``RUNTIMES``).

    ``check_batch``: normalized NCHW float images, compared between PyTorch and a converted
    network. ``torch_only``: a reason the forward pass must stay in PyTorch (a GPU, autocast,
    torch.compile, channels-last), or "". ``calibration``: for ``openvino-int8``, returns the
    uint8 NCHW images to calibrate on (called only when the network is converted; the check
    batch when not given).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not known: use one of {', '.join(RUNTIMES)}")
    if runtime == "torch" or not classifier.is_torch:
        if runtime not in ("auto", "torch"):
            raise ConfigError(f"runtime {runtime} converts PyTorch models, but model {classifier.spec.name!r} "
                              f"runs in {classifier.runtime}: set the runtime to auto")
        return RuntimeChoice(classifier, "torch" if classifier.is_torch else "onnxruntime", None, None, False)
    if torch_only or device.type != "cpu":
        reason = torch_only or f"the device is {device}"
        if runtime != "auto":
            precision = "int8" if runtime in APPROXIMATE else "fp32"
            raise ConfigError(f"runtime {runtime} runs on the CPU in {precision}, but {reason}: "
                              "set the runtime to auto or torch")
        return RuntimeChoice(classifier, "torch", None, None, False)
    candidates = AUTO_ORDER if runtime == "auto" else (runtime,)
    notes = []
    with torch.inference_mode():
        reference = classifier.probabilities(classifier.module(check_batch))
    for name in candidates:
        if not available(name):
            if runtime != "auto":
                raise ConfigError(f"runtime {name} is not installed: {install_hint(name)}")
            notes.append(f"{name} is not installed")
            continue
        folder = conversion_folder(cache_root, classifier, name)
        reused = folder.is_dir()
        try:
            if not reused:
                with warnings.catch_warnings():  # both converters trace the module: torch 2.14 warns tracing is deprecated
                    warnings.simplefilter("ignore", FutureWarning)
                    convert(classifier, name, folder, check_batch, calibration)
            module = load_converted(folder, name, threads)
            with torch.inference_mode():
                probabilities = classifier.probabilities(module(check_batch))
        except Exception as exc:
            if runtime != "auto":
                raise
            notes.append(f"{name} could not run the model ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
            continue
        parity = compare(reference, probabilities)
        if parity.exact or runtime != "auto":
            if name not in APPROXIMATE:
                module = SettledNetwork(module, classifier, settle_margin(parity))
            return RuntimeChoice(Classifier(module=module, info=classifier.info), name, parity, folder, reused,
                                 tuple(notes))
        notes.append(f"{name} differs from PyTorch ({parity.describe()})")
    return RuntimeChoice(classifier, "torch", None, None, False, tuple(notes))


def settle_margin(parity: Parity) -> float:
    """How close to a tie (in probability) an image must be for PyTorch to settle it."""
    return max(2 * PARITY_TOLERANCE, SETTLE_FACTOR * parity.max_difference)


class SettledNetwork:
    """A converted network called like a module, whose near-ties PyTorch settles.

    An image whose top two probabilities differ by less than ``margin`` (for a multi-label
    model: also one with a probability within ``margin`` of the threshold) is run again through
    ``reference``, the PyTorch module, and its outputs replace the converted network's.
    ``settled`` counts those images.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], reference: Classifier, margin: float):
        self.network = network
        self.reference = reference
        self.margin = margin
        self.settled = 0
        self.runtime_name = network.runtime_name
        self.providers = network.providers

    def near_ties(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The rows of ``probabilities`` whose ranking a difference of ``margin`` could change."""
        close = torch.zeros(probabilities.shape[0], dtype=torch.bool)
        if probabilities.shape[-1] >= 2:
            top = probabilities.topk(2, dim=-1).values
            close |= (top[:, 0] - top[:, 1]) < self.margin
        info = self.reference.info
        if info.multi_label and info.threshold is not None:
            close |= ((probabilities - info.threshold).abs() < self.margin).any(dim=-1)
        return close.nonzero().flatten()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.network(x)
        rows = self.near_ties(self.reference.probabilities(outputs))
        if len(rows):
            with torch.inference_mode():
                exact = self.reference.module(x[rows])
            outputs = outputs.clone()
            outputs[rows] = exact.to(outputs.dtype)
            self.settled += len(rows)
        return outputs


def compare(reference: torch.Tensor, probabilities: torch.Tensor) -> Parity:
    top1_equal = int((reference.argmax(dim=-1) == probabilities.argmax(dim=-1)).sum())
    difference = float((reference - probabilities).abs().max()) if reference.numel() else 0.0
    return Parity(images=int(reference.shape[0]), top1_equal=top1_equal, max_difference=difference)


def convert(classifier: Classifier, runtime: str, folder: Path, example: torch.Tensor,
            calibration: Callable[[], torch.Tensor] | None = None) -> None:
    """Convert the classifier's network for ``runtime`` into ``folder``, atomically (dynamic batch)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        sample = example[:1].contiguous()
        if runtime in ("openvino", "openvino-int8"):
            import openvino as ov

            height, width = sample.shape[2], sample.shape[3]
            network = ov.convert_model(classifier.module, example_input=sample,
                                       input=[ov.PartialShape([-1, 3, height, width])])
            if runtime == "openvino-int8":
                network = quantize(network, classifier, calibration, example, staging)
            ov.save_model(network, staging / "model.xml", compress_to_fp16=False)
        elif runtime == "onnxruntime":
            export_onnx(classifier.module, staging / "model.onnx", sample, dynamic_batch=True)
        else:
            raise ConfigError(f"runtime {runtime!r} does not convert models")
        try:
            os.rename(staging, folder)
        except OSError:  # another step converted the same model first: theirs is as good
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def quantize(network, classifier: Classifier, calibration: Callable[[], torch.Tensor] | None,
             example: torch.Tensor, staging: Path):
    """The OpenVINO ``network`` quantized to int8 by NNCF, calibrated on ``calibration()`` (uint8 images,
    normalized one at a time) or, without it, on the normalized ``example`` batch."""
    import json

    import nncf

    if calibration is not None:
        images = calibration()
        normalize = classifier.preprocessing.normalize
        items = [lambda i=i: normalize(images[i : i + 1]).numpy() for i in range(len(images))]
    else:
        items = [lambda i=i: example[i : i + 1].numpy() for i in range(len(example))]
    dataset = nncf.Dataset(items, lambda item: item())
    quantized = nncf.quantize(network, dataset, subset_size=len(items))
    (staging / "calibration.json").write_text(json.dumps({"images": len(items), "nncf": metadata.version("nncf")}))
    return quantized


def load_converted(folder: Path, runtime: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if runtime == "openvino":
        return OpenVinoModel(folder / "model.xml", threads)
    if runtime == "openvino-int8":
        return OpenVinoModel(folder / "model.xml", threads, runtime_name="openvino-int8")
    if runtime == "onnxruntime":
        return OnnxModel(folder / "model.onnx", threads=threads)
    raise ConfigError(f"runtime {runtime!r} does not convert models")


class OpenVinoModel:
    """An OpenVINO network compiled for the CPU in fp32, called like a module on normalized NCHW batches."""

    def __init__(self, path: Path, threads: int = 0, runtime_name: str = "openvino"):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        # fp32 even where the CPU has bf16; the latency hint (one stream) suits synchronous batches
        config = {hints.inference_precision: ov.Type.f32, hints.performance_mode: hints.PerformanceMode.LATENCY}
        if threads:
            config[props.inference_num_threads] = int(threads)
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.runtime_name = runtime_name
        self.providers = ["CPU", "int8" if runtime_name.endswith("int8") else "f32"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        output = self.request.infer([array])[self.compiled.output(0)]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True).reshape(len(array), -1))


def describe_choice(choice: RuntimeChoice) -> str:
    """One line for the step's log: the runtime, its conversion and its parity with PyTorch."""
    if choice.parity is None:
        line = f"forward pass in {choice.runtime}"
    else:
        origin = "reused" if choice.reused else "converted"
        line = f"forward pass in {choice.runtime} ({origin} {choice.converted.name}); {choice.parity.describe()}"
        if isinstance(choice.classifier.module, SettledNetwork):
            line += f"; images within {choice.classifier.module.margin:.1e} of a tie are settled by PyTorch"
        else:
            line += "; approximate: its top-1 may differ from PyTorch's"
    return line + "".join(f"; {note}" for note in choice.notes)

