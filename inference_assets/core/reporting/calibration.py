"""Calibration: does a model's top-1 confidence match how often it is right, on the labelled images?

A model is calibrated when, of the images it predicts with confidence 0.8, about 80 % are right.
The reliability diagram groups images into equal-width confidence bins over (0, 1] and compares
each bin's mean confidence with its accuracy; the expected calibration error (ECE) is the gap
averaged over images: ``sum over bins of |accuracy - confidence| * images_in_bin / images``.

Temperature scaling (Guo et al., 2017) is the one-parameter fix: divide the logits by a
temperature T > 0 fitted to minimize the negative log-likelihood (NLL) of the labels. T > 1
softens an over-confident model, T < 1 sharpens an under-confident one; the top-1 class never
changes. The stored probabilities are softmax outputs, and ``log p`` differs from the logits by a
constant per image, so ``softmax(log p / T) == softmax(logits / T)``: T is fitted on the stored
probabilities. It is fitted on the labelled images and applied only to the calibrated columns;
the stored probabilities themselves are never replaced.

A temperature fitted and measured on the same images flatters itself, so it is also measured
held out, by two-fold cross-fitting: the labelled images are split in two halves by a hash of
their image id (an image stays in its half as the collection grows), a temperature is fitted on
each half and applied to the other, and the ECE and NLL of those out-of-half confidences are
``ece_held_out`` / ``nll_held_out``. Close to ``ece_after_scaling``: T generalizes; much worse:
too few labelled images to trust it.

Labels match classes as in :mod:`.evaluation` (``truth_names(label) & synonyms(class_name)``);
a label that matches none of the classes is left out.

Tables (replaced together in one transaction by :func:`store_calibration`):

- ``calibration_summary``: one row per model: images, ece, temperature, ece_after_scaling, nll,
  nll_after_scaling, note, accuracy, confidence, ece_held_out, nll_held_out;
- ``calibration_bins``: the reliability diagram's bins per model, before (``scaled`` false) and
  after temperature scaling.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inference_assets.core.reporting import charts
from inference_assets.core.reporting.cards import escape as _e
from inference_assets.core.reporting.evaluation import synonyms, truth_names
from inference_assets.core.reporting.thumbnails import png_data_uri
from inference_assets.core.storage.results import (
    STATUS_PREDICTED,
    read_class_names,
    read_results,
    stored_probabilities,
)
from inference_assets.core.warehouse.database import (
    Column,
    TableDescription,
    has_table,
    one_transaction,
    replace_tables,
    table_columns,
    tables_by_name,
)

BINS = 15  # reliability bins over (0, 1], as in Guo et al.
MIN_FIT_IMAGES = 20  # fewer labelled images than this: no temperature is fitted
PROBABILITY_FLOOR = 1e-12  # probabilities are clipped to this before their log (a stored 0 would be -inf)
TEMPERATURE_RANGE = (0.01, 100.0)  # the search interval for T
_CHUNK = 2048  # rows per float64 block (16 MiB at 1000 classes): a large (N, C) array is never copied whole

_MODEL = "The configured model name (model_predictions.model_name)."
_IMAGES = "Labelled images whose label is one of the model's classes (the evaluated images)."

# The tables store_calibration() makes; a test checks them against the real tables (duckdb_columns()).
CALIBRATION_TABLES: dict[str, TableDescription] = tables_by_name(
    TableDescription(
        "calibration_summary",
        "One row per model: how well its top-1 confidence matches its accuracy on the labelled images, "
        "before and after temperature scaling.",
        (
            Column("model_name", "VARCHAR", _MODEL),
            Column("images", "BIGINT", _IMAGES),
            Column("ece", "DOUBLE", f"Expected calibration error of the stored probabilities ({BINS} equal-width "
                   "bins): sum of |accuracy - confidence| * bin images / images. Null when no image was evaluated."),
            Column("temperature", "DOUBLE", "The fitted temperature T (logits / T) minimizing the labels' negative "
                   "log-likelihood; > 1 softens an over-confident model. Null when none was fitted (see note)."),
            Column("ece_after_scaling", "DOUBLE", "Expected calibration error after temperature scaling; null "
                   "without a temperature."),
            Column("nll", "DOUBLE", "Mean negative log-likelihood of the labels under the stored probabilities."),
            Column("nll_after_scaling", "DOUBLE", "Mean negative log-likelihood after temperature scaling; null "
                   "without a temperature."),
            Column("note", "VARCHAR", "Why no temperature was fitted, or why it is unreliable; null otherwise."),
            Column("accuracy", "DOUBLE", "Top-1 accuracy over the evaluated images."),
            Column("confidence", "DOUBLE", "Mean top-1 confidence over the evaluated images."),
            Column("ece_held_out", "DOUBLE", "Expected calibration error after temperature scaling, held out: the "
                   "labelled images split in two halves by image id, each half scaled by a temperature fitted on "
                   "the other. Null without a temperature or with a half under "
                   f"{MIN_FIT_IMAGES // 2} images."),
            Column("nll_held_out", "DOUBLE", "Mean negative log-likelihood after temperature scaling, held out as "
                   "ece_held_out."),
        ),
    ),
    TableDescription(
        "calibration_bins",
        "The reliability diagram: per model, equal-width top-1 confidence bins over (0, 1], each with its "
        "images, mean confidence and accuracy, before and after temperature scaling.",
        (
            Column("model_name", "VARCHAR", _MODEL),
            Column("scaled", "BOOLEAN", "Whether the bin is of the temperature-scaled probabilities."),
            Column("lower", "DOUBLE", "The bin's lower confidence bound (exclusive)."),
            Column("upper", "DOUBLE", "The bin's upper confidence bound (inclusive)."),
            Column("images", "BIGINT", "Evaluated images whose top-1 confidence falls in the bin."),
            Column("confidence", "DOUBLE", "Their mean top-1 confidence; null for an empty bin."),
            Column("accuracy", "DOUBLE", "The fraction of them whose top-1 class is the label; null for an empty bin."),
        ),
    ),
    TableDescription(
        "calibrated_predictions",
        "With temperature scaling: every predicted image of each model with a fitted temperature, its stored "
        "top-1 confidence and the rescaled one (the class never changes; empty without temperature scaling).",
        (
            Column("model_name", "VARCHAR", _MODEL, nullable=False),
            Column("image_id", "VARCHAR", "The image (images.image_id).", nullable=False),
            Column("temperature", "DOUBLE", "The model's fitted temperature T.", nullable=False),
            Column("class_label", "VARCHAR", "The top-1 class (unchanged by scaling)."),
            Column("confidence", "FLOAT", "The stored top-1 probability."),
            Column("calibrated_confidence", "FLOAT", "The top-1 probability of softmax(log p / T)."),
        ),
    ),
)


@dataclass(frozen=True)
class Bin:
    """One reliability bin: the images whose top-1 confidence is in (lower, upper]."""

    lower: float
    upper: float
    images: int
    confidence: float | None  # mean top-1 confidence; None when the bin is empty
    accuracy: float | None  # fraction correct; None when the bin is empty


@dataclass
class Calibration:
    """One model's calibration on its evaluated (labelled, known-label) images."""

    images: int
    ece_before: float | None  # None when no image was evaluated
    temperature: float | None = None  # None when not fitted: ``note`` says why
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    bins_before: list[Bin] = field(default_factory=list)
    bins_after: list[Bin] = field(default_factory=list)
    accuracy: float | None = None  # top-1 accuracy over the evaluated images
    confidence: float | None = None  # mean top-1 confidence over them
    note: str | None = None
    ece_held_out: float | None = None  # after scaling, each half scaled by the other half's temperature
    nll_held_out: float | None = None


