"""The ``preprocessing`` resource: how images are decoded into the stored pixels (threads, JPEG
draft mode, the decompression-bomb guard)."""

from dagster import ConfigurableResource
from pydantic import Field

from inference_assets.core.images.decoding import DEFAULT_MAX_PIXELS
from inference_assets.core.images.preprocessing import Preprocessing
from inference_assets.core.system.cpus import available_cpus


class PreprocessingResource(ConfigurableResource):
    """How ``preprocessed_images`` decodes: how many threads, exactly or in JPEG draft mode, and
    the largest image it decodes at all. The model's own transform (size, crop, normalization)
    comes from the model."""

    decode_workers: int = Field(
        default=0,
        ge=0,
        description="Threads decoding images; 0 means one per CPU this process may use (its affinity, at most "
        "the container's CPU limit).",
    )
    jpeg_draft: bool = Field(
        default=False,
        description="Decode large JPEGs in Pillow's draft mode (DCT-domain downscaling): faster, not the exact "
        "reference pixels; see docs/performance.md for its measured top-1 agreement.",
    )
    max_image_pixels: int | None = Field(
        default=DEFAULT_MAX_PIXELS,
        description="Decompression-bomb guard: images with more pixels (width x height), or whose model resize "
        "would have more (extreme aspect ratios), fail from their header instead of being decoded; null disables it.",
    )

    @property
    def workers(self) -> int:
        return self.decode_workers or available_cpus()

    def pixels(self, preprocessing: Preprocessing) -> Preprocessing:
        """How stored pixels are made for this model's preprocessing: exactly, or with JPEG draft mode."""
        return preprocessing.with_jpeg_draft() if self.jpeg_draft else preprocessing
