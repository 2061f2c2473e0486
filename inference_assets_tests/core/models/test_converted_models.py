"""OpenVINO and ONNX Runtime running a PyTorch model's network (core/models/converted_models.py), against PyTorch.

Real photos (the committed samples and scikit-image's, several crops of each), the bundled
EfficientNet-Lite0, real conversions into a real work folder, and a real Dagster run.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from dagster import AssetSelection, materialize

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.models.converted_models import (
    PARITY_TOLERANCE,
    Parity,
    SettledNetwork,
    choose_runtime,
    compare,
    conversion_folder,
    describe_choice,
    settle_margin,
)
from inference_assets.core.models.loading import Classifier, ModelSpec, load_classifier
from inference_assets.definitions import ASSET_CHECKS, ASSETS
from inference_assets.partitions import IMAGE_SHARDS, range_tags
from inference_assets.resources import DeviceResource

from inference_assets_tests.conftest import KNOWN_TOP1
from inference_assets_tests.support.environment import SAMPLE_IMAGES

CONVERTING = ("openvino", "onnxruntime")


def _photos() -> list[Path]:
    import skimage

    scikit = Path(skimage.__file__).parent / "data"
    photos = [p for p in sorted(SAMPLE_IMAGES.rglob("*")) if p.suffix.lower() in (".jpg", ".png")]
    photos += [scikit / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
               if (scikit / n).exists()]
    return photos


@pytest.fixture(scope="module")
def photos_pixels(classifier) -> torch.Tensor:
    """Each photo whole and in four corner crops, resized and cropped as the model takes them (uint8)."""
    images = []
    for path in _photos():
        image = load_rgb(path)
        w, h = image.size
        crops = [image] + [image.crop(box) for box in ((0, 0, w * 3 // 4, h * 3 // 4), (w // 4, 0, w, h * 3 // 4),
                                                       (0, h // 4, w * 3 // 4, h), (w // 4, h // 4, w, h))]
        images += [classifier.preprocessing.resize_crop(crop) for crop in crops]
    return torch.from_numpy(np.stack(images))


@pytest.fixture(scope="module")
def photos_batch(classifier, photos_pixels) -> torch.Tensor:
    """The same, normalized."""
    return classifier.preprocessing.normalize(photos_pixels)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One conversion folder for the tests that do not look at the conversion itself (each converts once)."""
    return tmp_path_factory.mktemp("converted")


@pytest.mark.parametrize("runtime", CONVERTING)
def test_each_runtime_gives_pytorchs_top1_and_probabilities_on_real_photos(runtime, classifier, photos_batch,
                                                                            shared_cache):
    assert len(photos_batch) >= 30
    choice = choose_runtime(classifier, runtime, shared_cache, photos_batch[:8], threads=2, device=torch.device("cpu"))
    assert choice.runtime == runtime and choice.classifier.runtime.startswith(runtime)
    assert choice.parity.exact
    with torch.inference_mode():
        reference = classifier.probabilities(classifier.module(photos_batch))
        converted = choice.classifier.probabilities(choice.classifier.module(photos_batch))
    parity = compare(reference, converted)
    assert parity.top1_equal == len(photos_batch), parity
    assert parity.max_difference <= PARITY_TOLERANCE, parity
    assert 0 < parity.max_difference or runtime == "torch"  # really another runtime's arithmetic
    # any batch size: the converted network's batch is dynamic
    with torch.inference_mode():
        single = choice.classifier.probabilities(choice.classifier.module(photos_batch[3:4]))
    assert int(single.argmax()) == int(reference[3].argmax())


@pytest.mark.parametrize("runtime", CONVERTING)
def test_a_conversion_is_made_once_per_model_and_whole(runtime, classifier, photos_batch, tmp_path):
    cpu, cache = torch.device("cpu"), tmp_path / "converted"
    first = choose_runtime(classifier, runtime, cache, photos_batch[:4], threads=1, device=cpu)
    files = {p: p.stat().st_mtime_ns for p in first.converted.rglob("*")}
    again = choose_runtime(classifier, runtime, cache, photos_batch[4:8], threads=1, device=cpu)
    assert again.reused and again.converted == first.converted
    assert {p: p.stat().st_mtime_ns for p in again.converted.rglob("*")} == files  # loaded, not converted again
    assert [p.name for p in cache.iterdir()] == [first.converted.name]  # no temporary folder left
    # another model identity (other class names) gets a folder of its own
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(1000)))
    other = load_classifier(ModelSpec(class_names=str(names)), "cpu")
    assert conversion_folder(cache, other, runtime) != first.converted


