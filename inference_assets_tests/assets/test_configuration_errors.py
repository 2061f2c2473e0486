"""Bad configuration fails fast, before any work, with one line naming the problem and the fix."""

import subprocess
import sys

import pytest
import timm
import torch
from dagster import DagsterInstance, materialize

from inference_assets.core.errors import ConfigError
from inference_assets.definitions import ASSET_CHECKS, ASSETS
from inference_assets.resources import DeviceResource, ModelListResource, ModelResource, PreprocessingResource, WarehouseResource
from inference_assets.run import run_pipeline
from inference_assets_tests.conftest import source_resource, work_area_resource
from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env


def _run_fails_with(monkeypatch, tmp_path, **env) -> str:
    monkeypatch.setenv("INFERENCE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INFERENCE_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        run_pipeline()
    message = str(exit_info.value.code)
    assert "\n" not in message
    assert not (tmp_path / "work" / "preprocessed").exists()  # nothing was decoded
    return message


@pytest.mark.fast
def test_missing_source_root(monkeypatch, tmp_path, image_root):
    message = _run_fails_with(monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(tmp_path / "nowhere"))
    assert message == (
        f"configuration error: image source root '{tmp_path / 'nowhere'}' is not a folder: "
        "set INFERENCE_IMAGE_ROOT (source.image_root) to a folder of images or a bucket URI such as s3://bucket/prefix"
    )


@pytest.mark.fast
def test_empty_source_root(monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    message = _run_fails_with(monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(tmp_path / "empty"))
    assert f"no images found in '{tmp_path / 'empty'}'" in message
    assert "point INFERENCE_IMAGE_ROOT (source.image_root), or the image table or query, at images" in message


@pytest.mark.fast
def test_unknown_model(monkeypatch, tmp_path, image_root):
    message = _run_fails_with(
        monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(image_root), INFERENCE_MODEL="efficientnet_b99"
    )
    assert message == (
        "configuration error: unknown model 'efficientnet_b99': use a timm architecture (timm.list_models()), "
        "a torchvision one (torchvision.models.list_models()), or the path of a model file or folder"
    )


@pytest.mark.fast
def test_missing_weights_file(monkeypatch, tmp_path, image_root):
    missing = tmp_path / "weights.pth"
    message = _run_fails_with(monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(image_root), INFERENCE_WEIGHTS=str(missing))
    assert message == (
        f"configuration error: weights file '{missing}' for model 'tf_efficientnet_lite0' not found: "
        "give the path of an existing .pth/.pt/.bin/.safetensors file, or a known weights name"
    )


@pytest.mark.fast
def test_weights_file_for_another_architecture(monkeypatch, tmp_path, image_root):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    message = _run_fails_with(monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(image_root), INFERENCE_WEIGHTS=str(path))
    assert message.startswith(f"configuration error: weights file '{path}' does not match architecture 'tf_efficientnet_lite0'")
    assert message.endswith("use weights saved from that architecture or change the model name")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.fast
def test_cuda_asked_for_but_absent(monkeypatch, tmp_path, image_root):
    message = _run_fails_with(monkeypatch, tmp_path, INFERENCE_IMAGE_ROOT=str(image_root), INFERENCE_DEVICE="cuda:0")
    assert message == (
        "configuration error: device 'cuda:0' asked for but CUDA is not available here: "
        "set INFERENCE_DEVICE (device.device) to cpu (or auto)"
    )


@pytest.mark.fast
def test_duckdb_path_in_a_missing_folder(monkeypatch, tmp_path, image_root):
    database = tmp_path / "no" / "such" / "folder" / "w.duckdb"
    monkeypatch.setenv("INFERENCE_IMAGE_ROOT", str(image_root))
    monkeypatch.setenv("INFERENCE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INFERENCE_DUCKDB_PATH", str(database))
    with pytest.raises(SystemExit) as exit_info:
        run_pipeline()
    assert str(exit_info.value.code) == (
        f"configuration error: DuckDB database '{database}' is in a folder that does not exist "
        f"({database.parent}): create the folder or set INFERENCE_DUCKDB_PATH (duckdb.database) to a path in an existing one"
    )


def _failure_message(result) -> str:
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            if error.cls_name in ("ConfigError", "WeightsUnavailableError"):
                return error.message.split(": ", 1)[1].strip()
            error = error.cause or error.context
    raise AssertionError("no configuration error in the run's events")


@pytest.mark.fast
def test_the_same_errors_stop_dagster_steps_at_resource_setup(image_root, tmp_path):
    """Runs launched from the UI or the CLI (no preflight) fail when the step's resources are set up."""
    resources = {
        "source": source_resource(image_root=str(image_root)),
        "work_area": work_area_resource(tmp_path / "work"),
        "model": ModelResource(name="efficientnet_b99"),
        "models": ModelListResource(),
        "device": DeviceResource(device="cpu"),
        "preprocessing": PreprocessingResource(),
        "duckdb": WarehouseResource(database=str(tmp_path / "missing" / "w.duckdb")),
    }
    with DagsterInstance.ephemeral() as instance:
        assert materialize([*ASSETS, *ASSET_CHECKS], selection=["image_manifest"], resources=resources, instance=instance).success
        result = materialize(
            [*ASSETS, *ASSET_CHECKS],
            selection=["preprocessed_images"],
            partition_key="shard-00",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        assert _failure_message(result).startswith("unknown model 'efficientnet_b99'")
        resources["model"] = ModelResource()
        resources["work_area"] = work_area_resource("/etc/passwd")
        result = materialize(
            [*ASSETS, *ASSET_CHECKS], selection=["image_manifest"], resources=resources, instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        assert _failure_message(result).startswith("work folder '/etc/passwd' is a file")
        resources["work_area"] = work_area_resource(tmp_path / "work")
        result = materialize(
            [*ASSETS, *ASSET_CHECKS], selection=["prediction_results"], resources=resources, instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        assert "is in a folder that does not exist" in _failure_message(result)


# Each kind of setting through a real `make run` (read at import, a resource field, a preflight check);
# every other value through the same parsing function, in process.
BAD_SETTINGS = [
    ("INFERENCE_PARTITIONS", "0", "INFERENCE_PARTITIONS='0' is not valid: set it to a whole number of at least 1 (default 16)"),
    ("INFERENCE_PARTITIONS", "-3", "INFERENCE_PARTITIONS='-3' is not valid: set it to a whole number of at least 1"),
    ("INFERENCE_PARTITIONS", "abc", "INFERENCE_PARTITIONS='abc' is not valid: set it to a whole number of at least 1"),
    ("INFERENCE_PARTITIONS_PER_RUN", "two", "INFERENCE_PARTITIONS_PER_RUN='two' is not valid: set it to a whole number of at least 0"),
    ("INFERENCE_DECODE_WORKERS", "-1", "INFERENCE_DECODE_WORKERS='-1' is not valid: set it to a whole number of at least 0"),
    ("INFERENCE_SENSOR_LISTING_SECONDS", "nan", "INFERENCE_SENSOR_LISTING_SECONDS='nan' is not valid: set it to a number of at least 1"),
    ("INFERENCE_SCHEDULE_CRON", "every night", "INFERENCE_SCHEDULE_CRON='every night' is not a cron expression: use five fields"),
    ("INFERENCE_SCHEDULE_TIMEZONE", "Mars/Olympus", "INFERENCE_SCHEDULE_TIMEZONE='Mars/Olympus' is not a time zone: use an IANA name"),
    ("INFERENCE_ALWAYS_REHASH", "maybe", "INFERENCE_ALWAYS_REHASH='maybe' is not valid: set it to 1 (on) or 0 (off)"),
    ("INFERENCE_SLOT_WAIT_SECONDS", "ten", "INFERENCE_SLOT_WAIT_SECONDS='ten' is not valid: set it to a number of at least 0 (default 600)"),
    ("INFERENCE_PRECISION", "fp8", "INFERENCE_PRECISION='fp8' is not valid: Input should be 'fp32', 'bf16' or 'fp16'"),
    ("INFERENCE_RUNTIME", "tensorrt",
     "INFERENCE_RUNTIME='tensorrt' is not valid: Input should be 'auto', 'torch', 'openvino', 'onnxruntime' or 'openvino-int8'"),
    ("INFERENCE_WORK_DIR", "/etc/passwd", "work folder '/etc/passwd' is a file: set INFERENCE_WORK_DIR (work_area.work_dir)"),
    ("INFERENCE_DUCKDB_PATH", "/tmp", "DuckDB database '/tmp' is a folder: set INFERENCE_DUCKDB_PATH (duckdb.database) to a file path"),
]
THROUGH_MAKE_RUN = {("INFERENCE_PARTITIONS", "abc"), ("INFERENCE_SCHEDULE_TIMEZONE", "Mars/Olympus"),
                    ("INFERENCE_PRECISION", "fp8"), ("INFERENCE_WORK_DIR", "/etc/passwd"),
                    ("INFERENCE_SLOT_WAIT_SECONDS", "ten")}


@pytest.mark.parametrize("name, value, says", [c for c in BAD_SETTINGS if c[:2] in THROUGH_MAKE_RUN])
def test_every_bad_setting_is_one_line(tmp_path, image_root, name, value, says):
    """`make run` with a bad INFERENCE_* number, cron, time zone, choice or path: one line, no traceback,
    no work (numbers, cron and time zone are read when the code location loads)."""
    env = {**pipeline_env(image_root, tmp_path), name: value}
    done = subprocess.run([sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {says}"), lines
    assert not (tmp_path / "work" / "manifest").exists()


def _read_setting(name: str):
    """What reads ``name`` when the code location loads or `make run` starts: the settings (every
    variable), then the resources and their checks (paths)."""
    from inference_assets.definitions import default_resources
    from inference_assets.run import preflight
    from inference_assets.settings import Settings

    preflight(default_resources(Settings.from_environment()))


@pytest.mark.parametrize("name, value, says", [c for c in BAD_SETTINGS if c[:2] not in THROUGH_MAKE_RUN])
def test_every_other_bad_setting_is_the_same_one_line(monkeypatch, name, value, says):
    from inference_assets.core.errors import ConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        _read_setting(name)
    assert str(error.value).startswith(says) and "\n" not in str(error.value)


@pytest.mark.fast
def test_settings_are_read_in_one_place():
    """Only settings.py reads INFERENCE_* variables; every one it reads is documented there and typed."""
    import dataclasses
    import re

    from inference_assets import settings

    reads = []  # lines that read an environment variable other than Dagster's, AWS's or the system's
    for path in sorted((PROJECT_ROOT / "inference_assets").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            read = re.search(r"(os\.environ(\.get)?|os\.getenv)[\[(]\s*([^\])]*)", line)
            if read and path.name != "settings.py" and not re.match(r"\s*[\"'](DAGSTER_|AWS_|HOME|PATH)", read[3]):
                reads.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert reads == [], reads
    variables = list(settings.VARIABLES.values())
    assert len(variables) == len(set(variables)) == len(dataclasses.fields(settings.Settings))
    for variable in variables:
        assert f"``{variable}``" in settings.__doc__, variable
    defaults = settings.Settings.from_environment({})
    assert defaults == settings.Settings()
    assert (defaults.partitions, defaults.executor, defaults.slot_wait_seconds) == (16, "multiprocess", 600)
    custom = settings.Settings.from_environment({"INFERENCE_PARTITIONS": " 4 ", "INFERENCE_MIN_TOP1": "0.75",
                                                 "INFERENCE_ALWAYS_REHASH": "yes", "INFERENCE_MODEL": ""})
    assert (custom.partitions, custom.min_top1, custom.always_rehash, custom.model) == (4, 0.75, True, None)
    with pytest.raises(ConfigError, match="^INFERENCE_MIN_TOP1='1.5' is not valid: set it to a number from 0 to 1"):
        settings.Settings.from_environment({"INFERENCE_MIN_TOP1": "1.5"})
    with pytest.raises(ConfigError, match="^INFERENCE_EXECUTOR='slurm' is not known: use 'multiprocess' or 'k8s'"):
        settings.Settings.from_environment({"INFERENCE_EXECUTOR": "slurm"})
    assert "secret" not in repr(settings.Settings.from_environment({"INFERENCE_DATABASE_URL": "postgresql://u:secret@h/db"}))


@pytest.mark.fast
def test_a_core_error_names_the_setting_and_the_deployment_its_variable():
    from inference_assets.settings import for_deployment

    error = ConfigError("work folder '/x' is a file: set work_dir to a folder", settings=["work_dir"])
    assert str(error) == "work folder '/x' is a file: set work_dir to a folder"
    named = for_deployment(error)
    assert type(named) is ConfigError and "\n" not in str(named)
    assert str(named) == "work folder '/x' is a file: set INFERENCE_WORK_DIR (work_area.work_dir) to a folder"
    # the last mention is the setting: here the first "device" is the thing, the last the setting
    error = ConfigError("device 'cuda:0' asked for but CUDA is not available here: set device to cpu", settings=["device"])
    assert str(for_deployment(error)) == ("device 'cuda:0' asked for but CUDA is not available here: "
                                          "set INFERENCE_DEVICE (device.device) to cpu")
    # a setting without a resource field is named by its variable alone
    assert str(for_deployment(ConfigError("raise partitions", settings=["partitions"]))) == "raise INFERENCE_PARTITIONS"
    assert str(for_deployment(ConfigError("plain"))) == "plain"


@pytest.mark.fast
def test_each_setting_names_the_resource_field_it_sets():
    """The resource field a message names (settings.RESOURCE_FIELDS) is the one default_resources fills,
    and the one docs/configuration.md's table gives for the variable."""
    from inference_assets.definitions import default_resources
    from inference_assets.warehouse.checks import QUALITY_GATE
    from inference_assets.settings import RESOURCE_FIELDS, VARIABLES, Settings

    settings = Settings.from_environment({"INFERENCE_MODEL": "resnet18", "INFERENCE_DECODE_WORKERS": "3",
                                          "INFERENCE_MIN_TOP1": "0"})
    resources = {**default_resources(settings), "quality_gate": QUALITY_GATE}
    table = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    for setting, where in RESOURCE_FIELDS.items():
        key, field = where.split(".")
        assert field in type(resources[key]).model_fields, where
        value = getattr(settings, setting)
        if key != "quality_gate" and setting != "database_url" and value is not None:
            assert getattr(resources[key], field) == value, where
        assert f"| `{VARIABLES[setting]}` | " in table and f"| `{where}`" in table, where
    assert resources["model"].name == "resnet18" and resources["preprocessing"].decode_workers == 3
