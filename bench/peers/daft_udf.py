"""Peer: Daft's documented image batch-inference pattern, to Parquet.

As Daft's own image-classification example and benchmark write it (in Daft 0.7's functions):
``from_glob_path`` → ``download`` → ``decode_image(mode="RGB")`` → ``resize(W, H)`` (Daft's native resize,
to the model's input size: no aspect-preserving resize and centre crop, so not the model's
reference transform; its top-1 agreement is reported) → a class UDF (``@daft.cls`` with a
``@daft.method.batch`` of ``batch_size``) that normalizes the batch and runs the model → written.
Daft's native runner on this machine, the model UDF at ``--batch-size``, one instance
(``max_concurrency=1``), torch on all cores.
"""

import os

os.environ.setdefault("DO_NOT_TRACK", "true")  # no telemetry calls from an offline machine
os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")

import daft  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from daft import col  # noqa: E402
from daft.functions import decode_image, download, resize  # noqa: E402

from inference_assets.core.models.loading import resolve_preprocessing  # noqa: E402

from bench.common import (  # noqa: E402
    Timer, autocast, image_paths, load_model, model_spec, parser, relative, report, write_predictions,
)


def main() -> None:
    args = parser(__doc__).parse_args()
    paths = image_paths(args.images)  # the same images every peer reads (the count to check against)
    root = args.images.resolve()

    @daft.cls(max_concurrency=1)
    class Classify:
        def __init__(self):
            self.classifier = load_model(args)
            self.device = torch.device(args.device)

        @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=args.batch_size)
        def __call__(self, images):
            batch = np.stack(images.to_pylist())  # (N, H, W, 3) uint8, resized by Daft
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            with torch.inference_mode(), autocast(args):
                logits = self.classifier.module(self.classifier.preprocessing.normalize(x))
            return logits.float().argmax(dim=1).cpu().numpy()

    with Timer() as timer:
        height, width = resolve_preprocessing(model_spec(args)).input_size  # as the UDF's model expects (no weights loaded)
        df = daft.from_glob_path([str(root / "**" / "*.jpg"), str(root / "**" / "*.png")])
        df = df.with_column("image", decode_image(download(col("path")), mode="RGB"))
        df = df.with_column("image", resize(col("image"), width, height))
        df = df.with_column("class_index", Classify()(col("image")))
        result = df.select("path", "class_index").to_pydict()
        names = [p.removeprefix("file://") for p in result["path"]]
        write_predictions(args.out, relative([type(root)(n) for n in names], root), result["class_index"])
    if len(names) != len(paths):
        raise SystemExit(f"daft read {len(names)} images, the collection has {len(paths)}")
    report(images=len(names), seconds=timer.seconds, batch_size=args.batch_size, daft=daft.get_version())


if __name__ == "__main__":
    main()
