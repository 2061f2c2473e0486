"""The ``quality_gate`` resource: the thresholds of the configurable data-quality checks."""

from dagster import ConfigurableResource
from pydantic import Field


class QualityGateResource(ConfigurableResource):
    """Thresholds of the configurable checks; the defaults let everything through (each gate off)."""

    max_failure_rate: float = Field(
        default=1.0, ge=0, le=1,
        description="Fail when more than this fraction of the images failed (decode, read, list...); "
        "1 (default) is off. Environment: INFERENCE_MAX_FAILURE_RATE.",
    )
    min_top1_accuracy: float = Field(
        default=0.0, ge=0, le=1,
        description="Fail when the top-1 accuracy on labelled images (see the evaluation asset) is below "
        "this, or when no image carries a label the model knows; 0 (default) is off. "
        "Environment: INFERENCE_MIN_TOP1.",
    )
    max_class_share: float = Field(
        default=1.0, ge=0, le=1,
        description="Fail when one class takes more than this fraction of the predictions (a collapsed "
        "model or a broken input pipeline); 1 (default) is off. Environment: INFERENCE_MAX_CLASS_SHARE.",
    )