def test_auto_takes_the_fastest_exact_runtime_and_stays_in_pytorch_where_it_must(classifier, photos_batch,
                                                                                 shared_cache, tmp_path):
    cpu = torch.device("cpu")
    choice = choose_runtime(classifier, "auto", shared_cache, photos_batch[:8], threads=2, device=cpu)
    assert choice.runtime == "openvino" and choice.parity.exact
    for reason in ("precision bf16 applies to PyTorch only", "compile applies to PyTorch only"):
        kept = choose_runtime(classifier, "auto", tmp_path, photos_batch[:8], threads=2, device=cpu, torch_only=reason)
        assert kept.runtime == "torch" and kept.classifier is classifier
        with pytest.raises(ConfigError, match=f"runtime openvino runs on the CPU in fp32, but {reason}"):
            choose_runtime(classifier, "openvino", tmp_path, photos_batch[:8], threads=2, device=cpu, torch_only=reason)
    on_gpu = choose_runtime(classifier, "auto", tmp_path, photos_batch[:8], threads=2, device=torch.device("cuda"))
    assert on_gpu.runtime == "torch" and on_gpu.classifier is classifier
    assert choose_runtime(classifier, "torch", tmp_path, photos_batch[:8], threads=2, device=cpu).classifier is classifier
    with pytest.raises(ConfigError, match="runtime 'tensorrt' is not known"):
        choose_runtime(classifier, "tensorrt", tmp_path, photos_batch[:8], threads=2, device=cpu)


@pytest.mark.fast
def test_parity_needs_every_top1_and_probabilities_within_the_tolerance():
    reference = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45]])
    assert compare(reference, reference + 5e-5).exact
    assert not compare(reference, reference + 2e-4).exact  # within top-1, beyond the tolerance
    flipped = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.44999, 0.45001]])
    parity = compare(reference, flipped)
    assert parity == Parity(images=2, top1_equal=1, max_difference=pytest.approx(1e-5, abs=1e-6)) and not parity.exact


