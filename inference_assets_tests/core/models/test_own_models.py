"""Your own classifier through the real pipeline: every form it can be saved in, its class names,
model cards, multi-label outputs, what recomputes when it changes, and the errors bad input gets.

One network (the bundled EfficientNet-Lite0 with a 4-class head, ``own_models.py``) is saved in
every form; each must give, through Dagster, the top-1 and probabilities (within 1e-4) that the
same network gives when run directly in PyTorch on the sample photos with timm's own transform.
"""

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from inference_assets.core.reporting.evaluation import stored_summary
from inference_assets.resources import ModelResource
from inference_assets_tests.conftest import cpu_resources, run_all_steps, source_resource, work_area_resource
from inference_assets_tests.support.environment import SAMPLE_IMAGES
from inference_assets_tests.support.own_models import (
    CLASS_NAMES,
    four_class_network,
    reference_outputs,
    save_every_form,
)

SAMPLE_FILES = sorted(p for p in SAMPLE_IMAGES.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def network():
    return four_class_network()


@pytest.fixture(scope="module")
def forms(network, tmp_path_factory):
    return {form.name: form for form in save_every_form(network, tmp_path_factory.mktemp("own_models"))}


@pytest.fixture(scope="module")
def reference(network):
    return reference_outputs(network, SAMPLE_FILES)


FORM_NAMES = [
    "bare state_dict .pth + names.txt",
    "{'state_dict'} wrapper + JSON list",
    "{'model'} wrapper with module. prefixes + JSON map",
    "{'model_state_dict'} .bin + CSV",
    "checkpoint carrying class_names",
    ".safetensors carrying class_names",
    "timm / Hugging Face model folder",
    "a folder: state_dict + card naming the architecture",
    "TorchScript + card beside it",
    "torch.export .pt2 (fixed batch 2) + card",
    "ONNX, dynamic batch, names in its metadata: a folder with a YAML card",
    "ONNX, NHWC, fixed batch 1, probabilities out",
    "multi-label TorchScript (sigmoid, threshold 0.3)",
]


def _resources(image_root: Path, tmp_path: Path, **model) -> dict:
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    resources["model"] = ModelResource(batch_size=4, **model)
    return resources


def _stored(database: Path) -> dict:
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = conn.execute(
            "SELECT uri, class_label, topk_indices, topk_probs, positive_labels, model_id FROM predictions"
        ).fetchall()
        classes = [r[0] for r in conn.execute("SELECT class_label FROM model_classes ORDER BY class_index").fetchall()]
        evaluation = stored_summary(conn)  # None before an evaluation
    return {"rows": {Path(r[0]).name: r[1:] for r in rows}, "classes": classes, "evaluation": evaluation}


@pytest.mark.parametrize("form_name", FORM_NAMES)
def test_every_form_of_your_model_gives_its_own_predictions_through_dagster(
    form_name, forms, reference, image_root, tmp_path
):
    form = forms[form_name]
    resources = _resources(image_root, tmp_path, **form.resource_config())
    run_all_steps(resources)

    stored = _stored(tmp_path / "warehouse.duckdb")
    assert stored["classes"] == CLASS_NAMES
    assert set(stored["rows"]) == {p.name for p in SAMPLE_FILES}
    for name, (label, indices, probs, positives, model_id) in stored["rows"].items():
        logits = torch.from_numpy(reference[name])
        expected = (logits.sigmoid() if form.multi_label_threshold else logits.softmax(-1)).numpy()
        assert label == CLASS_NAMES[int(expected.argmax())], name
        assert len(indices) == len(CLASS_NAMES)  # top-5 of 4 classes keeps all 4
        np.testing.assert_allclose(probs, expected[indices], atol=1e-4, err_msg=name)
        assert model_id
        if form.multi_label_threshold is None:
            assert positives is None
        else:
            order = np.argsort(-expected)
            assert positives == [CLASS_NAMES[i] for i in order if expected[i] >= form.multi_label_threshold]
    # the folders espresso/, tripod/, missile/, tabby/ are the model's own classes: all four evaluated
    evaluation = stored["evaluation"]
    evaluated, top1, unknown = evaluation.evaluated, evaluation.top1_accuracy, evaluation.unknown_labels
    assert (evaluated, unknown, top1) == (4, 0, 1.0)
    report = (tmp_path / "work" / "report" / "index.html").read_text()
    assert all(f"<h3>{name} <small>" in report for name in CLASS_NAMES)  # a gallery section per class
    assert ('id="positive-labels"' in report) == bool(form.multi_label_threshold)


# --- bad model input: one line naming the setting and the fix, before any image is decoded ---------


class _FlatInput(torch.nn.Module):
    def forward(self, x):
        return x[:, :4]


class _FourChannels(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def _bad_inputs(root: Path, forms: dict) -> dict:
    """name -> (model resource config, the expected message's start)."""
    from inference_assets.core.models.runtimes import export_onnx

    bare = forms["bare state_dict .pth + names.txt"].weights
    for name, content in (("garbage.onnx", b"not a model"), ("garbage.pth", b"\x80\x04garbage"),
                          ("garbage.safetensors", b"\x10\x00\x00\x00"), ("garbage.pt2", b"PK\x03\x04 nothing"),
                          ("model.h5", b"HDF")):
        (root / name).write_bytes(content)
    flat = export_onnx(_FlatInput(), root / "flat" / "flat.onnx", torch.zeros(1, 150528), dynamic_batch=True)
    four = export_onnx(_FourChannels(), root / "four" / "four.onnx", torch.zeros(1, 4, 8, 8), dynamic_batch=True)
    (root / "three.txt").write_text("espresso\ntripod\nmissile\n")
    no_arch = root / "no_arch"
    no_arch.mkdir()
    (no_arch / "weights.pth").write_bytes(Path(bare).read_bytes())
    (no_arch / "model_card.json").write_text('{"class_names": ["a", "b", "c", "d"]}')
    bad_type = root / "bad_type"
    bad_type.mkdir()
    (bad_type / "m.onnx").write_bytes((root / "four" / "four.onnx").read_bytes())
    (bad_type / "model_card.yaml").write_text("crop_pct: big\n")
    typo = root / "typo"
    typo.mkdir()
    (typo / "m.onnx").write_bytes(flat.read_bytes())
    (typo / "model_card.json").write_text('{"meen": [0.5, 0.5, 0.5]}')
    (root / "empty").mkdir()
    return {
        "missing file": ({"name": str(root / "nope.onnx")}, f"model path '{root / 'nope.onnx'}' not found"),
        "unknown format": ({"name": str(root / "model.h5")}, f"model file '{root / 'model.h5'}' has an unknown format"),
        "corrupt ONNX": ({"name": str(root / "garbage.onnx")}, f"ONNX model '{root / 'garbage.onnx'}' could not be loaded by ONNX Runtime"),
        "corrupt checkpoint": ({"name": "tf_efficientnet_lite0", "weights": str(root / "garbage.pth")},
                               f"weights file '{root / 'garbage.pth'}' could not be read safely"),
        "corrupt safetensors": ({"name": "tf_efficientnet_lite0", "weights": str(root / "garbage.safetensors")},
                                f"weights file '{root / 'garbage.safetensors'}' is not a readable safetensors file"),
        "corrupt torch.export": ({"name": str(root / "garbage.pt2")}, f"torch.export program '{root / 'garbage.pt2'}' could not be loaded"),
        "head vs class names": ({"name": "tf_efficientnet_lite0", "weights": bare, "class_names": str(root / "three.txt")},
                                f"class_names file '{root / 'three.txt'}' gives 3 class names but model 'tf_efficientnet_lite0' has 4 outputs"),
        "missing class names file": ({"name": "tf_efficientnet_lite0", "weights": bare, "class_names": str(root / "none.txt")},
                                     f"class_names file '{root / 'none.txt'}' not found"),
        "ONNX input rank": ({"name": str(flat)}, f"ONNX model '{flat}' has an input of rank 2"),
        "ONNX input channels": ({"name": str(four)}, f"ONNX model '{four}' has input shape [?, 4, 8, 8] with no 3-channel axis"),
        "card without architecture": ({"name": str(no_arch)}, f"model file '{no_arch / 'weights.pth'}' is a state_dict, which does not say its architecture"),
        "card key of the wrong type": ({"name": str(bad_type)}, f"model card '{bad_type / 'model_card.yaml'}': crop_pct must be a number in (0, 1] (got 'big')"),
        "card key unknown": ({"name": str(typo)}, f"model card '{typo / 'model_card.json'}' has unknown key 'meen'"),
        "folder without a model": ({"name": str(root / "empty")}, f"model folder '{root / 'empty'}' holds no model file"),
        "weights beside a model file": ({"name": str(flat), "weights": bare},
                                        f"weights '{bare}' apply to an architecture, but model '{flat}' is a file or folder"),
    }


BAD_INPUTS = ["missing file", "unknown format", "corrupt ONNX", "corrupt checkpoint", "corrupt safetensors",
              "corrupt torch.export", "head vs class names", "missing class names file", "ONNX input rank",
              "ONNX input channels", "card without architecture", "card key of the wrong type", "card key unknown",
              "folder without a model", "weights beside a model file"]


@pytest.fixture(scope="module")
def bad_inputs(forms, tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad_models"), forms)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_model_input_stops_make_run_before_any_image_is_decoded(case, bad_inputs, image_root, tmp_path, monkeypatch):
    from inference_assets.run import run_pipeline

    config, expected = bad_inputs[case]
    monkeypatch.setenv("INFERENCE_IMAGE_ROOT", str(image_root))
    monkeypatch.setenv("INFERENCE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INFERENCE_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    env_names = {"name": "INFERENCE_MODEL", "weights": "INFERENCE_WEIGHTS", "class_names": "INFERENCE_CLASS_NAMES"}
    for key, value in config.items():
        monkeypatch.setenv(env_names[key], value)
    with pytest.raises(SystemExit) as exit_info:
        run_pipeline()
    message = str(exit_info.value.code)
    assert message.startswith(f"configuration error: {expected}"), message
    assert "\n" not in message and ": " in message.removeprefix(f"configuration error: {expected}")  # and the fix
    assert not (tmp_path / "work").exists() and not (tmp_path / "w.duckdb").exists()  # no output at all


def test_bad_model_input_stops_a_dagster_step_at_resource_setup_with_no_outputs(bad_inputs, image_root, tmp_path):
    """From the UI or the CLI (no preflight), the step stops when its resources are set up."""
    from dagster import DagsterInstance, materialize

    from inference_assets.definitions import ASSET_CHECKS, ASSETS
    from inference_assets_tests.assets.test_configuration_errors import _failure_message

    config, expected = bad_inputs["ONNX input rank"]
    resources = _resources(image_root, tmp_path, **config)
    with DagsterInstance.ephemeral() as instance:
        assert materialize([*ASSETS, *ASSET_CHECKS], selection=["image_manifest"], resources=resources, instance=instance).success
        result = materialize([*ASSETS, *ASSET_CHECKS], selection=["preprocessed_images", "prediction_files"],
                             partition_key="shard-00", resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    assert _failure_message(result).startswith(expected)
    assert not (tmp_path / "work" / "preprocessed").exists() and not (tmp_path / "work" / "predictions").exists()


# --- identity: what a change recomputes ----------------------------------------------------------


def _counts(results) -> tuple[dict, dict]:
    """(preprocessed_images, predictions) metadata of a run_all_steps' preprocess + predict run."""
    run = results[1]
    return tuple({k: v.value for k, v in run.asset_materializations_for_node(name)[0].metadata.items()}
                 for name in ("preprocessed_images", "prediction_files"))


def test_changing_the_class_names_or_card_recomputes_what_it_must_and_nothing_else(forms, image_root, tmp_path):
    import json
    import shutil

    folder = tmp_path / "my_model"
    shutil.copytree(Path(forms["a folder: state_dict + card naming the architecture"].model), folder)
    card = {"architecture": "tf_efficientnet_lite0", "input_size": 224, "interpolation": "bicubic", "crop_pct": 0.875,
            "scaling": "tf"}
    names = tmp_path / "names.txt"
    (folder / "model_card.yaml").unlink()

    def run(class_names: list[str], **card_keys) -> tuple[dict, dict]:
        (folder / "model_card.json").write_text(json.dumps({**card, **card_keys}))
        names.write_text("\n".join(class_names))
        return _counts(run_all_steps(_resources(image_root, tmp_path, name=str(folder), class_names=str(names))))

    pixels, predictions = run(CLASS_NAMES)
    assert (pixels["computed"], predictions["predicted"], predictions["reused"]) == (6, 6, 0)
    pixels, predictions = run(CLASS_NAMES)  # nothing changed: everything reused
    assert (pixels["computed"], pixels["reused"], predictions["predicted"], predictions["reused"]) == (0, 6, 0, 6)
    renamed = ["ESPRESSO", "Tripod", "missile", "Tabby cat"]
    pixels, predictions = run(renamed)  # only the class names: pixels reused, predictions recomputed
    assert (pixels["computed"], pixels["reused"], predictions["predicted"], predictions["reused"]) == (0, 6, 6, 0)
    stored = _stored(tmp_path / "warehouse.duckdb")
    assert stored["classes"] == renamed
    # folders match the model's names whatever their case; 'tabby' is not 'Tabby cat': unknown, not a miss
    evaluation = stored["evaluation"]
    evaluated, top1, unknown = evaluation.evaluated, evaluation.top1_accuracy, evaluation.unknown_labels
    assert (evaluated, top1, unknown) == (3, 1.0, 1)
    pixels, predictions = run(renamed, mean=[0.4, 0.5, 0.5])  # the normalization: the same pixels, new predictions
    assert (pixels["computed"], predictions["predicted"]) == (0, 6)
    pixels, predictions = run(renamed, mean=[0.4, 0.5, 0.5], crop_pct=1.0)  # the crop: new pixels and predictions
    assert (pixels["computed"], predictions["predicted"]) == (6, 6)
    pixels, predictions = run(renamed, mean=[0.4, 0.5, 0.5], crop_pct=1.0)
    assert (pixels["computed"], predictions["predicted"], predictions["reused"]) == (0, 0, 6)


# --- a real Keras 3 model, exported with Keras's own ONNX exporter ---------------------------------

KERAS_SCRIPT = '''
import json, os, sys
os.environ["KERAS_BACKEND"] = "torch"
import keras, numpy as np
from PIL import Image
from timm.data import create_transform

out, files = sys.argv[1], sys.argv[2:]
keras.utils.set_random_seed(7)
inputs = keras.Input((64, 64, 3), name="image")
x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
# the card's preprocessing, as timm's reference transform: resize both sides to 64, bilinear, 0..1
transform = create_transform(input_size=(3, 64, 64), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
                             mean=(0, 0, 0), std=(1, 1, 1))
batch = np.stack([transform(Image.open(f).convert("RGB")).permute(1, 2, 0).numpy() for f in files])
probs = model.predict(batch, verbose=0)
model.export(os.path.join(out, "model.onnx"), format="onnx", verbose=False)
json.dump({"probs": probs.tolist(), "files": [os.path.basename(f) for f in files]}, open(os.path.join(out, "predict.json"), "w"))
'''


def test_a_keras_model_exported_to_onnx_by_keras_gives_model_predicts_top1(image_root, tmp_path):
    import json
    import subprocess
    import sys

    folder = tmp_path / "keras_model"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(folder), *map(str, SAMPLE_FILES)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["alpha", "beta", "gamma", "delta", "epsilon"]
    (folder / "model_card.yaml").write_text(
        "class_names: [alpha, beta, gamma, delta, epsilon]\ninput_size: [64, 64]\nresize: exact\ncrop_pct: 1.0\n"
        "interpolation: bilinear\nscaling: 0-1\noutput: probabilities\n"
    )
    run_all_steps(_resources(image_root, tmp_path, name=str(folder)))

    keras_side = json.loads((folder / "predict.json").read_text())
    stored = _stored(tmp_path / "warehouse.duckdb")
    assert stored["classes"] == names
    for name, probs in zip(keras_side["files"], keras_side["probs"]):
        label, indices, top_probs, _, _ = stored["rows"][name]
        assert label == names[int(np.argmax(probs))], name
        np.testing.assert_allclose(top_probs, np.asarray(probs)[indices], atol=1e-4, err_msg=name)
    evaluated, unknown = stored["evaluation"].evaluated, stored["evaluation"].unknown_labels
    assert (evaluated, unknown) == (0, 4)  # the folders are not its classes: reported, not counted


# --- the same, from the command line: make run's entry point and `dagster asset materialize` -------


def _cli(args: list[str], env: dict) -> str:
    import subprocess

    from inference_assets_tests.support.environment import PROJECT_ROOT

    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_make_run_takes_your_model_from_the_environment(forms, reference, image_root, tmp_path):
    import sys

    from inference_assets_tests.support.environment import pipeline_env

    env = pipeline_env(image_root, tmp_path)
    env["INFERENCE_MODEL"] = forms["ONNX, NHWC, fixed batch 1, probabilities out"].model
    out = _cli([sys.executable, "-m", "inference_assets.run", "--progress", "log"], env)
    assert "images seen: 6   predicted: 6   failed: 0" in out
    assert "accuracy:    top-1 100.0%, top-5 100.0% on 4 labelled images" in out
    stored = _stored(tmp_path / "warehouse.duckdb")
    assert stored["classes"] == CLASS_NAMES
    for name, (label, *_rest) in stored["rows"].items():
        assert label == CLASS_NAMES[int(reference[name].argmax())]


def test_dagster_asset_materialize_takes_your_model_from_launchpad_style_run_config(forms, reference, image_root, tmp_path):
    """The YAML a user types into the Launchpad, given to the CLI with -c (the same run config)."""
    import sys

    from inference_assets.partitions import IMAGE_SHARDS
    from inference_assets_tests.support.environment import pipeline_env

    form = forms["bare state_dict .pth + names.txt"]
    config = tmp_path / "launchpad.yaml"
    config.write_text(
        "resources:\n  model:\n    config:\n"
        f"      name: {form.model}\n      weights: {form.weights}\n      class_names: {form.class_names}\n"
    )
    env = pipeline_env(image_root, tmp_path)
    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "inference_assets.definitions"]
    keys = IMAGE_SHARDS.get_partition_keys()
    _cli([*dagster, "--select", "image_manifest"], env)
    _cli([*dagster, "-c", str(config), "--select", "preprocessed_images,prediction_files",
          "--partition-range", f"{keys[0]}...{keys[-1]}"], env)
    log = _cli([*dagster, "-c", str(config), "--select", "prediction_results"], env)
    assert "Asset check 'probabilities_valid' on 'prediction_results' passed" in log
    stored = _stored(tmp_path / "warehouse.duckdb")
    assert stored["evaluation"] is None  # evaluation was not selected
    assert stored["classes"] == CLASS_NAMES
    for name, (label, *_rest) in stored["rows"].items():
        assert label == CLASS_NAMES[int(reference[name].argmax())]



# --- runtime details, on the core directly ---------------------------------------------------------


class _TinyNhwc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x):  # (N, H, W, 3), as TensorFlow-style exports take
        return self.conv(x.permute(0, 3, 1, 2)).mean(dim=(2, 3))


def test_an_nhwc_torch_export_program_with_a_fixed_batch_gets_nchw_batches_of_any_size(tmp_path):
    from inference_assets.core.models.loading import ModelSpec, load_classifier

    net = _TinyNhwc().eval()
    path = tmp_path / "nhwc.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(3, 32, 32, 3),)), str(path))
    (tmp_path / "model_card.json").write_text('{"input_size": 32, "scaling": "0-1"}')
    classifier = load_classifier(ModelSpec(str(path)))
    assert len(classifier.labels) == 6 and classifier.info.warnings  # no names: by index, with a warning
    x = torch.rand(7, 3, 32, 32)  # 7 = 3 + 3 + a padded 1
    with torch.inference_mode():
        torch.testing.assert_close(classifier.module(x), net(x.permute(0, 2, 3, 1)))


def test_settings_only_pytorch_honours_stop_an_onnx_model_in_one_line(forms):
    from inference_assets.core.errors import ConfigError
    from inference_assets.core.inference.batches import InferenceSettings, check_runtime
    from inference_assets.core.models.loading import ModelSpec, load_classifier

    classifier = load_classifier(ModelSpec(forms["ONNX, NHWC, fixed batch 1, probabilities out"].model))
    assert classifier.runtime == "onnxruntime (CPUExecutionProvider)"
    check_runtime(classifier, InferenceSettings(device=torch.device("cpu")))
    for settings in ({"precision": "bf16"}, {"compile": True}):
        with pytest.raises(ConfigError, match=r"applies to PyTorch models, but model .* runs in ONNX Runtime"):
            check_runtime(classifier, InferenceSettings(device=torch.device("cpu"), **settings))
