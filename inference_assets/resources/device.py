"""The ``device`` resource: where and how inference runs (device, precision, runtime, GPU locks)."""


from typing import Any, Literal

import torch
from dagster import ConfigurableResource, InitResourceContext, get_dagster_logger
from pydantic import Field, PrivateAttr

from inference_assets.core.inference.devices import assign_device, needs_assignment, resolve_device
from inference_assets.core.inference.gpu_assignment import DeviceLock, describe_holder
from inference_assets.core.system.cpus import limit_torch_threads
from inference_assets.settings import variables_named


class DeviceResource(ConfigurableResource):
    """Where and how inference runs (how images are decoded is the ``preprocessing`` resource's).

    With ``auto`` (on a CUDA machine) or ``cuda``, the step that calls :meth:`acquire_device`
    gets a GPU no other step on this machine holds (a file lock, ``core/inference/gpu_assignment.py``),
    waiting for one to be released if all are taken, and keeps it until the step ends. So
    concurrent ``prediction_files`` steps use different GPUs; ``preprocessed_images``, which never
    asks, takes none. ``cuda:N`` is used as given, without a lock.
    """

    device: str = Field(default="auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="fp32 is exact; bf16/fp16 run the forward pass under autocast."
    )
    channels_last: bool = Field(default=False, description="Run the model in channels-last memory format.")
    compile: bool = Field(default=False, description="torch.compile the model (compiles once per run, then faster).")
    runtime: Literal["auto", "torch", "openvino", "onnxruntime", "openvino-int8"] = Field(
        default="auto",
        description="What runs a PyTorch model's forward pass on the CPU. 'auto' (the default): the fastest of "
        "openvino and onnxruntime whose top-1 equals PyTorch's and whose probabilities stay within 1e-4 on the "
        "step's first images, else PyTorch; 'openvino' or 'onnxruntime': that one, whatever its difference; "
        "'torch': PyTorch eager. A converted network is made once per model and cached (converted_dir); images "
        "near a tie are predicted by PyTorch, so top-1 stays PyTorch's. 'openvino-int8' (opt-in, approximate, the "
        "int8 extra): OpenVINO quantized to int8 by NNCF, calibrated on the collection's first 300 images; "
        "docs/performance.md has its measured agreement. On a GPU, or with precision, compile or channels_last, "
        "PyTorch runs it.",
    )
    converted_dir: str = Field(
        default="",
        description="Where networks converted for openvino/onnxruntime are cached, one folder per model, input size "
        "and runtime version; '' means <work_dir>/converted. A folder shared by several work folders converts each "
        "model once for all of them.",
    )
    gpu_wait_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="With 'auto'/'cuda': how long a step waits for a free GPU while other steps on this "
        "machine hold every one (locks in gpu_lock_dir).",
    )
    gpu_lock_dir: str = Field(
        default="",
        description="A machine-local folder every run process can write, where concurrent steps lock GPUs "
        "(core/inference/gpu_assignment.py); '' means /tmp/inference_assets-gpu-locks.",
    )

    _device: torch.device = PrivateAttr()
    _lock: DeviceLock | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)
    _log: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        with variables_named():
            self._device = resolve_device(self.device)
        limit_torch_threads()  # torch counts the host's cores, not the container's CPU limit
        self._lock = None
        self._run_id = context.run.run_id if context.run is not None else None
        self._log = context.log

    def check_configuration(self) -> None:
        """Before any run: a device this machine has."""
        with variables_named():
            resolve_device(self.device)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._lock is not None:  # the GPU is free for other steps once this one ends
            self._lock.release()
            self._lock = None

    def acquire_device(self) -> torch.device:
        """The device to run on. For ``auto``/``cuda`` on CUDA, the first call takes a GPU that no other
        step on this machine holds, waiting up to ``gpu_wait_seconds`` while all are taken; the GPU is
        held until the step ends, and later calls return it."""
        if needs_assignment(self._device):
            log = self._log or get_dagster_logger()
            device, self._lock = assign_device(
                self._device,
                timeout=self.gpu_wait_seconds,
                on_wait=log.warning,
                holder=describe_holder(self._run_id),
                lock_dir=self.gpu_lock_dir or None,
            )
            torch.cuda.set_device(device)  # stray allocations (pinned memory, caches) go there too, not to GPU 0
            log.info(f"using GPU {device} (lock {self._lock.path})")
            self._device = device
        return self._device
