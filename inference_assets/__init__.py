"""inference_assets: image classification over a whole collection, as Dagster assets.

``inference_assets.core`` is the plain-Python engine (no Dagster); the other packages wire it
up as assets, resources, partitions and checks; ``definitions.defs`` is the code location.
"""
