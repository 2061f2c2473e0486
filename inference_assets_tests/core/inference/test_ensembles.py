"""Ensembles (issue 17): a partition's predictions as the weighted mean of its members' stored probabilities."""

import numpy as np
import pytest

from inference_assets.core.errors import ConfigError
from inference_assets.core.inference.ensembles import Member, ensemble_identity, predict_ensemble_partition
from inference_assets.core.storage.results import ResultFileWriter, read_class_names, read_results

pytestmark = pytest.mark.fast

CLASSES = ["cat", "dog", "fox", "owl"]
IMAGES = ["a", "b", "c"]
# each member's probabilities of images a, b, c over the four classes
PROBS = {
    "m1": np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1]]),
    "m2": np.array([[0.1, 0.6, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.05, 0.05, 0.1, 0.8]]),
    "m3": np.array([[0.2, 0.2, 0.5, 0.1], [0.0, 0.9, 0.1, 0.0], [0.3, 0.3, 0.2, 0.2]]),
}


def _write(path, images=IMAGES, probs=None, classes=CLASSES, failures=(), keep_probabilities=True, top_k=2,
           hashes=None):
    """A member's result file: ``images`` predicted with ``probs`` (one row each), then ``failures``
    as (image, stage, error); image i's content hash is h<i> unless ``hashes`` says otherwise."""
    hashes = hashes or {}
    writer = ResultFileWriter(path, partition="p0", model=path.stem, weights="w", device="cpu", precision="fp32",
                              top_k=top_k, pixels="px", identity=path.stem, class_names=classes)
    with writer:
        if images:
            probs = np.asarray(probs, dtype=np.float32)
            indices = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            writer.write_predictions(list(images), [f"/img/{i}.jpg" for i in images],
                                     [hashes.get(i, f"h{i}") for i in images],
                                     indices, np.take_along_axis(probs, indices, axis=1), classes,
                                     probabilities=probs if keep_probabilities else None)
        writer.write_failures([f for f, _, _ in failures], [f"/img/{f}.jpg" for f, _, _ in failures],
                              [f"h{f}" for f, _, _ in failures], [s for _, s, _ in failures],
                              [e for _, _, e in failures])
    return path


def _members(tmp_path, weights=None, **overrides):
    weights = weights or {name: 1.0 for name in PROBS}
    members = []
    for name, weight in weights.items():
        path = tmp_path / f"{name}.parquet"
        _write(path, **({"probs": PROBS[name]} | overrides.get(name, {})))
        members.append(Member(name, weight, path))
    return members


def _run(tmp_path, members, top_k=3):
    out = tmp_path / "ensemble" / "p0.parquet"
    out.parent.mkdir(exist_ok=True)
    summary = predict_ensemble_partition(members, out, "p0", "ensemble(m1,m2,m3)", "id", top_k=top_k)
    return summary, {row["image_id"]: row for row in read_results(out).to_pylist()}, out


@pytest.mark.parametrize("weights", [{"m1": 1, "m2": 1, "m3": 1}, {"m1": 1, "m2": 1, "m3": 2},
                                     {"m1": 0.5, "m2": 3}, {"m3": 10, "m1": 0.1}])
def test_probabilities_are_the_weighted_mean_of_the_members(tmp_path, weights):
    summary, rows, out = _run(tmp_path, _members(tmp_path, weights))
    assert (summary.images, summary.predicted, summary.failed) == (3, 3, 0)
    total = sum(weights.values())
    expected = sum(PROBS[name].astype(np.float32).astype(np.float64) * w / total for name, w in weights.items())
    assert read_class_names(out) == CLASSES
    for i, image in enumerate(IMAGES):
        row = rows[image]
        mean = expected[i]
        assert row["status"] == "predicted" and row["stage"] is None and row["error"] is None
        assert np.allclose(row["probabilities"], mean, atol=1e-6)
        assert abs(sum(row["probabilities"]) - 1) < 1e-6
        order = np.argsort(-np.asarray(row["probabilities"]), kind="stable")
        assert row["class_index"] == int(np.argmax(mean)) == order[0]
        assert row["class_label"] == CLASSES[row["class_index"]]
        assert row["topk_indices"] == order[:3].tolist()
        assert row["topk_labels"] == [CLASSES[j] for j in order[:3]]
        assert np.allclose(row["topk_probs"], mean[order[:3]], atol=1e-6)
        assert row["confidence"] == pytest.approx(mean.max(), abs=1e-6) and row["confidence"] == row["topk_probs"][0]
        assert (row["uri"], row["content_hash"], row["partition"]) == (f"/img/{image}.jpg", f"h{image}", "p0")
        assert (row["model"], row["weights"], row["model_id"]) == ("ensemble(m1,m2,m3)", "stored probabilities", "id")


