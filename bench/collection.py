"""A reproducible benchmark collection built from the committed sample photos.

Every image is a random crop of one of ``data/images``' photos, rescaled and re-encoded: most
are ≈500×375 JPEGs (an ImageNet-like size), some are 2–4 megapixel JPEGs, some PNGs, a few
grayscale. Everything is drawn from ``random.Random(seed)``, so the same seed and count give
byte-identical files. Images go in one folder per source photo (the folder is the label).
Generating more images with the same seed keeps the first ones identical, so a collection
can be grown by 1 % for the incremental re-run measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = PROJECT_ROOT / "data" / "images"
SOURCES = sorted(p for p in SOURCE_DIR.rglob("*") if p.suffix.lower() in {".jpg", ".png"})


@dataclass(frozen=True)
class Kind:
    name: str
    share: float  # of the collection


# Shares of the collection; the rest of the parameters are drawn per image.
KINDS = (Kind("jpeg_small", 0.80), Kind("jpeg_large", 0.10), Kind("png", 0.07), Kind("gray_jpeg", 0.03))


def _kind(rng: random.Random) -> str:
    x, acc = rng.random(), 0.0
    for kind in KINDS:
        acc += kind.share
        if x < acc:
            return kind.name
    return KINDS[-1].name


def _target_size(kind: str, rng: random.Random) -> tuple[int, int]:
    if kind == "jpeg_large":
        megapixels = rng.uniform(2.0, 4.0)
        aspect = rng.choice((4 / 3, 3 / 2, 16 / 9))
    else:
        megapixels = rng.uniform(0.15, 0.25)  # 500×375 is 0.19 MP
        aspect = rng.choice((4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0))
    width = int(round((megapixels * 1e6 * aspect) ** 0.5))
    height = int(round(width / aspect))
    return (width, height) if rng.random() < 0.75 else (height, width)  # a quarter portrait


def make_image(index: int, seed: int, sources: list[Image.Image]) -> tuple[str, bytes, str]:
    """``(relative path, encoded bytes, kind)`` of image ``index``: depends on (seed, index) only."""
    rng = random.Random(f"{seed}:{index}")
    source_index = rng.randrange(len(sources))
    source = sources[source_index]
    kind = _kind(rng)
    w, h = source.size
    scale = rng.uniform(0.55, 1.0)
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale * rng.uniform(0.8, 1.2)))
    cw, ch = min(cw, w), min(ch, h)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = source.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = image.resize(_target_size(kind, rng), Image.Resampling.BICUBIC)
    if kind == "gray_jpeg":
        image = image.convert("L")
    label = SOURCES[source_index].parent.name if SOURCES[source_index].parent != SOURCE_DIR else "unlabelled"
    stem = f"{label}/img_{index:06d}"
    from io import BytesIO

    out = BytesIO()
    if kind == "png":
        image.save(out, format="PNG", compress_level=6)
        return f"{stem}.png", out.getvalue(), kind
    image.save(out, format="JPEG", quality=rng.randint(75, 95), subsampling=rng.choice((0, 2, 2)))
    return f"{stem}.jpg", out.getvalue(), kind


_local = threading.local()


def _write(job: tuple[Path, int, int]) -> str:
    root, index, seed = job
    if not hasattr(_local, "sources"):  # each thread its own copies of the source photos
        _local.sources = [Image.open(p).convert("RGB") for p in SOURCES]
    relative, data, kind = make_image(index, seed, _local.sources)
    path = root / relative
    if not path.exists() or path.stat().st_size != len(data):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return kind


def benchmark_collection(work: Path, count: int, seed: int = 0) -> Path:
    """``work/collection-seed<seed>-<count>``, built once (a ``.complete`` marker holds its kinds) and reused."""
    root = work / f"collection-seed{seed}-{count}"
    marker = root / ".complete"
    if not marker.exists():
        print(f"building {count} images under {root} ...", flush=True)
        start = time.perf_counter()
        kinds = build_collection(root, count, seed)
        marker.write_text(json.dumps(kinds))
        print(f"  {kinds} in {time.perf_counter() - start:.0f}s", flush=True)
    return root


def build_collection(root: Path, count: int, seed: int = 0, start: int = 0, workers: int | None = None) -> dict[str, int]:
    """Write images ``start .. count-1`` under ``root`` on all cores (existing files of the right size are kept).

    Returns how many images of each kind were written or kept.
    """
    # Threads, not processes: Pillow's resizing and encoding release the GIL, and a process pool
    # (fork, then spawn) hung twice in CI after its workers had written every file.
    jobs = [(root, index, seed) for index in range(start, count)]
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        written = list(pool.map(_write, jobs))
    return {kind.name: written.count(kind.name) for kind in KINDS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the benchmark image collection.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_collection(args.root, args.images, args.seed))


if __name__ == "__main__":
    main()
