"""A generated corpus of awkward and broken image files, built from the real sample photos.

``make_corpus(root)`` writes the files under ``root/awkward`` and returns what each one must
become: ``("predicted", top1_or_None)`` or ``("failed", stage, text the error contains)``.
Files that must be removed or made unreadable after listing are handled by the tests.
"""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .environment import SAMPLE_IMAGES

COFFEE = SAMPLE_IMAGES / "espresso" / "coffee.jpg"
CAMERA = SAMPLE_IMAGES / "tripod" / "camera.png"


def _png_with_broken_crc(path: Path) -> None:
    Image.open(COFFEE).convert("RGB").resize((64, 48)).save(path)
    data = bytearray(path.read_bytes())
    ihdr_crc_at = 8 + 8 + 13  # signature, IHDR length+type, IHDR data
    data[ihdr_crc_at : ihdr_crc_at + 4] = struct.pack(">I", zlib.crc32(b"wrong") & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def make_corpus(root: Path) -> dict[str, tuple]:
    folder = root / "awkward"
    folder.mkdir(parents=True)
    coffee = Image.open(COFFEE).convert("RGB")
    expect: dict[str, tuple] = {}

    (folder / "zero_bytes.jpg").write_bytes(b"")
    expect["awkward/zero_bytes.jpg"] = ("failed", "decode", "UnidentifiedImageError")

    raw = (SAMPLE_IMAGES / "missile" / "rocket.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    expect["awkward/truncated.jpg"] = ("failed", "decode", "truncated")

    (folder / "random_bytes.jpg").write_bytes(np.random.default_rng(7).bytes(5000))
    expect["awkward/random_bytes.jpg"] = ("failed", "decode", "UnidentifiedImageError")

    (folder / "text.png").write_text("this is a text file, not a PNG\n")
    expect["awkward/text.png"] = ("failed", "decode", "UnidentifiedImageError")

    _png_with_broken_crc(folder / "broken_crc.png")
    expect["awkward/broken_crc.png"] = ("failed", "decode", "")

    coffee.convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    expect["awkward/cmyk.jpg"] = ("predicted", None)

    coffee.convert("L").save(folder / "grayscale.jpg", quality=92)
    expect["awkward/grayscale.jpg"] = ("predicted", None)

    palette = coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    palette.save(folder / "palette_transparent.png", transparency=0)
    expect["awkward/palette_transparent.png"] = ("predicted", "espresso")

    rgba = coffee.copy()
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    expect["awkward/rgba.png"] = ("predicted", "espresso")

    gray16 = (np.asarray(coffee.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    coffee.convert("L").save(folder / "gray8.png")  # the same picture in 8 bits: same top-1
    expect["awkward/gray16.png"] = ("predicted", "same as awkward/gray8.png")
    expect["awkward/gray8.png"] = ("predicted", None)

    frames = [coffee.resize((300, 200)), Image.open(CAMERA).convert("RGB").resize((300, 200))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "first_frame.gif")
    expect["awkward/animated.gif"] = ("predicted", "same as awkward/first_frame.gif")
    expect["awkward/first_frame.gif"] = ("predicted", None)

    Image.new("RGB", (1, 1), (200, 120, 40)).save(folder / "one_pixel.png")
    expect["awkward/one_pixel.png"] = ("predicted", None)

    Image.new("L", (4000, 3000)).save(folder / "bomb.png")  # 12 Mpx, tiny file: over a 10 Mpx limit
    expect["awkward/bomb.png"] = ("failed", "decode", "decompression-bomb limit")

    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 degrees clockwise
    coffee.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_orientation_6.jpg", exif=exif, quality=95)
    coffee.save(folder / "upright.jpg", quality=95)
    expect["awkward/exif_orientation_6.jpg"] = ("predicted", "same as awkward/upright.jpg")
    expect["awkward/upright.jpg"] = ("predicted", "espresso")

    non_utf8 = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(non_utf8, "wb") as fh:
        fh.write(COFFEE.read_bytes())
    expect["awkward/caf\\xe9.jpg"] = ("predicted", "espresso")

    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.symlink("..", folder / "parent_loop")  # a folder link back up the tree: listed once
    expect["awkward/loop_a.jpg"] = ("failed", "read", "symlink cannot be resolved")
    expect["awkward/loop_b.jpg"] = ("failed", "read", "symlink cannot be resolved")

    outside = root.parent / f"{root.name}_outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(COFFEE.read_bytes())
    os.symlink(outside / "secret.jpg", folder / "outside_link.jpg")
    expect["awkward/outside_link.jpg"] = ("failed", "read", "outside the source root")

    os.symlink("upright.jpg", folder / "inside_link.jpg")  # stays inside the root: followed
    expect["awkward/inside_link.jpg"] = ("predicted", "espresso")

    (folder / "deleted_after_listing.jpg").write_bytes(COFFEE.read_bytes())
    expect["awkward/deleted_after_listing.jpg"] = ("failed", "read", "No such file or directory")
    return expect
