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

from inference_assets.images.resources import StorageResource
from inference_assets.predictions.resources import ModelResource

from .conftest import cpu_resources, run_all_steps
from .environment import SAMPLE_IMAGES
from .own_models import CLASS_NAMES, four_class_network, reference_outputs, save_every_form

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
    storage = StorageResource(image_root=str(image_root), work_dir=str(tmp_path / "work"))
    resources = cpu_resources(storage, tmp_path / "warehouse.duckdb")
    resources["model"] = ModelResource(batch_size=4, **model)
    return resources


def _stored(database: Path) -> dict:
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = conn.execute(
            "SELECT uri, class_label, topk_indices, topk_probs, positive_labels, model_id FROM predictions"
        ).fetchall()
        classes = [r[0] for r in conn.execute("SELECT class_label FROM model_classes ORDER BY class_index").fetchall()]
        evaluation = conn.execute("SELECT evaluated, unknown_labels, top1_accuracy FROM evaluation_summary").fetchone()
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
    evaluated, unknown, top1 = stored["evaluation"]
    assert (evaluated, unknown, top1) == (4, 0, 1.0)
    report = (tmp_path / "work" / "report" / "index.html").read_text()
    assert all(f"<h3>{name} <small>" in report for name in CLASS_NAMES)  # a gallery section per class
    assert ('id="positive-labels"' in report) == bool(form.multi_label_threshold)