def label_targets(labels: Sequence[str | None], class_names: Sequence[str]) -> np.ndarray:
    """Each label's class index (int64), -1 when the label is missing or matches none of the classes.

    A label matches a class as in :mod:`.evaluation` (``truth_names(label) & synonyms(class_name)``:
    spelling variants, comma-separated synonyms, ImageNet WordNet ids); a label matching several
    classes (ImageNet's two "crane"s) gets the first. Each distinct label is resolved once."""
    first: dict[str, int] = {}
    for index, name in enumerate(class_names):
        for synonym in synonyms(name):
            first.setdefault(synonym, index)
    resolved: dict[str, int] = {}
    targets = np.full(len(labels), -1, dtype=np.int64)
    for row, label in enumerate(labels):
        if label is None:
            continue
        if label not in resolved:
            matches = [first[name] for name in truth_names(label) if name in first]
            resolved[label] = min(matches) if matches else -1
        targets[row] = resolved[label]
    return targets


def _edges(bins: int) -> np.ndarray:
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    return np.linspace(0.0, 1.0, bins + 1)


def _bin_index(confidences: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 goes to the first bin."""
    return np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, len(edges) - 2)


def _checked(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    confidences = np.asarray(confidences, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if confidences.shape != correct.shape:
        raise ValueError(f"{confidences.size} confidences but {correct.size} correctness values")
    return confidences, correct


def reliability_bins(confidences, correct, bins: int = BINS) -> list[Bin]:
    """The reliability diagram's ``bins`` equal-width bins over (0, 1], empty ones included."""
    confidences, correct = _checked(confidences, correct)
    edges = _edges(bins)
    index = _bin_index(confidences, edges)
    counts = np.bincount(index, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidences, minlength=bins)
    correct_sums = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    return [
        Bin(
            lower=float(edges[i]),
            upper=float(edges[i + 1]),
            images=int(counts[i]),
            confidence=float(confidence_sums[i] / counts[i]) if counts[i] else None,
            accuracy=float(correct_sums[i] / counts[i]) if counts[i] else None,
        )
        for i in range(bins)
    ]


def expected_calibration_error(confidences, correct, bins: int = BINS) -> float:
    """ECE: sum over the bins of |accuracy - mean confidence| * bin images / images (0 for no images)."""
    confidences, correct = _checked(confidences, correct)
    if not confidences.size:
        return 0.0
    return sum(
        abs(b.accuracy - b.confidence) * b.images for b in reliability_bins(confidences, correct, bins) if b.images
    ) / confidences.size


def _log(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, None))