def test_top_k_is_at_most_the_number_of_classes(tmp_path):
    _, rows, _ = _run(tmp_path, _members(tmp_path), top_k=10)
    assert all(len(row["topk_indices"]) == len(CLASSES) for row in rows.values())


def test_an_image_a_member_failed_on_is_a_failure_naming_it(tmp_path):
    failed_in_m2 = {"images": ["a", "c"], "probs": PROBS["m2"][[0, 2]],
                    "failures": [("b", "decode", "cannot identify image file")]}
    summary, rows, _ = _run(tmp_path, _members(tmp_path, m2=failed_in_m2))
    assert (summary.images, summary.predicted, summary.failed) == (3, 2, 1)
    row = rows["b"]
    assert row["status"] == "failed" and row["stage"] == "decode"
    assert row["error"] == "member 'm2': cannot identify image file"
    assert row["probabilities"] is None and row["class_label"] is None
    assert (row["uri"], row["content_hash"]) == ("/img/b.jpg", "hb")
    expected = (PROBS["m1"][2] + PROBS["m2"][2] + PROBS["m3"][2]) / 3
    assert np.allclose(rows["c"]["probabilities"], expected, atol=1e-6)


def test_an_image_a_member_has_not_predicted_is_a_failure(tmp_path):
    older_m3 = {"images": ["a", "b"], "probs": PROBS["m3"][:2]}
    summary, rows, _ = _run(tmp_path, _members(tmp_path, m3=older_m3))
    assert (summary.images, summary.predicted, summary.failed) == (3, 2, 1)
    row = rows["c"]
    assert row["status"] == "failed" and row["stage"] == "ensemble"
    assert "member 'm3' has no prediction for this image" in row["error"]


def test_an_image_the_first_member_has_not_predicted_is_a_failure_too(tmp_path):
    older_m1 = {"images": ["a", "c"], "probs": PROBS["m1"][[0, 2]]}  # m1's file predates image b
    summary, rows, out = _run(tmp_path, _members(tmp_path, m1=older_m1))
    assert (summary.images, summary.predicted, summary.failed) == (3, 2, 1)
    assert sorted(read_results(out).column("image_id").to_pylist()) == IMAGES  # one row per image
    row = rows["b"]
    assert row["status"] == "failed" and row["stage"] == "ensemble"
    assert "member 'm1' has no prediction for this image" in row["error"]
    assert (row["uri"], row["content_hash"]) == ("/img/b.jpg", "hb")


def test_an_image_predicted_from_other_bytes_is_not_averaged(tmp_path):
    earlier_c = {"hashes": {"c": "h-old"}}  # m2 predicted image c from its earlier content
    summary, rows, _ = _run(tmp_path, _members(tmp_path, m2=earlier_c))
    assert (summary.predicted, summary.failed) == (2, 1)
    assert rows["c"]["status"] == "failed" and "member 'm2' has no prediction" in rows["c"]["error"]


def test_a_member_without_a_result_file(tmp_path):
    members = _members(tmp_path)
    members[1].results.unlink()
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, members)
    message = str(caught.value)
    assert "ensemble member 'm2' has no predictions for p0" in message and "\n" not in message
    assert str(members[1].results) in message


