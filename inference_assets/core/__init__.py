"""Plain-Python core of inference_assets: no Dagster imports here.

Modules, one concept each:
- ``partitioning``: stable assignment of images to shards.
- ``manifest``: listing a folder tree of images into a Parquet manifest.
- ``atomic``: write-to-temporary-then-rename helpers.
- ``preprocessing``: the model's own resize/crop, split from its normalization.
- ``decoding``: turning image bytes into an upright RGB Pillow image.
- ``pixel_store``: per-partition uint8 tensors in memory-mappable ``.npy`` files.
- ``models``: resolving a model + weights spec into a loaded classifier.
- ``devices``: device and precision resolution.
- ``inference``: streaming stored pixels through a classifier in batches.
- ``results``: the per-partition prediction/failure Parquet files.
- ``warehouse``: refreshing the DuckDB tables from those files.
- ``layout``: where each artifact lives under the work directory.
- ``hashing``: file content hashes.
"""
