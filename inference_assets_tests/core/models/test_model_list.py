"""The model list (issue 17): inline ``name=model`` pairs or a YAML/JSON file, and its one-line errors."""

import dataclasses
import json

import pytest

from inference_assets.core.errors import ConfigError
from inference_assets.core.models.model_list import (
    Ensemble,
    ListedModel,
    ModelList,
    default_primary_name,
    parse_model_list,
)
from inference_assets.settings import Settings

pytestmark = pytest.mark.fast

DOCUMENT = {
    "primary": "lite0",
    "models": {
        "lite1": {"model": "tf_efficientnet_lite1"},
        "lite2": {"model": "tf_efficientnet_lite2", "batch_size": 16, "top_k": 3},
        "mine": {"model": "models/mine.pt2", "weights": "w.pt", "class_names": "classes.txt", "card": "card.md"},
        "lite0_flip": {"model": "tf_efficientnet_lite0", "tta": "flip"},
        "plain": "resnet50",  # a model as a bare string
    },
    "ensembles": {
        "lite_mean": {"members": ["lite0", "lite1", "lite2"]},
        "lite_weighted": {"members": {"lite0": 1, "lite1": 1, "lite2": 2}},
        "short": ["lite1", "lite2"],  # members given directly
    },
}
EXPECTED = ModelList(
    primary="lite0",
    models=(
        ListedModel("lite1", "tf_efficientnet_lite1"),
        ListedModel("lite2", "tf_efficientnet_lite2", batch_size=16, top_k=3),
        ListedModel("mine", "models/mine.pt2", weights="w.pt", class_names="classes.txt", card="card.md"),
        ListedModel("lite0_flip", "tf_efficientnet_lite0", tta="flip"),
        ListedModel("plain", "resnet50"),
    ),
    ensembles=(
        Ensemble("lite_mean", ("lite0", "lite1", "lite2"), (1.0, 1.0, 1.0)),
        Ensemble("lite_weighted", ("lite0", "lite1", "lite2"), (1.0, 1.0, 2.0)),
        Ensemble("short", ("lite1", "lite2"), (1.0, 1.0)),
    ),
)
YAML = """\
primary: lite0
models:
  lite1: {model: tf_efficientnet_lite1}
  lite2: {model: tf_efficientnet_lite2, batch_size: 16, top_k: 3}
  mine: {model: models/mine.pt2, weights: w.pt, class_names: classes.txt, card: card.md}
  lite0_flip: {model: tf_efficientnet_lite0, tta: flip}   # a comment
  plain: resnet50
ensembles:
  lite_mean: {members: [lite0, lite1, lite2]}
  lite_weighted: {members: {lite0: 1, lite1: 1, lite2: 2}}
  short: [lite1, lite2]
"""


def _fails(text, base=None, primary="lite0") -> ConfigError:
    """The ConfigError the list gives, read and checked against ``primary``: one line naming models."""
    with pytest.raises(ConfigError) as caught:
        parse_model_list(text, base).check_ensembles(primary)
    return _one_line_naming_models(caught.value)


def _one_line_naming_models(error: ConfigError) -> ConfigError:
    message = str(error)
    assert "\n" not in message, message
    assert error.settings == ("models",)
    # the fix comes last and names the setting (settings.for_deployment replaces its last mention)
    assert message.endswith(("in models", "named by models")) or "set models to" in message, message
    return error


def test_inline_pairs():
    listed = parse_model_list(" lite1=tf_efficientnet_lite1, lite2 = tf_efficientnet_lite2 ,")
    assert listed.models == (ListedModel("lite1", "tf_efficientnet_lite1"),
                             ListedModel("lite2", "tf_efficientnet_lite2"))
    assert listed.ensembles == () and listed.primary is None and bool(listed)
    assert listed.source == "lite1=tf_efficientnet_lite1, lite2 = tf_efficientnet_lite2 ,"
    assert listed.names("lite0") == ["lite0", "lite1", "lite2"]
    assert listed.model("lite2").model == "tf_efficientnet_lite2"
    listed.check_ensembles("lite0")


def test_inline_model_may_be_a_path_or_a_prefixed_name():
    listed = parse_model_list("mine=/m/my-model.pt2,r50=timm:resnet50")
    assert [(m.name, m.model) for m in listed.models] == [("mine", "/m/my-model.pt2"), ("r50", "timm:resnet50")]


