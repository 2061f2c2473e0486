"""Peer: a per-image loop, the first thing one writes. Open, transform, predict one image at a time."""

from PIL import Image
import torch

from bench.common import Timer, autocast, image_paths, load_model, parser, reference_transform, relative, report, write_predictions


def main() -> None:
    args = parser(__doc__).parse_args()
    paths = image_paths(args.images)
    with Timer() as timer:
        classifier = load_model(args)
        transform = reference_transform(classifier.spec)
        device = torch.device(args.device)
        indices = []
        with torch.inference_mode():
            for path in paths:
                with Image.open(path) as image:
                    x = transform(image.convert("RGB")).unsqueeze(0).to(device)
                with autocast(args):
                    logits = classifier.module(x)
                indices.append(int(logits.float().argmax(dim=1).item()))
        write_predictions(args.out, relative(paths, args.images), indices)
    report(images=len(paths), seconds=timer.seconds, batch_size=1)


if __name__ == "__main__":
    main()