def test_members_with_other_class_names(tmp_path):
    other = {"classes": ["cat", "dog", "owl", "fox"]}  # the same classes in another order
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, _members(tmp_path, m3=other))
    assert "ensemble members 'm1' and 'm3' have different class names" in str(caught.value)


def test_a_member_written_without_probabilities_asks_for_force(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, _members(tmp_path, m2={"keep_probabilities": False}))
    message = str(caught.value)
    assert "ensemble member 'm2'" in message and "without every class's probability" in message
    assert message.endswith("again with force")
    assert not (tmp_path / "ensemble" / "p0.parquet").exists()  # nothing half-written is left


def test_every_member_failing_everything_gives_failure_rows_only(tmp_path):
    everything_failed = {"images": [], "failures": [(i, "decode", "bad") for i in IMAGES]}
    summary, rows, _ = _run(tmp_path, _members(tmp_path, m1=everything_failed, m2=everything_failed,
                                               m3=everything_failed))
    assert (summary.images, summary.predicted, summary.failed) == (3, 0, 3)
    assert {row["error"] for row in rows.values()} == {"member 'm1': bad"}


def test_many_images_go_through_in_chunks_in_order(tmp_path):
    rng = np.random.default_rng(0)
    images = [f"i{n:04d}" for n in range(600)]  # more than one chunk of 256
    members = []
    probs = {}
    for name, weight in (("m1", 1.0), ("m2", 3.0)):
        p = rng.dirichlet(np.ones(len(CLASSES)), size=len(images))
        probs[name] = p.astype(np.float32).astype(np.float64)
        members.append(Member(name, weight, _write(tmp_path / f"{name}.parquet", images=images, probs=p)))
    summary, rows, out = _run(tmp_path, members)
    assert summary.predicted == 600
    assert read_results(out).column("image_id").to_pylist() == images
    expected = (probs["m1"] * 1 + probs["m2"] * 3) / 4
    got = np.array([rows[i]["probabilities"] for i in images])
    assert np.allclose(got, expected, atol=1e-6)
    assert [rows[i]["class_index"] for i in images] == np.argmax(expected, axis=1).tolist()


def test_rows_keep_the_image_order_with_failures_among_them(tmp_path):
    rng = np.random.default_rng(1)
    images = [f"i{n:04d}" for n in range(600)]
    failing = set(images[5:300:7]) | set(images[400:410])  # runs of one image and of ten, across chunks of 256
    predicted = [i for i in images if i not in failing]
    p1 = rng.dirichlet(np.ones(len(CLASSES)), size=len(images))
    p2 = rng.dirichlet(np.ones(len(CLASSES)), size=len(predicted))
    m1 = _write(tmp_path / "m1.parquet", images=images, probs=p1)
    # m2 predicted the others and failed on these (its file: predictions first, then failures)
    m2 = _write(tmp_path / "m2.parquet", images=predicted, probs=p2,
                failures=[(i, "decode", "truncated") for i in sorted(failing)])
    summary, rows, out = _run(tmp_path, [Member("m1", 1.0, m1), Member("m2", 1.0, m2)])
    assert (summary.predicted, summary.failed) == (600 - len(failing), len(failing))
    table = read_results(out)
    assert table.column("image_id").to_pylist() == images  # the first member's order, failures in place
    assert [i for i, s in zip(images, table.column("status").to_pylist()) if s == "failed"] == sorted(failing)
    expected = (p1.astype(np.float32)[[images.index(i) for i in predicted]] + p2.astype(np.float32)) / 2
    assert np.allclose([rows[i]["probabilities"] for i in predicted], expected, atol=1e-6)


def test_identity_depends_on_members_and_weights_not_their_order():
    a = ensemble_identity([("m1", "s1", 1.0), ("m2", "s2", 1.0)])
    assert a == ensemble_identity([("m2", "s2", 1.0), ("m1", "s1", 1.0)])
    assert a != ensemble_identity([("m1", "s1", 1.0), ("m2", "s2", 2.0)])
    assert a != ensemble_identity([("m1", "s1", 1.0), ("m2", "s3", 1.0)])
