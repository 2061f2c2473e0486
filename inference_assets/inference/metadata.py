"""What a prediction_files materialization shows in the UI: its counts, the model and the runtime
that ran it, the device settings, where the time went, and tables of the top labels, sample
predictions (with thumbnails) and partitions."""

from collections.abc import Callable
from pathlib import Path

from dagster import MetadataValue

from inference_assets.core.inference.batches import InferenceSettings
from inference_assets.core.inference.partitions import PartitionsPrediction
from inference_assets.core.models.converted_models import RuntimeChoice
from inference_assets.core.reporting.thumbnails import markdown_image, thumbnail_uri
from inference_assets.core.system.progress import rate
from inference_assets.metadata import markdown_table
from inference_assets.resources import DeviceResource, ModelResource, PreprocessingResource


def prediction_metadata(
    outcome: PartitionsPrediction,
    seconds: float,
    choice: RuntimeChoice,
    settings: InferenceSettings,
    model: ModelResource,
    device: DeviceResource,
    preprocessing: PreprocessingResource,
    opener: Callable[[str], object],
    results_dir: Path,
) -> dict:
    """The metadata of a step that predicted its partitions (``outcome``, one summary per partition)
    in ``seconds`` with the runtime of ``choice`` and ``settings``; ``opener`` (the source's
    ``open``) reads the sample predictions' images for their thumbnails, and ``results_dir`` is
    where the model's result files are."""
    classifier, parity = choice.classifier, choice.parity
    batch_size = outcome.batch_size
    sample_rows = [
        (markdown_image(thumbnail_uri(opener, row["uri"], 64), "image"), row["uri"].rpartition("/")[2],
         row["class_label"], f"{row['confidence']:.3f}")
        for row in outcome.samples
    ]
    return {
        "partitions": len(outcome.summaries),
        "predicted": outcome.predicted,
        "reused": outcome.reused,
        "failed": outcome.failed,
        "seconds": round(seconds, 3),
        "images_per_second": rate(outcome.predicted, outcome.forward_seconds),
        "model": model.spec.name,
        "weights": model.weights_id,
        "model_format": model.info.format,
        "model_id": model.info.identity,
        "runtime": classifier.runtime,
        "runtime_asked": device.runtime,
        "runtime_parity": MetadataValue.null() if parity is None else parity.describe(),
        # images near a tie that PyTorch predicted instead of the converted network (null: PyTorch ran all)
        "runtime_settled_by_pytorch": getattr(classifier.module, "settled", MetadataValue.null()),
        "classes": len(model.info.labels),
        "class_names": ", ".join(model.info.labels[:20]) + (" ..." if len(model.info.labels) > 20 else ""),
        "multi_label": model.info.multi_label,
        "device": str(settings.device),
        "precision": settings.precision,
        "channels_last": settings.channels_last,
        "compiled": settings.compile,
        "jpeg_draft": preprocessing.jpeg_draft,
        "batch_size": MetadataValue.null() if batch_size is None else batch_size,  # null: all reused
        "top_k": settings.top_k,
        "top_labels": markdown_table(("label", "images"), outcome.labels.most_common(10)),
        "sample_predictions": markdown_table(("", "image", "class", "confidence"), sample_rows),
        "predict_seconds": round(outcome.forward_seconds, 3),  # reading pixels + forward passes + writing
        # where that time went: waiting for pixels, the model, writing result files
        **{f"{stage}_seconds": value for stage, value in outcome.stages.as_dict().items()},
        "per_partition": markdown_table(
            ("partition", "images", "predicted", "reused", "failed", "seconds", "img/s"), outcome.per_partition()
        ),
        "path": MetadataValue.path(str(results_dir)),
    }
