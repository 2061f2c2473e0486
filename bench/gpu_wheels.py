"""``make gpu-wheels``: the wheel folder ``make gpu-check`` installs from on a GPU machine with no registry.

That machine has Python 3.12 with torch, torchvision, timm, pyarrow and pandas (the ``BASE``
packages) and nothing else of ours. This resolves, with pip's own resolver for that Python and
platform, what the GPU check needs (the project's dependencies without the CPU-only runtimes and
tools, plus pytest), leaves out everything the base packages already bring, downloads the rest as
wheels (``--only-binary``, no builds there) and adds the project's own wheel. It fails when the
folder would exceed ``--max-mib`` (the device tool carries at most 64 MiB with the repository).

``--verify`` (only when this Python is the target version) installs the folder into a scratch
``--target`` and imports the GPU check's modules with nothing else visible but the standard
library, this folder and the base packages taken from the current environment: what a GPU machine
will see.

    python -m bench.gpu_wheels --out dist/gpu-wheels [--python-version 3.12] [--verify]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# already installed on the GPU machine, with everything they depend on
BASE = ("torch", "torchvision", "timm", "pyarrow", "pandas")
# the project's dependencies a GPU check does not use: CPU runtimes and converters (ONNX Runtime
# is imported only for ONNX models and INFERENCE_RUNTIME), the UI, the dg CLI, the DuckDB CLI, and
# matplotlib (charts are drawn only where it is installed: core/reporting/charts.py)
NOT_SHIPPED = ("openvino", "onnx", "onnxscript", "onnxruntime", "dagster-webserver", "dagster-dg-cli", "duckdb-cli",
               "matplotlib")
EXTRA = ("pytest>=8",)  # runs the CUDA-marked tests there
# wheels shipped run on glibc 2.28 (torch's own wheels need as much); resolving torch itself needs
# the newer tags its CUDA libraries come with
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 29)))
RESOLVE_PLATFORMS = (*PLATFORMS, *(f"manylinux_2_{minor}_x86_64" for minor in range(29, 40)))
# what the check imports: the code location, the test fixtures, the benchmark's peers
CHECK_IMPORTS = ("inference_assets.definitions", "inference_assets.run", "inference_assets_tests.conftest",
                 "inference_assets.core.images.device_decoding", "bench.run", "bench.peers.project", "pytest")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0])


def project_requirements() -> list[str]:
    """The project's main dependencies (pyproject.toml) without ``NOT_SHIPPED``, plus ``EXTRA``."""
    import tomllib

    dependencies = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    skipped = {canonical(n) for n in NOT_SHIPPED}
    return [r for r in dependencies if requirement_name(r) not in skipped] + list(EXTRA)


def target_options(python_version: str, platforms=PLATFORMS) -> list[str]:
    options = ["--python-version", python_version, "--only-binary=:all:", "--implementation", "cp"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def resolve(requirements: list[str], python_version: str) -> dict[str, str]:
    """{canonical name: version} of ``requirements`` and everything they need, as pip resolves them
    for ``python_version`` on x86_64 Linux (metadata only: nothing is installed)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report",
             str(report), "--target", str(Path(scratch) / "target"), *target_options(python_version, RESOLVE_PLATFORMS),
             *requirements],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def to_ship(needed: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """What ``needed`` holds beyond ``base`` (a package the base already has is not shipped, even at
    another version: pip on the GPU machine installs with ``--no-deps``, so nothing replaces it)."""
    return {name: version for name, version in sorted(needed.items()) if name not in base}


def build(out: Path, python_version: str, max_mib: float) -> dict:
    needed = resolve(project_requirements(), python_version)
    base = resolve(list(BASE), python_version)
    ship = to_ship(needed, base)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(out),
         *target_options(python_version), *[f"{name}=={version}" for name, version in ship.items()]],
        check=True,
    )
    had_build = (PROJECT_ROOT / "build").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                    str(PROJECT_ROOT)], check=True)
    if not had_build:  # setuptools' scratch copy of the sources, left in the project
        shutil.rmtree(PROJECT_ROOT / "build", ignore_errors=True)
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.whl"))}
    total = sum(sizes.values()) / 2**20
    summary = {"python_version": python_version, "base": sorted(BASE), "not_shipped": sorted(NOT_SHIPPED),
               "wheels": len(sizes), "total_mib": round(total, 1),
               "largest": sorted(((n, round(s / 2**20, 1)) for n, s in sizes.items()), key=lambda x: -x[1])[:8]}
    (out / "gpu-wheels.json").write_text(json.dumps(summary, indent=2) + "\n")
    if total > max_mib:
        raise SystemExit(f"the wheel folder {out} holds {total:.1f} MiB, over {max_mib:g} MiB; largest: "
                         f"{summary['largest'][:3]}: ship less (NOT_SHIPPED in bench/gpu_wheels.py)")
    return summary


def base_folder(scratch: Path) -> Path:
    """The base packages (and everything they need) of this environment, linked into one folder."""
    folder = scratch / "base"
    folder.mkdir()
    todo, seen = [canonical(n) for n in BASE], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                todo.append(requirement_name(requirement))
        for file in dist.files or []:
            top = file.parts[0]
            source = Path(dist.locate_file(top))
            if not (folder / top).exists() and source.exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(source)
    return folder


def verify(out: Path) -> None:
    """Install ``out`` into a scratch target; import the check's modules seeing only it and the base."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        target = scratch / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                        str(target), *map(str, sorted(out.glob("*.whl")))], check=True)
        path = f"{PROJECT_ROOT}:{target}:{base_folder(scratch)}"
        code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in CHECK_IMPORTS)
        code += "print('imports:', len(sys.modules), 'modules, all from', sorted({p for p in sys.path if p}))"
        # -S: no site-packages of this environment, only PYTHONPATH's folders (and the standard library)
        subprocess.run([sys.executable, "-S", "-c", code], check=True, cwd=scratch,
                       env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "dist" / "gpu-wheels")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--max-mib", type=float, default=60.0)
    p.add_argument("--verify", action="store_true", help="check the folder as the GPU machine will see it "
                   "(only where this Python is --python-version)")
    args = p.parse_args()
    summary = build(args.out, args.python_version, args.max_mib)
    print(f"{args.out}: {summary['wheels']} wheels, {summary['total_mib']} MiB (largest: {summary['largest'][:3]})")
    if args.verify:
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        if running != args.python_version:
            raise SystemExit(f"--verify needs Python {args.python_version}; this is {running}")
        verify(args.out)


if __name__ == "__main__":
    main()
