"""Plain-Python core of inference_assets: no Dagster imports here (``test_core_imports_no_dagster``
imports every module below and checks).

One folder per part, one concept per module:

- ``sources``: where images come from (a folder tree, object storage, a table of locations, a
  database) and how each is listed and opened.
- ``collection``: the image manifest built from a source, the stable assignment of images to
  partitions, and what work is pending.
- ``images``: image bytes to pixels: decoding, the model's own preprocessing, the per-partition
  pixel store, decoding on the GPU.
- ``models``: what a ``model`` setting names, loaded into a classifier (checkpoints, model cards,
  class names, exported files, converted CPU runtimes), and the code versions it gives assets.
- ``inference``: running a classifier over stored pixels batch by batch: devices and precision,
  GPU assignment, the automatic batch size.
- ``storage``: files on disk and shared storage: the work area, its layout and file names, pyarrow
  filesystems, atomic writes, verified Parquet, content hashes, per-partition result files, the
  shared-storage mirror.
- ``warehouse``: the DuckDB database: its refresh from the result files and the read queries.
- ``reporting``: what people read: accuracy against labels, the HTML report, charts, thumbnails,
  Markdown for the UI.
- ``system``: the machine the code runs on: usable CPUs, order-preserving worker pools, progress
  logs, the C heap setting.
- ``errors``: the configuration errors every part raises.
"""
