"""The code versions of preprocessed_images and prediction_files (core/models/versions.py): they change
with each setting that changes the stored pixels or the predictions, and with nothing else, and
are found without building a network or reading weights."""

import json
import os
import shutil

import pytest

from inference_assets.core.models.loading import ModelSpec, describe_model
from inference_assets.core.models.versions import asset_versions

pytestmark = pytest.mark.fast

DEFAULT = asset_versions(ModelSpec())


def _write(path, data: bytes):
    """Write ``data``; a file rewritten keeps no mtime it had (a filesystem's clock may not have ticked)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1, before + 1))
    return path


def _garbage(path, size=3 << 20):
    """Bytes that are no model at all: a version made from them proves they were never loaded."""
    return _write(path, os.urandom(size))


def test_the_pixels_version_is_the_key_of_the_stored_pixels_and_stable():
    spec = ModelSpec()
    assert DEFAULT.pixels == describe_model(spec).preprocessing.fingerprint  # names work/preprocessed/<version>
    assert asset_versions(ModelSpec()) == DEFAULT
    assert asset_versions(ModelSpec("timm:tf_efficientnet_lite0")) == DEFAULT  # the same model, spelled otherwise
    draft = asset_versions(spec, jpeg_draft=True)
    assert draft.pixels == describe_model(spec).preprocessing.with_jpeg_draft().fingerprint
    assert draft.predictions != DEFAULT.predictions


@pytest.mark.parametrize(
    "name, weights, card",
    [
        ("tf_efficientnet_lite0", "bundled", {"crop_pct": 1.0, "interpolation": "bilinear"}),
        ("tf_efficientnet_lite0", "bundled", {"input_size": [256, 192], "resize": "exact"}),
        ("tf_efficientnet_lite1", "pretrained", None),
        ("resnet50", "IMAGENET1K_V2", None),
        ("resnet50", "IMAGENET1K_V1", {"crop_pct": 0.95}),
    ],
)
def test_the_pixels_version_is_what_the_checked_model_stores_pixels_under(tmp_path, name, weights, card):
    path = None
    if card is not None:
        path = tmp_path / "card.json"
        path.write_text(json.dumps(card))
    spec = ModelSpec(name, weights, card=str(path) if path else None)
    assert asset_versions(spec).pixels == describe_model(spec).preprocessing.fingerprint


def test_class_names_change_the_predictions_version_only(tmp_path):
    names = [f"class {i}" for i in range(1000)]
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names))
    named = asset_versions(ModelSpec(class_names=str(path)))
    assert named.pixels == DEFAULT.pixels
    assert named.predictions != DEFAULT.predictions
    path.write_text("\n\n".join(names) + "\n")  # the same names, written otherwise
    assert asset_versions(ModelSpec(class_names=str(path))) == named
    path.write_text("\n".join(["renamed", *names[1:]]))
    renamed = asset_versions(ModelSpec(class_names=str(path)))
    assert renamed.pixels == DEFAULT.pixels
    assert renamed.predictions not in (named.predictions, DEFAULT.predictions)


@pytest.mark.parametrize(
    "card, pixels_change, predictions_change",
    [
        ({"crop_pct": 1.0}, True, True),
        ({"interpolation": "bilinear"}, True, True),
        ({"input_size": 256}, True, True),
        ({"scaling": "torch"}, False, True),  # mean/std apply at inference: the stored pixels stay
        ({"activation": "sigmoid"}, False, True),
        ({"description": "the same model", "license": "apache-2.0"}, False, False),  # informational only
    ],
)
def test_a_model_card_changes_what_it_changes(tmp_path, card, pixels_change, predictions_change):
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    versions = asset_versions(ModelSpec(card=str(path)))
    assert (versions.pixels != DEFAULT.pixels) == pixels_change
    assert (versions.predictions != DEFAULT.predictions) == predictions_change


def test_a_weights_file_is_known_by_its_content_without_being_loaded(tmp_path):
    weights = _garbage(tmp_path / "weights.pth")
    first = asset_versions(ModelSpec("resnet18", str(weights)))
    copy = tmp_path / "elsewhere" / "weights.pth"
    copy.parent.mkdir()
    shutil.copyfile(weights, copy)  # same bytes, another path and mtime
    assert asset_versions(ModelSpec("resnet18", str(copy))) == first
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle, same size
    _write(weights, bytes(data))
    retrained = asset_versions(ModelSpec("resnet18", str(weights)))
    assert retrained.pixels == first.pixels
    assert retrained.predictions != first.predictions


def test_other_models_and_weights_have_other_versions():
    versions = [
        DEFAULT,
        asset_versions(ModelSpec("tf_efficientnet_lite1", "pretrained")),
        asset_versions(ModelSpec("resnet50", "IMAGENET1K_V1")),
        asset_versions(ModelSpec("resnet50", "IMAGENET1K_V2")),
    ]
    assert len({v.predictions for v in versions}) == 4
    assert len({v.pixels for v in versions}) == 4  # 240 px, 224 px bilinear from 256, 224 px from 232
    assert versions[1].predictions.startswith("tf_efficientnet_lite1-")


def test_no_network_is_built(monkeypatch):
    import timm
    import torchvision.models

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    for spec in (ModelSpec(), ModelSpec("tf_efficientnet_lite1", "pretrained"), ModelSpec("resnet50", "IMAGENET1K_V2")):
        assert not asset_versions(spec).pixels.startswith("unresolved")


def test_settings_that_do_not_resolve_still_get_a_version(tmp_path):
    missing = asset_versions(ModelSpec("resnet18", str(tmp_path / "missing.pth")))
    unknown = asset_versions(ModelSpec("no_such_architecture"))
    bad_names = asset_versions(ModelSpec(class_names=str(tmp_path / "missing.txt")))
    assert len({missing.predictions, unknown.predictions, bad_names.predictions, DEFAULT.predictions}) == 4
    assert all(v.pixels.startswith("unresolved-") for v in (missing, unknown, bad_names))


def test_a_model_file_that_may_fix_its_input_size_stands_for_its_preprocessing(tmp_path):
    model = _garbage(tmp_path / "model.onnx", 1 << 16)
    before = asset_versions(ModelSpec(str(model)))
    _garbage(model, 1 << 16)
    after = asset_versions(ModelSpec(str(model)))
    assert after.pixels != before.pixels and after.predictions != before.predictions
    # a card that states the input size decides the preprocessing: the file then decides the predictions only
    (tmp_path / "model.card.json").write_text(json.dumps({"input_size": 224, "crop_pct": 1.0}))
    carded = asset_versions(ModelSpec(str(model)))
    _garbage(model, 1 << 16)
    assert asset_versions(ModelSpec(str(model))).pixels == carded.pixels
    assert asset_versions(ModelSpec(str(model))).predictions != carded.predictions


def test_a_timm_model_folder_is_versioned_by_its_config_and_weights(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"architecture": "resnet18", "num_classes": 4, "label_names": ["a", "b", "c", "d"],
              "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bilinear", "crop_pct": 0.875,
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 4}}
    (folder / "config.json").write_text(json.dumps(config))
    _garbage(folder / "model.safetensors")
    first = asset_versions(ModelSpec(str(folder)))
    assert not first.pixels.startswith("unresolved")
    _garbage(folder / "model.safetensors")
    retrained = asset_versions(ModelSpec(str(folder)))
    assert retrained.pixels == first.pixels and retrained.predictions != first.predictions
    config["pretrained_cfg"]["crop_pct"] = 1.0
    (folder / "config.json").write_text(json.dumps(config))
    recropped = asset_versions(ModelSpec(str(folder)))
    assert recropped.pixels != first.pixels
