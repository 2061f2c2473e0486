"""The code location as the UI shows it (kinds and descriptions), and the project files a user
reads before running anything: LICENSE, .env.example, the fast test loop."""

import re
import shlex
import subprocess
import sys

import pytest

from inference_assets.definitions import defs

from inference_assets_tests.support.environment import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "inference_assets"
KNOWN_KINDS = {"pytorch", "parquet", "duckdb", "html", "numpy", "csv"}


def _described_fields(config_type, path: str):
    """(name, description) of every field of a Dagster config schema, nested shapes included."""
    for name, field in getattr(config_type, "fields", {}).items():
        yield f"{path}.{name}", field.description
        yield from _described_fields(field.config_type, f"{path}.{name}")
        inner = getattr(field.config_type, "inner_type", None)  # Noneable / Array
        if inner is not None:
            yield from _described_fields(inner, f"{path}.{name}")


@pytest.mark.fast
def test_every_asset_declares_what_it_is_made_of_and_a_description():
    specs = list(defs.resolve_all_asset_specs())
    assert len(specs) >= 6
    for spec in specs:
        name = spec.key.to_user_string()
        assert spec.kinds, f"asset {name} declares no kinds"
        assert spec.kinds <= KNOWN_KINDS, f"asset {name}: kinds {spec.kinds - KNOWN_KINDS} not among {KNOWN_KINDS}"
        assert (spec.description or "").strip(), f"asset {name} has no description"
    assert {"pytorch", "parquet", "duckdb", "html"} <= set().union(*(spec.kinds for spec in specs))


@pytest.mark.fast
def test_every_job_schedule_and_sensor_has_a_description():
    repository = defs.get_repository_def()
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]  # Dagster's own
    assert jobs
    for definition in [*jobs, *repository.schedule_defs, *repository.sensor_defs]:
        assert (definition.description or "").strip(), f"{definition.name} has no description"


