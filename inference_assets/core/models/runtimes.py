"""Whole-model files run as callables from a normalized NCHW float batch to a (N, classes) output.

- ONNX models run in ONNX Runtime (the CPU provider; CUDA's when the device is a GPU and the
  installed onnxruntime has it). NCHW and NHWC inputs; a dynamic batch, or a fixed one (a
  batch of 1 too) that the runner fills in slices, padding the last.
- ``torch.export`` programs (``.pt2``) and TorchScript archives run in PyTorch; an exported
  program with a fixed batch is sliced the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference_assets.core.errors import ConfigError


@dataclass(frozen=True)
class InputShape:
    """What a whole-model file expects: layout, fixed batch (None: any), and fixed (H, W) if any."""

    layout: str  # "NCHW" or "NHWC"
    batch: int | None
    size: tuple[int, int] | None


def run_in_fixed_batches(run, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``run`` over ``x`` in slices of exactly ``batch`` rows (the last padded), or whole."""
    if batch is None or x.shape[0] == batch:
        return run(x)
    outputs = []
    for start in range(0, x.shape[0], batch):
        part = x[start : start + batch]
        count = part.shape[0]
        if count < batch:
            part = torch.cat([part, part.new_zeros((batch - count, *part.shape[1:]))])
        outputs.append(run(part)[:count])
    return torch.cat(outputs)


def input_shape(dims: list, layout_hint: str | None, where: str) -> InputShape:
    """Read an input's dims (ints, or names/None for dynamic ones) as NCHW or NHWC."""
    if len(dims) != 4:
        raise ConfigError(
            f"{where} has an input of rank {len(dims)} (shape {_show(dims)}): an image classifier takes "
            "rank 4, NCHW or NHWC with 3 channels; export it with a 4-D image input"
        )
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if fixed[1] == 3 and fixed[3] != 3:
        layout = "NCHW"
    elif fixed[3] == 3 and fixed[1] != 3:
        layout = "NHWC"
    elif fixed[1] is None and fixed[3] is None or fixed[1] == fixed[3] == 3:
        layout = layout_hint or "NCHW"
    else:
        raise ConfigError(
            f"{where} has input shape {_show(dims)} with no 3-channel axis: it must be (N, 3, H, W) or (N, H, W, 3)"
        )
    if layout_hint and layout_hint != layout:
        raise ConfigError(f"{where} has input shape {_show(dims)}, which is {layout}, but its model card says {layout_hint}")
    h, w = (fixed[2], fixed[3]) if layout == "NCHW" else (fixed[1], fixed[2])
    return InputShape(layout=layout, batch=fixed[0], size=(h, w) if h and w else None)


def _show(dims: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims) + "]"


def export_onnx(module: torch.nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool = True,
                metadata: dict[str, str] | None = None) -> Path:
    """Save a PyTorch module as an ONNX file this runner takes (input ``image``, output ``scores``), with
    string ``metadata`` (e.g. ``class_names``). Needs the ``onnx`` package (the ``dev`` extra)."""
    import copy

    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(  # a copy: exporting a wrapped module with a fixed batch changed the module's own weights
        copy.deepcopy(module), (example,), str(path), input_names=["image"], output_names=["scores"], dynamo=False,
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}} if dynamic_batch else None,
    )
    if metadata:
        model = onnx.load(str(path))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    return path


class OnnxModel:
    """An ONNX Runtime session called like a module on normalized NCHW float32 batches."""

    runtime_name = "onnxruntime"

    def __init__(self, path: Path, layout_hint: str | None = None, device: torch.device | str = "cpu",
                 threads: int = 0):
        import onnxruntime as ort

        where = f"ONNX model {str(path)!r}"
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            detail = " ".join(str(exc).split())[:160]
            raise ConfigError(f"{where} could not be loaded by ONNX Runtime ({detail}): export it again (opset 17+)") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"{where} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): "
                              "an image classifier takes exactly one image input")
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise ConfigError(f"{where}: input {inputs[0].name!r} is {inputs[0].type}; export it with a float32 image input")
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self.shape = input_shape(list(inputs[0].shape), layout_hint, where)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(metadata)
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_fixed_batches(self._run, x, self.shape.batch)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy(), dtype=self.input_dtype)
        (out, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(array), -1))


class ExportedModel(torch.nn.Module):
    """A ``torch.export`` program's module (NCHW or NHWC input), sliced to its fixed batch when it has one."""

    def __init__(self, module: torch.nn.Module, shape: InputShape):
        super().__init__()
        self.inner = module
        self.batch = shape.batch
        self.nhwc = shape.layout == "NHWC"
        self.training = False

    def train(self, mode: bool = True) -> ExportedModel:
        if mode:
            raise ConfigError("a torch.export program runs for inference only")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return run_in_fixed_batches(self.inner, x, self.batch)


def load_exported(path: Path, layout_hint: str | None = None) -> tuple[ExportedModel, InputShape]:
    where = f"torch.export program {str(path)!r}"
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"{where} could not be loaded ({type(exc).__name__}: {detail}): save it with torch.export.save") from None
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"
                    and n.name in program.graph_signature.user_inputs]
    if len(placeholders) != 1:
        raise ConfigError(f"{where} takes {len(placeholders)} inputs: an image classifier takes exactly one image batch")
    value = placeholders[0].meta.get("val")
    dims = [int(d) if isinstance(d, int) else None for d in value.shape] if value is not None else [None] * 4
    shape = input_shape(dims, layout_hint, where)
    return ExportedModel(program.module(), shape), shape  # an exported module is in eval mode already


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; users still save models so
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"TorchScript file {str(path)!r} could not be loaded ({type(exc).__name__}: {detail}): "
                          "save it with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x), path)") from None
