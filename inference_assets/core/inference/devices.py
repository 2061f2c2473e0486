"""Which torch device and which autocast precision to run on."""

from __future__ import annotations

from collections.abc import Callable

import torch

from inference_assets.core.errors import ConfigError
from inference_assets.core.inference.gpu_assignment import DeviceLock, acquire_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} asked for but CUDA is not available here: set device to cpu (or auto)",
                settings=["device"],
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    raise ConfigError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def needs_assignment(device: torch.device) -> bool:
    """CUDA without an index (``auto`` or ``cuda``): which GPU is for ``assign_device`` to decide.

    An explicit ``cuda:N`` is honored as given, without a lock (sharing a GPU on purpose).
    """
    return device.type == "cuda" and device.index is None


def assign_device(
    device: torch.device,
    count: int | None = None,
    timeout: float = 3600.0,
    on_wait: Callable[[str], None] | None = None,
    holder: str | None = None,
    **lock_options,
) -> tuple[torch.device, DeviceLock | None]:
    """``device`` as given with no lock, or for CUDA without an index a free GPU and its lock.

    A free GPU is one of ``count`` (default ``torch.cuda.device_count()``) that no other process
    on this machine has locked (``gpu_assignment.py``); the lock is taken even with one GPU, so
    that steps the ``gpu`` pool let through by mistake wait instead of sharing it.
    """
    if not needs_assignment(device):
        return device, None
    count = torch.cuda.device_count() if count is None else count
    if count < 1:
        raise ConfigError(f"device {str(device)!r} asked for but no CUDA device is visible: check CUDA_VISIBLE_DEVICES")
    lock = acquire_device(count, timeout=timeout, on_wait=on_wait, holder=holder, **lock_options)
    return torch.device("cuda", lock.index), lock


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass when none is configured.

    CPU: small batches keep activations in cache (EfficientNet-Lite0, 2 threads: batch 4–16 run
    at the same speed, batch 64 is slower). CUDA: 256 is used only where nothing is probed (a
    model that is not a torch module, e.g. ONNX); a torch model gets the largest size that fits,
    probed once per process (``batch_size.py``, ``inference.cuda_batch_size``).
    """
    return 256 if device.type == "cuda" else 8


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``fp32`` (none), ``bf16`` or ``fp16``."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}") from None


def exact_fp32(device: torch.device, precision: str) -> None:
    """fp32 on CUDA as fp32: TF32 off for convolutions and matrix products.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for fp32 convolutions on Ampere and newer GPUs by
    default, which changes probabilities at the 1e-3 level and can flip a near-tie top-1; the
    default path must give the model's reference top-1. ``bf16``/``fp16`` are the opt-in fast paths.
    Process-wide (torch's flags are), set by every CUDA run before its forward passes.
    """
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
