"""Ensembles: a partition's predictions as the (weighted) mean of its members' stored probabilities.

No forward pass: each member's result file keeps every class's probability, so an ensemble of
models already run costs a read and a mean. An image counts when every member predicted it from
the same bytes (same content hash); an image any member failed on, or has not predicted yet, is
a failure row of the ensemble naming that member. Members must share their class names, in order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.results import (
    STATUS_PREDICTED,
    ResultFileWriter,
    read_class_names,
    read_results,
    stored_probabilities,
)

RUNTIME = "ensemble of stored probabilities"


@dataclass(frozen=True)
class Member:
    name: str
    weight: float
    results: Path  # the member's result file for the partition


@dataclass(frozen=True)
class EnsembleSummary:
    images: int
    predicted: int
    failed: int
    seconds: float


def ensemble_identity(members: list[tuple[str, str, float]]) -> str:
    """What an ensemble's predictions depend on: each member's name, results identity (its slug) and weight."""
    return hashlib.sha256(json.dumps(sorted(members)).encode()).hexdigest()


def _member_rows(member: Member, partition: str) -> tuple[pa.Table, list[str]]:
    if not member.results.exists():
        raise ConfigError(f"ensemble member {member.name!r} has no predictions for {partition} "
                          f"({member.results} is missing): materialize its prediction_files for {partition} first")
    return read_results(member.results), read_class_names(member.results) or []


def predict_ensemble_partition(
    members: list[Member], output: Path, partition: str, description: str, identity: str, top_k: int = 5
) -> EnsembleSummary:
    """Write the ensemble's result file for ``partition`` (atomically) from its members' result files."""
    start = time.perf_counter()
    tables, class_names = [], None
    for member in members:
        table, names = _member_rows(member, partition)
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise ConfigError(f"ensemble members {members[0].name!r} and {member.name!r} have different class names "
                              f"({len(class_names)} and {len(names)} classes): an ensemble's members must share "
                              "their classes, in order; fix the ensemble's members in models")
        tables.append(table)
    weights = np.array([m.weight for m in members], dtype=np.float64)
    weights = weights / weights.sum()
    # every image of any member, once, in the first member's order and then the others': an image the
    # first member has not predicted yet is a failure row too, not left out of the ensemble's file
    first: dict[str, list] = {"image_id": [], "uri": [], "content_hash": []}
    seen: set[str] = set()
    for table in tables:
        columns = table.select(["image_id", "uri", "content_hash"]).to_pydict()
        for image_id, uri, content_hash in zip(columns["image_id"], columns["uri"], columns["content_hash"]):
            if image_id not in seen:
                seen.add(image_id)
                first["image_id"].append(image_id)
                first["uri"].append(uri)
                first["content_hash"].append(content_hash)
    rows_of = [
        {(i, h): r for r, (i, h, s) in enumerate(zip(
            t.column("image_id").to_pylist(), t.column("content_hash").to_pylist(), t.column("status").to_pylist()))}
        for t in tables
    ]
    status_of = [t.column("status").to_pylist() for t in tables]
    errors_of = [(t.column("stage").to_pylist(), t.column("error").to_pylist()) for t in tables]
    outcomes: list[tuple[int, list[int] | None, tuple[str, str] | None]] = []  # (row, member rows, failure)
    for row, key in enumerate(zip(first["image_id"], first["content_hash"])):
        rows = [found.get(key) for found in rows_of]
        reason = None
        for member, r, statuses, (stages, errors) in zip(members, rows, status_of, errors_of):
            if r is None:
                reason = ("ensemble", f"member {member.name!r} has no prediction for this image (its partition's "
                          "predictions are older than the image): materialize its prediction_files again")
            elif statuses[r] != STATUS_PREDICTED:
                reason = (stages[r] or "predict", f"member {member.name!r}: {errors[r]}")
            if reason:
                break
        outcomes.append((row, None, reason) if reason else (row, rows, None))
    k = min(top_k, len(class_names or [])) or 1
    writer = ResultFileWriter(output, partition=partition, model=description, weights="stored probabilities",
                              device="cpu", precision="fp32", top_k=k, pixels="", identity=identity,
                              class_names=class_names or [], runtime=RUNTIME)
    with writer:
        # rows in image order: each run of failed or predicted images in turn, at most 256 images'
        # probabilities at a time (bounded memory)
        for failed_run, run in itertools.groupby(outcomes, key=lambda outcome: outcome[2] is not None):
            run = list(run)
            if failed_run:
                writer.write_failures(
                    [first["image_id"][r] for r, _, _ in run], [first["uri"][r] for r, _, _ in run],
                    [first["content_hash"][r] for r, _, _ in run], [f[0] for _, _, f in run],
                    [f[1] for _, _, f in run],
                )
                continue
            for chunk in range(0, len(run), 256):
                part = run[chunk:chunk + 256]
                mean = None
                for m, (table, weight) in enumerate(zip(tables, weights)):
                    probs = _probabilities(table, [rows[m] for _, rows, _ in part], members[m].name, partition)
                    mean = probs * weight if mean is None else mean + probs * weight
                mean = mean.astype(np.float32)
                indices = np.argsort(-mean, axis=1, kind="stable")[:, :k]
                writer.write_predictions(
                    [first["image_id"][r] for r, _, _ in part], [first["uri"][r] for r, _, _ in part],
                    [first["content_hash"][r] for r, _, _ in part], indices,
                    np.take_along_axis(mean, indices, axis=1), class_names, probabilities=mean,
                )
    return EnsembleSummary(len(first["image_id"]), writer.predicted, writer.failed, time.perf_counter() - start)


def _probabilities(table: pa.Table, rows: list[int], member: str, partition: str) -> np.ndarray:
    probabilities = stored_probabilities(table.column("probabilities"), rows)
    if probabilities is None:
        raise ConfigError(f"ensemble member {member!r}'s predictions for {partition} were written without every "
                          "class's probability (an earlier version): materialize its prediction_files for "
                          f"{partition} again with force")
    return probabilities.astype(np.float64)
