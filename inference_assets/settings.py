"""The deployment's settings: one typed :class:`Settings`, read from the environment in one place.

:meth:`Settings.from_environment` reads every ``INFERENCE_*`` variable below, checks it and
returns a frozen object; a bad value is a one-line ConfigError naming the variable, its value and
what it accepts. The code location reads it once, when it loads (:data:`SETTINGS`), and hands it
to the resources (``definitions.py``), the partitions, the sensor, the schedule and the quality
gate; ``make run`` reads it again when it starts. The core never reads the environment: it takes
values, and names a wrong one by its setting (``image_root``), which the Dagster layer turns into
the variable and the resource field (:func:`for_deployment`: ``INFERENCE_IMAGE_ROOT (source.image_root)``).

- ``INFERENCE_IMAGE_ROOT``: folder of images, or a bucket URI such as ``s3://bucket/prefix``
  (default ``data/images`` in the project). S3 credentials and endpoint: the usual ``AWS_*``
  variables (``AWS_ENDPOINT_URL`` for an S3-compatible server).
- ``INFERENCE_IMAGE_TABLE``: a Parquet/CSV file of image locations (``uri``, optional ``id``,
  ``label``) instead of a folder.
- ``INFERENCE_DATABASE_URL`` + ``INFERENCE_IMAGE_QUERY``: a SQLAlchemy URL and a query returning
  ``id`` and ``image`` (bytes) or ``uri``, optionally ``label``, instead of a folder.
- ``INFERENCE_ALWAYS_REHASH``: ``1`` reads and hashes every image on each manifest build instead of
  trusting unchanged size + mtime + inode + ctime (local files) or size + mtime (objects).
- ``INFERENCE_WORK_DIR``: manifest, pixels and per-partition results (default ``data/work``).
- ``INFERENCE_DUCKDB_PATH``: the results database (default ``data/warehouse.duckdb``).
- ``INFERENCE_SLOT_WAIT_SECONDS``: how long a ``make run`` step waits for a pool slot held by
  another run before giving up (default 600; see ``instance_guard.py``).
- ``INFERENCE_DEVICE``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default ``auto``).
- ``INFERENCE_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` (default ``fp32``).
- ``INFERENCE_RUNTIME``: ``auto`` (default), ``torch``, ``openvino``, ``onnxruntime`` or ``openvino-int8`` (opt-in,
  approximate): what runs a
  PyTorch model's forward pass on the CPU (``core/models/converted_models.py``); ``auto`` takes the fastest
  runtime that matches PyTorch, else PyTorch.
- ``INFERENCE_CONVERTED_DIR``: where converted networks are cached (default ``<work dir>/converted``); one
  folder shared by several work folders converts each model once for all of them.
- ``INFERENCE_MODEL`` / ``INFERENCE_WEIGHTS``: architecture and weights (default the bundled
  EfficientNet-Lite0), or a model file or folder as ``INFERENCE_MODEL``;
  ``INFERENCE_CLASS_NAMES`` / ``INFERENCE_MODEL_CARD``: a class names file and a model card.
- ``INFERENCE_MODELS``: more models run beside that one over the same images, compared with it, and
  ensembles of them: ``lite1=tf_efficientnet_lite1,lite2=tf_efficientnet_lite2`` or a YAML/JSON file
  (``core/models/model_list.py``); each gets its own ``<name>/prediction_files`` asset.
- ``INFERENCE_PARTITIONS``: number of shards (default 16; see ``partitions.py``);
  ``INFERENCE_PARTITIONS_PER_RUN``: 0 (default) runs a backfill as one run, N as runs of N.
- ``INFERENCE_SHARED_DIR``: a shared location (``s3://bucket/prefix``) mirroring the work folder,
  for steps on different machines.
- ``INFERENCE_DECODE_WORKERS``: decoding threads (default one per core; set it in containers).
- ``INFERENCE_EXECUTOR``: ``multiprocess`` (default) or ``k8s`` (a Kubernetes Job per step).
- ``INFERENCE_GPU_LOCK_DIR``: where concurrent steps lock GPUs (see ``core/inference/gpu_assignment.py``).
- ``INFERENCE_MAX_FAILURE_RATE`` / ``INFERENCE_MIN_TOP1`` / ``INFERENCE_MAX_CLASS_SHARE``: the
  quality gates, numbers from 0 to 1 (defaults 1, 0, 1: off): the blocking checks that fail a run
  when more images failed, top-1 on labelled images is lower, or one class takes a larger share of
  the predictions (see ``warehouse/checks.py``; ``make ci`` sets the failure rate to 0.5 unless set).
- ``INFERENCE_SENSOR_LISTING_SECONDS`` / ``INFERENCE_SENSOR_INTERVAL_SECONDS``: the sensor's
  listing budget per tick (20) and its interval (60); ``INFERENCE_SCHEDULE_CRON`` /
  ``INFERENCE_SCHEDULE_TIMEZONE``: the nightly schedule (``0 2 * * *``, UTC).

Every value can also be changed per run in the Launchpad's resource config.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference_assets.core.collection.partitioning import DEFAULT_NUM_PARTITIONS
from inference_assets.core.errors import ConfigError
from inference_assets.core.inference.gpu_assignment import DEFAULT_LOCK_DIR
from inference_assets.core.models.model_list import ModelList, parse_model_list

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

# --- readers: (variable, raw value or None, default) -> value, or a one-line ConfigError ---------


def _text(name: str, raw: str | None, default: object) -> str | None:
    return raw if raw is not None else (None if default is None else str(default))


def _flag(name: str, raw: str | None, default: bool) -> bool:
    """On for ``1``/``true``/``yes``/``on``, off for ``0``/``false``/``no``/``off`` or unset (any case)."""
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not valid: set it to 1 (on) or 0 (off)")


def _number(minimum: float, kind: type = int, maximum: float | None = None) -> Callable:
    """A whole (``kind=int``) or decimal number of at least ``minimum`` (and at most ``maximum``)."""

    def read(name: str, raw: str | None, default: float) -> float:
        if raw is None:
            return default
        try:
            number = kind(raw)
        except ValueError:
            number = None
        if maximum is not None and (number is None or not minimum <= number <= maximum):
            raise ConfigError(f"{name}={raw!r} is not valid: set it to a number from {minimum:g} to {maximum:g} "
                              f"(default {default})")
        if number is None or not math.isfinite(number) or number < minimum:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(
                f"{name}={raw!r} is not valid: set it to {what} of at least {minimum} (default {default})"
            )
        return number

    return read


_fraction = _number(0, float, maximum=1)


def _cron(name: str, raw: str | None, default: str) -> str:
    from dagster._utils.schedules import is_valid_cron_string

    value = raw if raw is not None else default
    if not is_valid_cron_string(value):
        raise ConfigError(f"{name}={value!r} is not a cron expression: use five fields, e.g. {default!r} (the default)")
    return value


def _timezone(name: str, raw: str | None, default: str) -> str:
    from zoneinfo import ZoneInfo

    value = raw if raw is not None else default
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        raise ConfigError(f"{name}={value!r} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'") from None
    return value


def _model_list(name: str, raw: str | None, default: str) -> str:
    """A model list (``core/models/model_list.py``): inline ``name=model`` pairs or a YAML/JSON file, checked."""
    try:
        parse_model_list(raw)
    except ConfigError as error:
        raise for_deployment(error) from None
    return raw or default


def _one_of(*choices: str) -> Callable:
    def read(name: str, raw: str | None, default: str) -> str:
        value = raw if raw is not None else default
        if value not in choices:
            listed = " or ".join(repr(choice) for choice in choices)
            raise ConfigError(f"{name}={value!r} is not known: use {listed} (default {default!r})")
        return value

    return read


def _from(variable: str, read: Callable = _text, default: object = None, secret: bool = False, resource: str = ""):
    """A setting's field: the variable it comes from, how it is read, its default, and the resource
    field (``key.field``) it configures, if any."""
    return field(default=default, repr=not secret, metadata={"variable": variable, "read": read, "resource": resource})


@dataclass(frozen=True)
class Settings:
    """Every setting of a deployment, typed and checked; the defaults are the project's own.

    ``None`` means "not set": the resource keeps its own default (e.g. the bundled model)."""

    # where images come from
    image_root: str = _from("INFERENCE_IMAGE_ROOT", default=str(DATA_DIR / "images"), resource="source.image_root")
    image_table: str | None = _from("INFERENCE_IMAGE_TABLE", resource="source.image_table")
    database_url: str | None = _from("INFERENCE_DATABASE_URL", secret=True, resource="source.database_url")
    image_query: str | None = _from("INFERENCE_IMAGE_QUERY", resource="source.image_query")
    always_rehash: bool = _from("INFERENCE_ALWAYS_REHASH", _flag, False, resource="source.always_rehash")
    # where files go
    work_dir: str = _from("INFERENCE_WORK_DIR", default=str(DATA_DIR / "work"), resource="work_area.work_dir")
    shared_dir: str | None = _from("INFERENCE_SHARED_DIR", resource="work_area.shared_dir")
    converted_dir: str | None = _from("INFERENCE_CONVERTED_DIR", resource="device.converted_dir")
    duckdb_path: str = _from("INFERENCE_DUCKDB_PATH", default=str(DATA_DIR / "warehouse.duckdb"),
                             resource="duckdb.database")
    # the model and where it runs
    model: str | None = _from("INFERENCE_MODEL", resource="model.name")
    weights: str | None = _from("INFERENCE_WEIGHTS", resource="model.weights")
    class_names: str | None = _from("INFERENCE_CLASS_NAMES", resource="model.class_names")
    model_card: str | None = _from("INFERENCE_MODEL_CARD", resource="model.card")
    models: str = _from("INFERENCE_MODELS", _model_list, "", resource="models.entries")
    device: str = _from("INFERENCE_DEVICE", default="auto", resource="device.device")
    precision: str = _from("INFERENCE_PRECISION", default="fp32", resource="device.precision")
    runtime: str = _from("INFERENCE_RUNTIME", default="auto", resource="device.runtime")
    gpu_lock_dir: str = _from("INFERENCE_GPU_LOCK_DIR", default=DEFAULT_LOCK_DIR, resource="device.gpu_lock_dir")
    # in a container os.cpu_count() is the node's cores, not the pod's limit: set this there
    decode_workers: int = _from("INFERENCE_DECODE_WORKERS", _number(0), 0, resource="preprocessing.decode_workers")
    # how the work is cut and run
    partitions: int = _from("INFERENCE_PARTITIONS", _number(1), DEFAULT_NUM_PARTITIONS)
    partitions_per_run: int = _from("INFERENCE_PARTITIONS_PER_RUN", _number(0), 0)
    executor: str = _from("INFERENCE_EXECUTOR", _one_of("multiprocess", "k8s"), "multiprocess")
    slot_wait_seconds: float = _from("INFERENCE_SLOT_WAIT_SECONDS", _number(0, float), 600)
    # the quality gates
    max_failure_rate: float = _from("INFERENCE_MAX_FAILURE_RATE", _fraction, 1.0,
                                    resource="quality_gate.max_failure_rate")
    min_top1: float = _from("INFERENCE_MIN_TOP1", _fraction, 0.0, resource="quality_gate.min_top1_accuracy")
    max_class_share: float = _from("INFERENCE_MAX_CLASS_SHARE", _fraction, 1.0, resource="quality_gate.max_class_share")
    # automation
    sensor_listing_seconds: float = _from("INFERENCE_SENSOR_LISTING_SECONDS", _number(1, float), 20)
    sensor_interval_seconds: int = _from("INFERENCE_SENSOR_INTERVAL_SECONDS", _number(1), 60)
    schedule_cron: str = _from("INFERENCE_SCHEDULE_CRON", _cron, "0 2 * * *")
    schedule_timezone: str = _from("INFERENCE_SCHEDULE_TIMEZONE", _timezone, "UTC")

    @property
    def model_list(self) -> ModelList:
        """The ``models`` setting read: the models beside the primary one, and the ensembles."""
        return parse_model_list(self.models)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every setting from ``environ`` (default ``os.environ``): unset or blank variables take the
        default; the first bad value is a one-line ConfigError naming its variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            variable, read = spec.metadata["variable"], spec.metadata["read"]
            raw = environ.get(variable, "").strip() or None
            values[spec.name] = read(variable, raw, spec.default)
        return cls(**values)


# The environment variable of each setting, and the resource field (``key.field``) it sets, for messages.
VARIABLES: dict[str, str] = {spec.name: spec.metadata["variable"] for spec in fields(Settings)}
RESOURCE_FIELDS: dict[str, str] = {spec.name: spec.metadata["resource"] for spec in fields(Settings)
                                   if spec.metadata["resource"]}


def deployment_name(setting: str) -> str:
    """How a deployment sets ``setting``: ``INFERENCE_WORK_DIR (work_area.work_dir)``."""
    where = RESOURCE_FIELDS.get(setting)
    return f"{VARIABLES[setting]} ({where})" if where else VARIABLES[setting]


def for_deployment(error: ConfigError) -> ConfigError:
    """``error`` with the settings it names in the core's words (its ``settings``, e.g. ``work_dir``)
    named as a deployment sets them: ``INFERENCE_WORK_DIR (work_area.work_dir)``. The last mention of
    each is the one replaced: the core names a setting in the fix, at the end of its message."""
    message = str(error)
    for setting in getattr(error, "settings", ()):
        if setting not in VARIABLES:
            continue
        mentions = list(re.finditer(rf"(?<![\w'.]){re.escape(setting)}(?![\w'])", message))
        if mentions:
            last = mentions[-1]
            message = message[:last.start()] + deployment_name(setting) + message[last.end():]
    return type(error)(message)


@contextmanager
def variables_named() -> Iterator[None]:
    """Re-raise a ConfigError from inside with the environment variables of the settings it names."""
    try:
        yield
    except ConfigError as error:
        if not getattr(error, "settings", ()):
            raise
        raise for_deployment(error) from None


# The code location's settings, read once when it loads.
SETTINGS = Settings.from_environment()
