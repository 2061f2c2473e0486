import pickle

import pytest
import timm
import torch

from inference_assets.core.errors import ConfigError, WeightsUnavailableError
from inference_assets.core.models import ModelSpec, describe_model, load_classifier


def test_bundled_weights_give_imagenet_labels_from_the_weights_metadata(classifier):
    assert len(classifier.labels) == 1000
    assert classifier.labels[967] == "espresso"
    assert classifier.labels[872] == "tripod"
    assert classifier.weights_id.startswith("bundled:")
    assert not classifier.module.training


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
