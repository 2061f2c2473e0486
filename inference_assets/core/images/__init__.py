"""Image bytes to model-ready pixels: decoding to an upright RGB image, the model's own
evaluation transform split into a uint8 geometric part and a normalization, the per-partition
uint8 pixel store (``pixel_store``), a step's partitions written into it with their totals
(``partitions``), and JPEG decoding on the GPU (measured against Pillow, not used by the pipeline).
"""