@pytest.mark.fast
def test_every_config_field_shown_in_the_launchpad_has_a_description():
    fields = []
    for spec in defs.resolve_all_asset_specs():
        op = defs.resolve_assets_def(spec.key).op
        if op.config_field is not None:
            fields += _described_fields(op.config_field.config_type, f"{op.name} config")
    assert fields, "no asset takes run config"
    assert len([name for name, _ in fields if name.endswith(" config.force")]) >= 2  # preprocessing, predictions
    missing = [name for name, description in fields if not (description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


@pytest.mark.fast
def test_every_resource_field_has_a_description():
    checked = []
    for key, resource in defs.resources.items():
        resource_class = getattr(resource, "resource_cls", type(resource))  # object_store: configured at launch
        for name, field in resource_class.model_fields.items():
            checked.append(f"{key}.{name}")
            if "resource_dependency" in field.metadata:  # a nested resource (object_store): described by its own
                continue
            assert (field.description or "").strip(), f"resource field {key}.{name} has no description"
        schema = resource.get_resource_definition().config_schema.as_field().config_type
        for name, description in _described_fields(schema, key):
            assert (description or "").strip(), f"resource config field {name} has no description"
    assert {
        "source.image_root", "work_area.work_dir", "object_store.secret_access_key",
        "model.name", "device.device", "preprocessing.decode_workers", "duckdb.database",
    } <= set(checked)


@pytest.mark.fast
def test_the_source_and_the_work_area_share_the_object_store_set_at_launch():
    """One place for the S3 endpoint and credentials: the ``object_store`` resource, a nested
    resource of both ``source`` and ``work_area``, configured in the Launchpad under its own key."""
    from inference_assets.resources import ObjectStoreResource

    resources = defs.resources
    assert resources["source"].object_store is resources["work_area"].object_store is resources["object_store"]
    # configured at launch: a run's config under object_store reaches both (test_sources.py runs one)
    assert resources["object_store"].resource_cls is ObjectStoreResource
    top_level = defs.get_repository_def().get_top_level_resources()
    source_schema = top_level["source"].config_schema.as_field().config_type
    assert "object_store" not in source_schema.fields and "image_root" in source_schema.fields
    store_schema = top_level["object_store"].config_schema.as_field().config_type
    assert set(store_schema.fields) == {"endpoint_url", "region", "access_key_id", "secret_access_key"}
    assert not any(field.is_required for field in store_schema.fields.values())  # unset: the AWS_* variables


@pytest.mark.fast
def test_the_automatic_batch_size_is_described_as_the_code_picks_it():
    import torch

    from inference_assets.core.inference.devices import default_batch_size
    from inference_assets.resources import ModelResource

    description = ModelResource.model_fields["batch_size"].description
    assert f"{default_batch_size(torch.device('cpu'))} on CPU" in description
    assert "probe" in description and "256 on CUDA" not in description  # probed: core/inference/batch_size.py


def _documentation() -> str:
    """The README and the pages of docs/ it links to."""
    pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


def _environment_variables_read() -> set[str]:
    """Every INFERENCE_* name in the package's source: each is read somewhere, or named in a message."""
    names = set()
    for path in SOURCE.rglob("*.py"):
        names |= set(re.findall(r"\bINFERENCE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


@pytest.mark.fast
def test_env_example_and_the_docs_list_every_environment_variable_the_code_reads():
    names = _environment_variables_read()
    assert len(names) >= 20 and "INFERENCE_MODEL" in names and "INFERENCE_SLOT_WAIT_SECONDS" in names
    example = (PROJECT_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^# (INFERENCE_[A-Z0-9_]+)=", example, re.MULTILINE))
    assert not names - listed, f"not in .env.example (as '# NAME=default'): {sorted(names - listed)}"
    assert not listed - names, f".env.example lists settings the code does not read: {sorted(listed - names)}"
    assert not re.findall(r"^INFERENCE_", example, re.MULTILINE), ".env.example sets nothing: every line commented"
    documentation = _documentation()
    missing = sorted(name for name in names if name not in documentation)
    assert not missing, f"README.md and docs/*.md do not name {missing}"
    configuration = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    unlisted = sorted(name for name in names if f"| `{name}` |" not in configuration)
    assert not unlisted, f"docs/configuration.md's table has no row for {unlisted}"
    assert ".env.example" in (PROJECT_ROOT / "README.md").read_text()
    assert re.search(r"^\.env$", (PROJECT_ROOT / ".gitignore").read_text(), re.MULTILINE), "a user's .env is ignored"


@pytest.mark.fast
def test_the_licence_is_the_apache_license_named_in_pyproject():
    text = (PROJECT_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.MULTILINE)


def test_make_test_fast_selects_a_marked_subset_of_the_suite():
    dry_run = subprocess.run(
        ["make", "-n", "test-fast"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry_run.returncode == 0, dry_run.stderr
    command = shlex.split(next(line for line in dry_run.stdout.splitlines() if " pytest " in line))
    marker = command[command.index("-m", command.index("pytest")) + 1]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", marker],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    summary = re.search(r"(\d+)/(\d+) tests collected", collected.stdout)
    assert summary, collected.stdout[-2000:]
    selected, total = int(summary[1]), int(summary[2])
    assert 100 <= selected < total, f"-m {marker}: {selected} of {total} tests"
    assert "make test-fast" in (PROJECT_ROOT / "README.md").read_text()


@pytest.mark.fast
def test_each_asset_is_in_the_group_named_by_its_folder():
    from inference_assets.definitions import ASSETS

    for asset in ASSETS:
        folder = asset.op.compute_fn.decorated_fn.__module__.split(".")[1]  # inference_assets.<folder>.assets
        for spec in asset.specs:
            assert spec.group_name == folder, f"{spec.key.to_user_string()}: group {spec.group_name}, folder {folder}"