def test_prediction_files_through_dagster_with_openvino_match_pytorch(resources, instance):
    selection = AssetSelection.assets("image_manifest", "preprocessed_images", "prediction_files")
    keys = IMAGE_SHARDS.get_partition_keys()
    assert materialize([*ASSETS, *ASSET_CHECKS], selection=AssetSelection.assets("image_manifest"),
                       resources=resources, instance=instance).success
    tags = range_tags(keys[0], keys[-1])
    resources = {**resources, "device": DeviceResource(device="cpu", runtime="openvino")}
    result = materialize([*ASSETS, *ASSET_CHECKS], selection=selection - AssetSelection.assets("image_manifest"),
                         resources=resources, instance=instance, tags=tags)
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("prediction_files")[0].metadata.items()}
    assert metadata["runtime"].startswith("openvino") and metadata["runtime_asked"] == "openvino"
    assert "top-1 equal on 6/6 check images" in metadata["runtime_parity"]
    work = Path(resources["work_area"].work_dir)
    assert len(list((work / "converted").iterdir())) == 1
    rows = [r for f in sorted((work / "predictions").rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    labels = {r["uri"].split("/images/")[-1]: r["class_label"] for r in rows}
    for relative, label in KNOWN_TOP1.items():
        assert labels[relative] == label
    # every prediction row says what ran its forward pass, as the metadata does
    assert {r["runtime"] for r in rows if r["status"] == "predicted"} == {metadata["runtime"]}


def test_images_near_a_tie_are_settled_by_pytorch(classifier, photos_batch):
    """A converted network that flips a near-tie (as another runtime's rounding could) loses that image
    to PyTorch; every other image keeps the converted network's outputs."""
    x = photos_batch[:6]
    with torch.inference_mode():
        reference = classifier.module(x)

    class Rounding:
        """Like a converted network: the reference's logits, off by 1e-6, with image 2 flipped to its
        runner-up by a hair (its two best classes set 1e-7 apart in the other order)."""
        runtime_name, providers = "rounding", ["CPU"]

        def __call__(self, batch):
            out = classifier.module(batch) + 1e-6
            for row in range(len(batch)):
                if torch.equal(batch[row], x[2]):
                    first, second = out[row].topk(2).indices.tolist()
                    out[row, second] = out[row, first] + 1e-7
            return out

    settled = SettledNetwork(Rounding(), classifier, settle_margin(Parity(images=8, top1_equal=8, max_difference=1e-6)))
    assert settled.margin == 2 * PARITY_TOLERANCE
    with torch.inference_mode():
        outputs = settled(x)
    assert settled.settled == 1
    # PyTorch's own outputs for the near-tie (run alone: PyTorch's batch-of-1 arithmetic differs in the last digits)
    assert torch.allclose(outputs[2], reference[2], atol=1e-4) and outputs[2].argmax() == reference[2].argmax()
    others = [0, 1, 3, 4, 5]
    assert torch.allclose(outputs[others], reference[others] + 1e-6)  # the rest stay the converted network's
    assert outputs.argmax(-1).tolist() == reference.argmax(-1).tolist()
    assert settle_margin(Parity(images=8, top1_equal=8, max_difference=1e-4)) == pytest.approx(1e-3)
    # a multi-label model: a probability within the margin of its threshold is a near-tie too
    tagger = Classifier(module=classifier.module, info=replace(classifier.info, activation="sigmoid", threshold=0.5))
    near = SettledNetwork(Rounding(), tagger, 1e-3).near_ties(
        torch.tensor([[0.9, 0.2, 0.1], [0.9, 0.5004, 0.1], [0.9, 0.1, 0.8995], [0.6, 0.3, 0.1]]))
    assert near.tolist() == [1, 2]


def test_int8_is_quantized_on_the_collections_images_cached_and_its_agreement_measured(classifier, photos_pixels,
                                                                                       photos_batch, tmp_path):
    """openvino-int8: opt-in, approximate. Calibrated on the uint8 images it is given (normalized as the
    model takes them), cached and reused like a conversion, its difference logged, never settled."""
    cpu, cache = torch.device("cpu"), tmp_path / "converted"
    calls = []

    def calibration():
        calls.append(1)
        return photos_pixels[:32]

    choice = choose_runtime(classifier, "openvino-int8", cache, photos_batch[:8], threads=2, device=cpu,
                            calibration=calibration)
    assert choice.runtime == "openvino-int8" and not choice.reused and calls == [1]
    assert choice.classifier.runtime == "openvino-int8 (CPU, int8)"
    assert not isinstance(choice.classifier.module, SettledNetwork)  # approximate: nothing is sent back to PyTorch
    assert json.loads((choice.converted / "calibration.json").read_text())["images"] == 32
    assert "openvino-int8-" in choice.converted.name and "nncf" in choice.converted.name
    assert "approximate" in describe_choice(choice)
    with torch.inference_mode():
        reference = classifier.probabilities(classifier.module(photos_batch))
        quantized = choice.classifier.probabilities(choice.classifier.module(photos_batch))
    parity = compare(reference, quantized)
    assert parity.max_difference > PARITY_TOLERANCE  # really int8 arithmetic, not the fp32 network
    assert parity.top1_equal >= 0.8 * parity.images, parity.describe()  # close, measured: not exact
    again = choose_runtime(classifier, "openvino-int8", cache, photos_batch[8:16], threads=2, device=cpu,
                           calibration=calibration)
    assert again.reused and calls == [1]  # cached: not calibrated again
    # auto never takes it
    assert choose_runtime(classifier, "auto", cache, photos_batch[:8], threads=2, device=cpu).runtime == "openvino"
