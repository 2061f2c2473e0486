"""Peer: the common PyTorch ``Dataset`` + ``DataLoader`` loop (batch 64, one worker process per core), to Parquet."""

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.common import (
    PREDICTION_SCHEMA,
    Timer,
    autocast,
    image_paths,
    load_model,
    parser,
    reference_transform,
    relative,
    report,
)


class ImageFiles(Dataset):
    def __init__(self, paths, names, transform):
        self.paths, self.names, self.transform = paths, names, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.names[i]


def main() -> None:
    args = parser(__doc__).parse_args()
    paths = image_paths(args.images)
    names = relative(paths, args.images)
    with Timer() as timer:
        classifier = load_model(args)
        device = torch.device(args.device)
        loader = DataLoader(
            ImageFiles(paths, names, reference_transform(classifier.spec)),
            batch_size=args.batch_size,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(args.out, PREDICTION_SCHEMA) as writer, torch.inference_mode():
            for x, batch_names in loader:
                with autocast(args):
                    logits = classifier.module(x.to(device, non_blocking=True))
                top1 = logits.float().argmax(dim=1).cpu().tolist()
                writer.write_table(pa.table({"path": list(batch_names), "class_index": top1}, schema=PREDICTION_SCHEMA))
    report(images=len(paths), seconds=timer.seconds, batch_size=args.batch_size, workers=args.workers)


if __name__ == "__main__":
    main()
