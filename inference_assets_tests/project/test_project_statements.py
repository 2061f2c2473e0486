"""What the project's own comments and settings files say about the code is what the code does:
which assets take each concurrency pool's slots, how steps share GPUs, the automatic batch size
on CUDA, and the files pyproject.toml points to."""

import ast
import re

import pytest

from inference_assets import pools
from inference_assets.core.inference.devices import default_batch_size
from inference_assets.definitions import ASSETS

from inference_assets_tests.support.environment import INSTANCE_YAML, PROJECT_ROOT


def _pool_users() -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for asset in ASSETS:
        if asset.op.pool:
            users.setdefault(asset.op.pool, []).append(asset.key.to_user_string())
    return users


@pytest.mark.fast
def test_each_pool_is_described_with_every_asset_that_takes_its_slots():
    users = _pool_users()
    assert set(users) == {pools.GPU_POOL, pools.DUCKDB_POOL} and len(users[pools.DUCKDB_POOL]) >= 2
    instance_yaml = INSTANCE_YAML.read_text()
    for pool, assets in users.items():
        # pools.py's docstring: "- ``<pool>``: ..." up to the next item or paragraph
        item = re.search(rf"^- ``{pool}``:(.*?)(?=^- ``|\n\n)", pools.__doc__, re.MULTILINE | re.DOTALL)
        # deploy/dagster.yaml's comment: "#   <pool>  ..." and its indented continuation lines
        comment = re.search(rf"^\s*#\s{{3}}{pool}\s+(.*(?:\n\s*#\s{{5,}}.*)*)", instance_yaml, re.MULTILINE)
        assert item and comment, pool
        for asset in assets:
            assert f"``{asset}``" in item[1], f"inference_assets/pools.py: pool {pool} does not name {asset}"
            assert f"`{asset}`" in comment[1], f"deploy/dagster.yaml: pool {pool} does not name {asset}"


@pytest.mark.fast
def test_the_instance_settings_say_that_each_step_gets_a_gpu_of_its_own():
    text = INSTANCE_YAML.read_text()
    assert "gpu_assignment.py" in text and "INFERENCE_GPU_LOCK_DIR" in text
    assert "same cuda:0" not in text  # steps on one machine lock different GPUs (core/inference/gpu_assignment.py)


@pytest.mark.fast
def test_the_automatic_cuda_batch_size_is_described_as_probed():
    doc = " ".join(default_batch_size.__doc__.split())
    assert "starting point" not in doc  # the probe starts at 32 (core/inference/batch_size.py), not at 256
    assert "probed" in doc and "ONNX" in doc  # 256 only where no probe runs


@pytest.mark.fast
def test_the_files_pyproject_refers_to_exist():
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    named = set(re.findall(r"[\w./-]+\.(?:md|yaml)\b", text))
    assert "README.md" in named
    missing = sorted(name for name in named if not (PROJECT_ROOT / name).exists())
    assert not missing, f"pyproject.toml refers to files that do not exist: {missing}"


@pytest.mark.fast
def test_the_layout_in_the_developer_docs_names_every_core_folder_and_module():
    text = (PROJECT_ROOT / "docs" / "development.md").read_text()
    start = text.index("```text\ninference_assets/")
    block = text[start : text.index("```", start + 3)]
    core = PROJECT_ROOT / "inference_assets" / "core"
    folders = sorted(p.parent.name for p in core.glob("*/__init__.py"))
    listed = re.findall(r"^    (\w+)/ ", block, re.MULTILINE)
    assert listed == [f for f in listed if f in folders] and sorted(listed) == folders, (listed, folders)
    words = set(re.findall(r"\w+", block))
    modules = [p for p in core.rglob("*.py") if p.stem != "__init__"]
    unnamed = sorted(str(p.relative_to(core)) for p in modules if p.stem not in words)
    assert not unnamed, f"docs/development.md's layout does not name {unnamed}"
    readme = (PROJECT_ROOT / "README.md").read_text()
    readme_block = readme[readme.index("## Layout") : readme.index("## Documentation")]
    package = PROJECT_ROOT / "inference_assets"
    top = sorted(p.parent.name for p in package.glob("*/__init__.py"))
    missing = [f"{f}/" for f in [*folders, *top] if f"{f}/" not in readme_block]
    assert not missing, f"README.md's layout does not name {missing}"


def _part(module: str) -> str:
    """The part a module belongs to: ``core.<folder>`` in the core, else its top-level folder or module."""
    parts = module.split(".")[1:]  # without "inference_assets"
    return ".".join(parts[:2]) if parts[0] == "core" and len(parts) > 2 else parts[0]


@pytest.mark.fast
def test_no_import_cycle_between_folders():
    package = PROJECT_ROOT / "inference_assets"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] + (("x",) if parts[-1] == "__init__" else parts[-1:]))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: resolved against the package
                base = module.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []) + ["x"])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inference_assets."):
                target = node.module + ".x"
            else:
                continue
            if _part(target) != _part(module):
                graph.setdefault(_part(module), set()).add(_part(target))
    assert {"images", "inference", "core.images", "core.storage"} <= set(graph)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen))
                   for nxt in graph.get(start, ()))

    cycles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a, set()))
    assert not cycles, f"folders that import each other (directly or through others): {cycles}"


@pytest.mark.fast
def test_the_tests_mirror_the_code():
    """inference_assets_tests/core/ has a folder per core folder (and no other); each test folder is named
    in docs/development.md's layout; tools stay out of the test package."""
    tests = PROJECT_ROOT / "inference_assets_tests"
    core_parts = sorted(p.parent.name for p in (PROJECT_ROOT / "inference_assets" / "core").glob("*/__init__.py"))
    test_parts = sorted(p.parent.name for p in (tests / "core").glob("*/__init__.py"))
    assert test_parts == core_parts
    assert all(list((tests / "core" / part).glob("test_*.py")) for part in test_parts), "a core part without tests"
    assert not list(tests.glob("test_*.py")), "test files belong in a folder (core/<part>, assets, end_to_end...)"
    layout = (PROJECT_ROOT / "docs" / "development.md").read_text()
    folders = sorted(p.parent.name for p in tests.glob("*/__init__.py"))
    assert {"assets", "browser", "core", "end_to_end", "project", "support"} <= set(folders)
    assert all(f"  {folder}/ " in layout for folder in folders), folders
    helpers = [p.name for p in tests.rglob("*.py") if re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M)]
    assert not helpers, f"command-line tools in the test package: {helpers}"