@pytest.mark.parametrize("text", [None, "", "   "])
def test_no_list_is_the_primary_model_alone(text):
    listed = parse_model_list(text)
    assert listed == ModelList() and not listed
    assert listed.names("lite0") == ["lite0"]


def test_yaml_file(tmp_path):
    (tmp_path / "models.yaml").write_text(YAML)
    listed = parse_model_list(str(tmp_path / "models.yaml"))
    assert listed == dataclasses.replace(EXPECTED, source=str(tmp_path / "models.yaml"))
    assert listed.names("ignored") == ["ignored", "lite1", "lite2", "mine", "lite0_flip", "plain",
                                       "lite_mean", "lite_weighted", "short"]
    listed.check_ensembles("lite0")
    assert listed.ensembles[0].description == "ensemble(lite0,lite1,lite2)"
    assert listed.ensembles[1].description == "ensemble(lite0,lite1,lite2*2)"


def test_json_file_read_relative_to_base(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps(DOCUMENT))
    listed = parse_model_list("models.json", base=tmp_path)
    assert (listed.primary, listed.models, listed.ensembles) == (EXPECTED.primary, EXPECTED.models, EXPECTED.ensembles)
    assert listed.source == "models.json"
    listed.check_ensembles("lite0")


def test_yml_suffix_and_a_file_of_models_only(tmp_path):
    (tmp_path / "m.yml").write_text("models:\n  lite1: tf_efficientnet_lite1\n")
    listed = parse_model_list(str(tmp_path / "m.yml"))
    assert listed.primary is None and listed.models == (ListedModel("lite1", "tf_efficientnet_lite1"),)


@pytest.mark.parametrize(
    "model, name",
    [
        (None, "tf_efficientnet_lite0"),  # the default model
        ("tf_efficientnet_lite2", "tf_efficientnet_lite2"),
        ("timm:resnet50", "resnet50"),
        ("/m/my-model.pt2", "my_model"),
        ("/m/exported/", "exported"),  # a folder
        ("/m/exported", "exported"),
        ("models/2024-model.onnx", "m_2024_model"),  # made to start with a letter
    ],
)
def test_default_primary_name(model, name):
    assert default_primary_name(model, "tf_efficientnet_lite0") == name


@pytest.mark.parametrize(
    "text, words",
    [
        ("1bad=resnet50", "'1bad' is not valid"),
        ("my-model=resnet50", "'my-model' is not valid"),
        ("lite1", "is not name=model"),
        ("lite1=", "is not name=model"),
        ("lite1=resnet50,lite1=resnet18", "['lite1'] named more than once"),
    ],
)
def test_inline_errors(text, words):
    assert words in str(_fails(text))


def _file(tmp_path, document) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return str(path)


@pytest.mark.parametrize(
    "document, words",
    [
        ({"models": {"lite1": {"model": "x", "colour": "red"}}}, "unknown keys ['colour']"),
        ({"models": {"lite1": {"weights": "w.pt"}}}, "needs a 'model'"),
        ({"models": {"lite1": {"model": "x", "tta": "rotate"}}}, "tta 'rotate'"),
        ({"models": {"lite1": {"model": "x", "tta": True}}}, "tta True"),
        ({"models": {"lite1": {"model": "x", "batch_size": -1}}}, "batch_size -1"),
        ({"models": {"lite1": {"model": "x", "top_k": 0}}}, "top_k 0"),
        ({"models": {"bad name": "x"}}, "'bad name' is not valid"),
        ({"primary": "0lite", "models": {}}, "primary model name '0lite' is not valid"),
        ({"models": {"a": "x", "b": "y"}, "ensembles": {"a": ["a", "b"]}}, "['a'] named more than once"),
        ({"models": {"a": "x"}, "ensembles": {"e": {"members": ["a"]}}}, "needs at least two members"),
        ({"models": {"a": "x"}, "ensembles": {"e": {"members": {"a": 1}}}}, "needs at least two members"),
        ({"models": {"a": "x"}, "ensembles": {"e": {}}}, "needs at least two members"),
        ({"models": {"a": "x"}, "ensembles": {"e": "a,lite0"}}, "needs at least two members"),
        ({"models": {"a": "x"}, "ensembles": {"e": {"members": {"a": 0, "lite0": 1}}}}, "not a positive number"),
        ({"models": {"a": "x"}, "ensembles": {"e": {"members": {"a": -2, "lite0": 1}}}}, "not a positive number"),
        ({"models": {"a": "x"}, "ensembles": {"e": {"members": {"a": "heavy", "lite0": 1}}}}, "not a positive number"),
        ({"models": {"a": "x"}, "ensembles": {"e": ["a", "bad-member"]}}, "member name 'bad-member' is not valid"),
        ({"models": {"a": "x"}, "other": {}}, "expected a mapping with 'models'"),
        (["a", "b"], "expected a mapping with 'models'"),
        ({"models": ["a", "b"]}, "'models' and 'ensembles' map names to settings"),
        ({"models": {"a": "x"}, "ensembles": ["e"]}, "'models' and 'ensembles' map names to settings"),
    ],
)
def test_file_errors(tmp_path, document, words):
    assert words in str(_fails(_file(tmp_path, document)))


