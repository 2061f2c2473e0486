"""The two limits: the model's forward pass alone on ready tensors, and decode + resize + crop alone.

``model``: batches of already-normalized tensors (made before the clock starts) through the
forward pass at the project's batch size (``--batch-size 0``: probed on CUDA as the project
probes it), precision and memory format; images/s. ``--runtime`` as the project's: ``auto`` (on a
CPU, the network converted for the fastest runtime that matches PyTorch, converted before the
clock starts and without the project's near-tie settling), or ``torch`` (PyTorch eager).
``decode``: every image of the collection opened, converted to RGB and resized/cropped by the
model's own geometric transform, on a pool of processes (one per core, started before the
clock); images/s.
Together they bound any pipeline that decodes and then predicts on the same cores:
1 / (1/model + 1/decode). Both run with the allocator setting the project uses
(``inference_assets.core.system.allocator``), so the limit is the best this machine does, not a
strawman.
"""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from bench.common import Timer, autocast, image_paths, load_model, parser, report
from inference_assets.core.inference.batch_size import probe_cuda_batch_size
from inference_assets.core.inference.devices import autocast_dtype, default_batch_size, exact_fp32
from inference_assets.core.system.allocator import keep_freed_memory

_resize_crop = None


def _init(args) -> None:
    global _resize_crop
    keep_freed_memory()
    from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing

    _resize_crop = resolve_preprocessing(ModelSpec(name=args.model, weights=args.weights)).resize_crop


def _decode(path) -> int:
    with Image.open(path) as image:
        return int(_resize_crop(image.convert("RGB")).shape[1])


def decode_limit(args) -> None:
    paths = image_paths(args.images)
    # Spawned workers start clean instead of as forks of a process that has imported torch and
    # numpy (their thread pools and locks do not survive a fork reliably: a forked pool once hung
    # here for good); and an executor, unlike multiprocessing.Pool, fails when a worker dies
    # instead of waiting for its tasks forever.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=_init, initargs=(args,)) as pool:
        list(pool.map(_decode, paths[: args.workers * 2]))  # warm: start, imports and first-call costs
        with Timer() as timer:
            sizes = list(pool.map(_decode, paths, chunksize=8))
    report(images=len(sizes), seconds=timer.seconds, workers=args.workers)


def model_limit(args) -> None:
    keep_freed_memory()
    count = len(image_paths(args.images))
    if args.max_images:
        count = min(count, args.max_images)
    classifier = load_model(args)
    device = torch.device(args.device)
    module = classifier.module
    h, w = classifier.preprocessing.input_size
    runtime = "torch"
    if args.runtime != "torch":
        from inference_assets.core.inference.batches import InferenceSettings, torch_only_reason
        from inference_assets.core.models.converted_models import choose_runtime

        check = classifier.preprocessing.normalize(torch.randint(0, 256, (8, 3, h, w), dtype=torch.uint8))
        settings = InferenceSettings(device, precision=args.precision, channels_last=args.channels_last)
        choice = choose_runtime(classifier, args.runtime, args.converted, check, threads=torch.get_num_threads(),
                                device=device, torch_only=torch_only_reason(settings))
        runtime, module = choice.runtime, getattr(choice.classifier.module, "network", choice.classifier.module)
    exact_fp32(device, args.precision)  # as the project runs fp32 on CUDA (no TF32)
    if args.batch_size == 0:  # the project's automatic size: probed on CUDA, fixed on CPU
        args.batch_size = default_batch_size(device)
        if device.type == "cuda":
            args.batch_size = probe_cuda_batch_size(module, classifier.preprocessing.normalize, (h, w), device,
                                                    autocast_dtype(args.precision))
    batch = classifier.preprocessing.normalize(torch.randint(0, 256, (args.batch_size, 3, h, w), dtype=torch.uint8))
    batch = batch.to(device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    batches = -(-count // args.batch_size)
    with torch.inference_mode():
        for _ in range(3):
            with autocast(args):
                module(batch)
        _sync(device)
        with Timer() as timer:
            for _ in range(batches):
                with autocast(args):
                    module(batch)
            _sync(device)
    report(images=batches * args.batch_size, seconds=timer.seconds, batch_size=args.batch_size,
           channels_last=args.channels_last, threads=torch.get_num_threads(), runtime=runtime)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("which", choices=["model", "decode"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--max-images", type=int, default=0, help="model: time at most this many images (0: all)")
    p.add_argument("--runtime", default="torch", help="model: auto (the project's default), torch, openvino or onnxruntime")
    p.add_argument("--converted", type=Path, default=Path("bench/work/converted"), help="model: converted networks' cache")
    args = p.parse_args()
    (model_limit if args.which == "model" else decode_limit)(args)


if __name__ == "__main__":
    main()
