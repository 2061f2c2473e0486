"""Image bytes to model-ready pixels: decoding to an upright RGB image, the model's own
evaluation transform split into a uint8 geometric part and a normalization, the per-partition
uint8 pixel store, and JPEG decoding on the GPU (measured against Pillow, not used by the pipeline).
"""