@pytest.mark.parametrize(
    "ensembles, unknown",
    [
        ({"e": ["a", "nowhere"]}, "['nowhere']"),
        ({"e": ["a", "lite0"], "f": ["e", "a"]}, "['e']"),  # an ensemble is not a member
    ],
)
def test_ensemble_members_must_be_models(tmp_path, ensembles, unknown):
    listed = parse_model_list(_file(tmp_path, {"models": {"a": "x"}, "ensembles": ensembles}))  # reads fine
    with pytest.raises(ConfigError) as caught:
        listed.check_ensembles("lite0")
    error = _one_line_naming_models(caught.value)
    assert f"members {unknown} are not models of the list" in str(error)
    assert "['lite0', 'a']" in str(error)


def test_the_primary_name_counts_among_the_names(tmp_path):
    listed = parse_model_list("lite0=tf_efficientnet_lite0,lite1=tf_efficientnet_lite1")
    with pytest.raises(ConfigError) as caught:
        listed.check_ensembles("lite0")
    assert "['lite0'] named more than once (the primary model is 'lite0')" in str(_one_line_naming_models(caught.value))


def test_a_model_not_in_the_list():
    with pytest.raises(ConfigError) as caught:
        parse_model_list("lite1=tf_efficientnet_lite1").model("lite9")
    assert "'lite9' is not in the model list" in str(caught.value) and caught.value.settings == ("models",)


@pytest.mark.parametrize("name", ["missing.yaml", "missing.json", "gone/models.yml"])
def test_an_unreadable_file(tmp_path, name):
    error = _fails(name, base=tmp_path)
    assert f"model list file {name!r} cannot be read" in str(error)


def test_a_folder_named_like_a_file_is_unreadable(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "cannot be read" in str(_fails(str(tmp_path / "dir.yaml")))


@pytest.mark.parametrize(
    "name, text",
    [("models.yaml", "models: {lite1: [unclosed\n  other: 1\n"), ("models.yaml", "a: b: c\n"),
     ("models.json", "{'models': }"), ("models.json", "")],
)
def test_an_invalid_file(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert f"model list file {str(tmp_path / name)!r} is not valid: " in str(_fails(str(tmp_path / name)))


def test_an_empty_yaml_file_is_not_a_mapping(tmp_path):
    (tmp_path / "models.yaml").write_text("# nothing yet\n")
    assert "expected a mapping with 'models'" in str(_fails(str(tmp_path / "models.yaml")))


def test_settings_name_the_variable_of_a_bad_list():
    with pytest.raises(ConfigError) as caught:
        Settings.from_environment({"INFERENCE_MODELS": "bad"})
    message = str(caught.value)
    assert "\n" not in message and message.endswith("in INFERENCE_MODELS (models.entries)"), message
    assert "model list 'bad'" in message


def test_settings_read_a_good_list(tmp_path):
    (tmp_path / "models.yaml").write_text(YAML)
    settings = Settings.from_environment({"INFERENCE_MODELS": str(tmp_path / "models.yaml")})
    assert settings.models == str(tmp_path / "models.yaml")
    assert settings.model_list.ensembles == EXPECTED.ensembles
    assert not Settings.from_environment({}).model_list
