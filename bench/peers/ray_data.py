"""Peer: Ray Data's tutorial "Image Classification Batch Inference with PyTorch", as written there.

``read_images`` → ``map(preprocess_image)`` (keeps ``original_image`` next to the transformed
one, as the tutorial does) → ``map_batches(<model class>, concurrency=…, batch_size=…)`` →
``drop_columns(["original_image"]).write_parquet``. Changes, each needed to run it here and to
compare it: our model and its reference transform instead of ResNet-152's; local files instead
of S3; ``include_paths=True`` and a ``class_index`` column so predictions can be matched per
image; on CPU ``num_gpus`` is dropped (the tutorial says to) and ``concurrency`` / ``batch_size``
come from the command line (the tutorial's 720 is sized for a GPU; it says to reduce it locally).
"""

import os
import shutil
import tempfile
from typing import Dict

import numpy as np

from bench.common import Timer, autocast, load_model, model_spec, parser, reference_transform, report, write_predictions


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--concurrency", type=int, default=1, help="model replicas (the tutorial: one per GPU)")
    args = p.parse_args()

    import ray
    import torch
    from PIL import Image

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    with Timer() as timer:
        ds = ray.data.read_images(str(args.images), mode="RGB", include_paths=True)

        # The transform is built on the driver, as in the tutorial, and shipped with the function.
        transform = reference_transform(model_spec(args))

        def preprocess_image(row: Dict[str, np.ndarray]):
            return {
                "path": row["path"],
                "original_image": row["image"],
                "transformed_image": transform(Image.fromarray(row["image"])).numpy(),
            }

        transformed_ds = ds.map(preprocess_image)

        class ImageModel:
            def __init__(self):
                self.classifier = load_model(args)
                self.device = torch.device(args.device)

            def __call__(self, batch: Dict[str, np.ndarray]):
                torch_batch = torch.from_numpy(batch["transformed_image"]).to(self.device)
                with torch.inference_mode(), autocast(args):
                    prediction = self.classifier.module(torch_batch)
                predicted_classes = prediction.float().argmax(dim=1).detach().cpu()
                return {
                    "path": batch["path"],
                    "class_index": predicted_classes.numpy().astype(np.int32),
                    "predicted_label": [self.classifier.labels[i] for i in predicted_classes],
                    "original_image": batch["original_image"],
                }

        gpu = {"num_gpus": 1} if args.device.startswith("cuda") else {}
        predictions = transformed_ds.map_batches(
            ImageModel, concurrency=args.concurrency, batch_size=args.batch_size, **gpu
        )
        output_dir = tempfile.mkdtemp(prefix="ray-predictions-", dir=args.out.parent)
        predictions.drop_columns(["original_image"]).write_parquet(f"local://{output_dir}")

    # Collect the tutorial's output folder into the one file the benchmark compares (not timed).
    import pyarrow.parquet as pq

    table = pq.read_table(output_dir, columns=["path", "class_index"])
    root = os.path.realpath(args.images)
    names = [os.path.relpath(os.path.realpath(p) if os.path.isabs(p) else "/" + p, root) for p in table["path"].to_pylist()]
    write_predictions(args.out, names, table["class_index"].to_pylist())
    shutil.rmtree(output_dir)
    report(
        images=table.num_rows,
        seconds=timer.seconds,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        ray=ray.__version__,
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