def _log_rows(probabilities: np.ndarray) -> np.ndarray:
    """``log p`` (clipped at :data:`PROBABILITY_FLOOR`) computed a block of rows at a time, in the
    probabilities' own precision: float32 for those of result files (4 bytes a probability, however
    many labelled images there are), float64 for float64 ones."""
    out = np.empty(probabilities.shape, dtype=np.result_type(probabilities.dtype, np.float32))
    for start in range(0, len(probabilities), _CHUNK):
        out[start:start + _CHUNK] = _log(probabilities[start:start + _CHUNK])
    return out


def _scaled_top1(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """The top-1 probability of softmax(log_probs / T) per row (float64), a block of rows at a time:
    the largest scaled logit's share, 1 / sum(exp((z - max z) / T))."""
    out = np.empty(len(log_probs))
    for start in range(0, len(log_probs), _CHUNK):
        z = np.asarray(log_probs[start:start + _CHUNK], dtype=np.float64) / temperature
        out[start:start + _CHUNK] = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
    return out


def _checked_targets(log_probs: np.ndarray, targets) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if log_probs.ndim != 2 or log_probs.shape[0] != targets.size:
        raise ValueError(f"expected (N, C) log-probabilities for {targets.size} targets, got shape {log_probs.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= log_probs.shape[1]):
        raise ValueError(f"targets must be class indices in [0, {log_probs.shape[1]}): leave unlabelled images out")
    return targets


def _nll(log_probs: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean -log softmax(log_probs / T)[target], a block of rows at a time."""
    total = 0.0
    for start in range(0, len(targets), _CHUNK):
        z = np.asarray(log_probs[start:start + _CHUNK], dtype=np.float64) / temperature
        top = z.max(axis=1)
        log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        total += float((log_norm - z[np.arange(len(z)), targets[start:start + _CHUNK]]).sum())
    return total / len(targets)


def fit_temperature(log_probs: np.ndarray, targets: np.ndarray, tolerance: float = 1e-5) -> float:
    """The temperature T in :data:`TEMPERATURE_RANGE` minimizing the mean NLL of softmax(log_probs / T)
    on ``targets`` (class indices, all >= 0).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search on log T finds its
    minimum to ``tolerance`` (in log T) without derivatives. An optimum outside the range ends at
    its bound (all predictions right and confident: T -> 0; all wrong: T -> infinity)."""
    log_probs = np.asarray(log_probs)
    targets = _checked_targets(log_probs, targets)
    if not targets.size:
        raise ValueError("no labelled images to fit a temperature on")
    a, b = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return _nll(log_probs, targets, math.exp(log_t))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    # the bounds themselves are candidates too (a monotone loss ends there)
    candidates = [(fc, c), (fd, d), (loss(a), a), (loss(b), b)]
    return math.exp(min(candidates)[1])


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probabilities) / T) row by row (float64; each row sums to 1)."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    z = _log(probabilities) / temperature
    z -= z.max(axis=-1, keepdims=True)
    scaled = np.exp(z)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def calibrated_confidences(probabilities: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class index, its temperature-scaled probability) per row of an (N, C) array: the class is
    the stored top-1 (scaling never reorders classes); only the confidence changes. Computed a block of
    rows at a time, with no float64 copy of float32 probabilities."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    return probabilities.argmax(axis=-1), _scaled_top1(_log_rows(probabilities), temperature)


def halves(image_ids: Sequence[str]) -> np.ndarray:
    """Each image's half (0 or 1) for the held-out measure: a bit of a hash of its id, so an image keeps
    its half whatever the order of the rows and however many images join."""
    return np.array([hashlib.blake2b(i.encode(), digest_size=1).digest()[0] & 1 for i in image_ids], dtype=np.int8)


def _held_out(log_probs: np.ndarray, targets: np.ndarray, correct: np.ndarray, half: np.ndarray,
              bins: int) -> tuple[float, float] | None:
    """(ECE, NLL) of each half scaled by the temperature fitted on the other half; None when a half has
    fewer than ``MIN_FIT_IMAGES // 2`` images."""
    if min(int((half == h).sum()) for h in (0, 1)) < MIN_FIT_IMAGES // 2:
        return None
    confidence = np.empty(len(targets))
    nll = 0.0
    for h in (0, 1):
        fit_on, apply_to = half != h, half == h
        temperature = fit_temperature(log_probs[fit_on], targets[fit_on])
        confidence[apply_to] = _scaled_top1(log_probs[apply_to], temperature)
        nll += _nll(log_probs[apply_to], targets[apply_to], temperature) * int(apply_to.sum())
    return expected_calibration_error(confidence, correct, bins), nll / len(targets)


def calibrate(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS, fit: bool = True,
              half: np.ndarray | None = None) -> Calibration:
    """The calibration of one model on the rows whose target is a class (>= 0; -1 rows are left out):
    ECE, NLL and reliability bins of the stored probabilities and, when ``fit`` and at least
    :data:`MIN_FIT_IMAGES` rows, a fitted temperature, the same after scaling, and after scaling held
    out: each row's ``half`` (0 or 1, :func:`halves`; alternate rows when None) scaled by a temperature
    fitted on the other half.

    Memory: besides ``probabilities`` (kept as given, float32 from result files), their log (float32 too)
    and a half of it while fitting, plus fixed-size blocks: no float64 copy of the whole array."""
    probabilities = np.asarray(probabilities)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[0] != targets.size:
        raise ValueError(f"expected (N, C) probabilities for {targets.size} targets, got shape {probabilities.shape}")
    half = np.arange(targets.size) % 2 if half is None else np.asarray(half).reshape(-1)
    if half.size != targets.size:
        raise ValueError(f"{half.size} halves for {targets.size} targets")
    known = targets >= 0
    if not known.all():
        probabilities, targets, half = probabilities[known], targets[known], half[known]
    if not targets.size:
        return Calibration(images=0, ece_before=None, note="no labelled image has a label among the model's classes")
    _checked_targets(probabilities, targets)
    log_probs = _log_rows(probabilities)
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = probabilities.argmax(axis=1) == targets
    result = Calibration(
        images=int(targets.size),
        ece_before=expected_calibration_error(confidence, correct, bins),
        nll_before=_nll(log_probs, targets, 1.0),
        bins_before=reliability_bins(confidence, correct, bins),
        accuracy=float(correct.mean()),
        confidence=float(confidence.mean()),
    )
    if not fit:
        result.note = "temperature scaling not requested"
        return result
    if targets.size < MIN_FIT_IMAGES:
        result.note = (f"only {targets.size} labelled images: a temperature is fitted from {MIN_FIT_IMAGES} "
                       "labelled images up")
        return result
    temperature = fit_temperature(log_probs, targets)
    scaled_confidence = _scaled_top1(log_probs, temperature)
    result.temperature = temperature
    result.ece_after = expected_calibration_error(scaled_confidence, correct, bins)
    result.nll_after = _nll(log_probs, targets, temperature)
    result.bins_after = reliability_bins(scaled_confidence, correct, bins)
    held_out = _held_out(log_probs, targets, correct, half, bins)
    if held_out is not None:
        result.ece_held_out, result.nll_held_out = held_out
    low, high = TEMPERATURE_RANGE
    if math.isclose(temperature, low, rel_tol=1e-3) or math.isclose(temperature, high, rel_tol=1e-3):
        result.note = (f"the temperature reached the end of its search range ({low:g} to {high:g}): the labelled "
                       "images are too few or too uniform (all right or all wrong) to fit it reliably")
    return result


def store_calibration(conn: duckdb.DuckDBPyConnection, results: dict[str, Calibration]) -> None:
    """Replace ``calibration_summary`` and ``calibration_bins`` with ``results`` (model name -> its
    calibration), together in one transaction."""
    names = list(results)
    summary = {
        "model_name": pa.array(names, pa.string()),  # typed even when empty
        "images": pa.array([results[n].images for n in names], pa.int64()),
        "ece": pa.array([results[n].ece_before for n in names], pa.float64()),
        "temperature": pa.array([results[n].temperature for n in names], pa.float64()),
        "ece_after_scaling": pa.array([results[n].ece_after for n in names], pa.float64()),
        "nll": pa.array([results[n].nll_before for n in names], pa.float64()),
        "nll_after_scaling": pa.array([results[n].nll_after for n in names], pa.float64()),
        "note": pa.array([results[n].note for n in names], pa.string()),
        "accuracy": pa.array([results[n].accuracy for n in names], pa.float64()),
        "confidence": pa.array([results[n].confidence for n in names], pa.float64()),
        "ece_held_out": pa.array([results[n].ece_held_out for n in names], pa.float64()),
        "nll_held_out": pa.array([results[n].nll_held_out for n in names], pa.float64()),
    }
    rows = [(name, scaled, b) for name in names
            for scaled, bins in ((False, results[name].bins_before), (True, results[name].bins_after)) for b in bins]
    bins = {
        "model_name": pa.array([name for name, _, _ in rows], pa.string()),
        "scaled": pa.array([scaled for _, scaled, _ in rows], pa.bool_()),
        "lower": pa.array([b.lower for _, _, b in rows], pa.float64()),
        "upper": pa.array([b.upper for _, _, b in rows], pa.float64()),
        "images": pa.array([b.images for _, _, b in rows], pa.int64()),
        "confidence": pa.array([b.confidence for _, _, b in rows], pa.float64()),
        "accuracy": pa.array([b.accuracy for _, _, b in rows], pa.float64()),
    }
    replace_tables(conn, {"calibration_summary": pa.table(summary), "calibration_bins": pa.table(bins)})


def _number(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def _model_order(conn: duckdb.DuckDBPyConnection, names: list[str]) -> list[str]:
    """``names`` in configuration order (the ``models`` table's position) where that table exists."""
    if not has_table(conn, "models"):
        return names
    position = dict(conn.execute("SELECT model_name, position FROM models").fetchall())
    return sorted(names, key=lambda name: (position.get(name, len(position)), names.index(name)))


def calibration_html(conn: duckdb.DuckDBPyConnection, results: dict[str, Calibration]) -> str:
    """The report's calibration section: per model, ECE and NLL before and after temperature scaling,
    the temperature, and its reliability diagram (or why charts are missing)."""
    parts = [
        '<h2>Calibration</h2><div id="calibration">',
        f"<p>How well each model's top-1 confidence matches its accuracy on the labelled images: the expected "
        f"calibration error (ECE) is the gap between confidence and accuracy over {BINS} equal-width confidence "
        "bins, weighted by their images (0 is perfectly calibrated). Temperature scaling divides the logits by "
        "one number T, fitted on the labelled images to minimize the negative log-likelihood of their labels "
        "(T &gt; 1: the model was over-confident). It never changes the predicted class, and it is applied to "
        "the stored probabilities only in the calibrated columns: the stored probabilities are never replaced. "
        "Held out: the labelled images split in two halves by image id, each scaled by the temperature fitted "
        "on the other; close to the ECE after scaling, the temperature generalizes.</p>",
    ]
    if not results:
        parts.append("<p>No model has labelled images whose labels are among its classes.</p></div>")
        return "\n".join(parts)
    drawable = charts.available()
    for name in _model_order(conn, list(results)):
        c = results[name]
        parts.append(f"<h3>{_e(name)}</h3>")
        parts.append("<table><tr><th></th><th>stored probabilities</th><th>after temperature scaling</th></tr>")
        rows = [("images", _e(c.images), _e(c.images)),
                ("ECE", _number(c.ece_before, ".3f"), _number(c.ece_after, ".3f")),
                ("NLL", _number(c.nll_before, ".3f"), _number(c.nll_after, ".3f")),
                ("temperature T", "1", _number(c.temperature, ".3f")),
                ("ECE held out (T of the other half)", "—", _number(c.ece_held_out, ".3f")),
                ("NLL held out (T of the other half)", "—", _number(c.nll_held_out, ".3f"))]
        parts += [f"<tr><td>{what}</td><td>{before}</td><td>{after}</td></tr>" for what, before, after in rows]
        parts.append("</table>")
        if c.accuracy is not None and c.confidence is not None:
            parts.append(f"<p>Top-1 accuracy {c.accuracy:.1%}, mean top-1 confidence {c.confidence:.1%}.</p>")
        if c.note:
            parts.append(f"<p>{_e(c.note)}.</p>")
        if not c.images:
            continue
        if drawable:
            png = charts.reliability_diagram_png(c.bins_before, f"Reliability: {name}", scaled=c.bins_after or None)
            parts.append(f'<img id="reliability-{_e(name)}" src="{png_data_uri(png)}" '
                         f'alt="{_e(f"reliability diagram of {name}")}">')
        else:
            parts.append(f"<p>{_e(charts.MISSING)}</p>")
    parts.append("</div>")
    return "\n".join(parts)


def _probabilities(table: pa.Table, path: Path, rows: list[int] | None = None) -> np.ndarray:
    """The stored probabilities of a result file's ``rows`` (or all), as (N, classes) float32."""
    probabilities = stored_probabilities(table.column("probabilities"), rows)
    if probabilities is None:
        raise ValueError(f"{path} was written without every class's probability (an earlier version): "
                         "materialize its model's prediction_files again with force to calibrate it")
    return probabilities


def _labelled_probabilities(files: Sequence[Path], labels: dict[str, str]) -> tuple[np.ndarray, list[str], list[str]]:
    """The stored probabilities of the predicted images that carry a label, their labels and their image
    ids, from a model's result files (only those rows are kept in memory)."""
    blocks, kept, kept_ids = [], [], []
    for path in files:
        table = read_results(path).select(["image_id", "status", "probabilities"])
        ids = table.column("image_id").to_pylist()
        status = table.column("status").to_pylist()
        rows = [i for i, (image_id, s) in enumerate(zip(ids, status)) if s == STATUS_PREDICTED and image_id in labels]
        if not rows:
            continue
        blocks.append(_probabilities(table, path, rows))
        kept += [labels[ids[i]] for i in rows]
        kept_ids += [ids[i] for i in rows]
    return (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)), kept, kept_ids


def calibrate_result_files(files: Sequence[Path], labels: dict[str, str], fit: bool = True,
                           bins: int = BINS) -> Calibration:
    """One model's calibration from its result files, on the images of ``labels`` (image id -> label)
    whose label is one of its classes."""
    if not files:
        return Calibration(images=0, ece_before=None, note="no predictions loaded")
    probabilities, kept, ids = _labelled_probabilities(files, labels)
    class_names = read_class_names(files[0]) or []
    if not kept:
        return Calibration(images=0, ece_before=None, note="no predicted image carries a label")
    return calibrate(probabilities, label_targets(kept, class_names), bins=bins, fit=fit, half=halves(ids))


def calibrated_rows(files: Sequence[Path], temperature: float) -> pa.Table:
    """Every predicted image of a model's result files with its stored top-1 confidence and the one
    after temperature scaling (the class never changes), one partition file at a time."""
    parts = []
    for path in files:
        table = read_results(path).filter(pc.equal(pc.field("status"), STATUS_PREDICTED))
        if not table.num_rows:
            continue
        _, confidence = calibrated_confidences(_probabilities(table, path), temperature)
        parts.append(pa.table({
            "image_id": table.column("image_id"),
            "class_label": table.column("class_label"),
            "confidence": table.column("confidence"),
            "calibrated_confidence": pa.array(confidence, pa.float32()),
        }))
    schema = pa.schema([("image_id", pa.string()), ("class_label", pa.string()), ("confidence", pa.float32()),
                        ("calibrated_confidence", pa.float32())])
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def store_calibrated_predictions(conn: duckdb.DuckDBPyConnection, rows: dict[str, tuple[float, pa.Table]]) -> int:
    """Replace ``calibrated_predictions`` with each model's (temperature, calibrated_rows); returns its rows."""
    with one_transaction(conn):
        conn.execute("CREATE OR REPLACE TABLE calibrated_predictions (model_name VARCHAR NOT NULL, image_id VARCHAR "
                     "NOT NULL, temperature DOUBLE NOT NULL, class_label VARCHAR, confidence FLOAT, "
                     "calibrated_confidence FLOAT, PRIMARY KEY (model_name, image_id))")
        for name, (temperature, table) in rows.items():
            conn.register("_calibrated_rows", table)
            conn.execute("INSERT INTO calibrated_predictions SELECT ?, image_id, ?, class_label, confidence, "
                         "calibrated_confidence FROM _calibrated_rows", [name, temperature])
            conn.unregister("_calibrated_rows")
    return conn.execute("SELECT count(*) FROM calibrated_predictions").fetchone()[0]


def stored_calibrations(conn: duckdb.DuckDBPyConnection) -> dict[str, Calibration]:
    """The calibrations ``store_calibration`` stored, by model name (empty before the first)."""
    if not has_table(conn, "calibration_summary"):
        return {}
    results = {}
    # a table from before the held-out columns (calibration not materialized since the upgrade) reads as null
    present = {c.name for c in table_columns(conn, "calibration_summary")}
    held_out = ", ".join(name if name in present else f"NULL AS {name}" for name in ("ece_held_out", "nll_held_out"))
    for (name, images, ece, temperature, ece_after, nll, nll_after, note, accuracy, confidence, ece_held_out,
         nll_held_out) in conn.execute(
        "SELECT model_name, images, ece, temperature, ece_after_scaling, nll, nll_after_scaling, note, accuracy, "
        f"confidence, {held_out} FROM calibration_summary"
    ).fetchall():
        bins = conn.execute("SELECT scaled, lower, upper, images, confidence, accuracy FROM calibration_bins "
                            "WHERE model_name = ? ORDER BY scaled, lower", [name]).fetchall()
        results[name] = Calibration(
            images=images, ece_before=ece, temperature=temperature, ece_after=ece_after, nll_before=nll,
            nll_after=nll_after, bins_before=[Bin(*b[1:]) for b in bins if not b[0]],
            bins_after=[Bin(*b[1:]) for b in bins if b[0]], accuracy=accuracy, confidence=confidence, note=note,
            ece_held_out=ece_held_out, nll_held_out=nll_held_out,
        )
    return results
