"""Every shell command of README.md and docs/*.md, run as written on a fresh copy of the project.

Each ```sh / ```bash / ```shell / ```console (and ```python) block is marked by an HTML comment
on the line before it (blank lines between are allowed):

- ``<!-- test: run -->``: run, in document order (README.md first, then docs/*.md by name), in
  one copy of the project that the blocks share as a user's checkout would: its files, and the
  variables a block exports (``export DAGSTER_HOME=...``) for the blocks after it;
- ``<!-- test: server URL -->``: a command that serves until stopped (``make dev``): started,
  checked to answer at URL, stopped;
- ``<!-- test: gpu REASON -->``, ``<!-- test: k8s REASON -->``, ``<!-- test: skip REASON -->``:
  not run here (a GPU, a cluster, or something else this machine lacks), saying why.

The copy holds the files git tracks or would track (``git ls-files``), with ``.venv`` standing for
the one ``make install`` made: its folders link to this interpreter's environment, and its stamp is
newer than ``pyproject.toml``, so ``make install`` there finds nothing to do and never writes to the
shared environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from inference_assets.definitions import defs
from inference_assets.pools import DUCKDB_POOL, GPU_POOL

from inference_assets_tests.support.environment import PROJECT_ROOT

DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell", "console"}
MARKED = SHELL | {"python"}  # blocks a user would run: each needs a marker
KINDS = {"run", "server", "gpu", "k8s", "skip"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>\S*)\s*$")
MARKER = re.compile(r"^\s*<!-- test: (?P<kind>\S+)(?: (?P<argument>.*?))?\s*-->\s*$")
BLOCK_TIMEOUT = 600  # seconds: `make run` and `make ci` on the sample photos take about a minute each
SERVER_TIMEOUT = 300


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    kind: str | None
    argument: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(PROJECT_ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker on the line before it, if any."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, language = opening["indent"], opening["language"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{path.name}:{index + 1}: a code block that is never closed"
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1:end])
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before]) if before >= 0 else None
        blocks.append(Block(
            path, index + 1, language, marker["kind"] if marker else None,
            (marker["argument"] or "") if marker else "", code,
        ))
        index = end + 1
    return blocks


def documented_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in fenced_blocks(path)]


@pytest.mark.fast
def test_every_command_block_says_how_it_is_tested():
    blocks = documented_blocks()
    assert len(DOCUMENTS) >= 5 and len(blocks) >= 20
    unlabelled = [block.where for block in blocks if not block.language]
    assert not unlabelled, f"code blocks without a language (```sh, ```text, ...): {unlabelled}"
    problems = []
    for block in blocks:
        if block.language not in MARKED:
            continue
        if block.kind is None:
            problems.append(f"{block.where}: no <!-- test: run|server URL|gpu|k8s|skip REASON --> before it")
        elif block.kind not in KINDS:
            problems.append(f"{block.where}: unknown marker 'test: {block.kind}' (one of {sorted(KINDS)})")
        elif block.kind != "run" and not block.argument:
            problems.append(f"{block.where}: 'test: {block.kind}' needs a {'URL' if block.kind == 'server' else 'reason'}")
    assert not problems, "\n".join(problems)
    readme = [block for block in blocks if block.path.name == "README.md" and block.path.parent == PROJECT_ROOT]
    assert {"run", "server"} <= {block.kind for block in readme}


def _pool_members(pool: str) -> set[str]:
    members = set()
    for spec in defs.resolve_all_asset_specs():
        op = defs.resolve_assets_def(spec.key).op
        if getattr(op, "pool", None) == pool:
            members.add(spec.key.to_user_string())
    return members


@pytest.mark.fast
def test_the_documentation_names_what_the_code_does():
    """Statements that went stale once: the pools' members, the automatic batch size on CUDA, the
    names of the reuse counts in the metadata."""
    texts = {path.relative_to(PROJECT_ROOT): path.read_text() for path in DOCUMENTS}
    instance_yaml = (PROJECT_ROOT / "deploy" / "dagster.yaml").read_text()
    for pool in (GPU_POOL, DUCKDB_POOL):
        members = _pool_members(pool)
        assert members, pool
        comment = re.search(rf"^\s*#\s+{pool}\s+(.*)$", instance_yaml, re.MULTILINE)
        assert comment, f"deploy/dagster.yaml does not describe the pool {pool}"
        assert all(f"`{name}`" in comment[1] for name in members), (
            f"deploy/dagster.yaml: pool {pool} holds {sorted(members)}, the comment says: {comment[1]}")
        row = next(line for line in texts[Path("docs/scaling.md")].splitlines() if f"the `{pool}` pool" in line)
        assert all(f"`{name}`" in row for name in members), f"docs/scaling.md: pool {pool} holds {sorted(members)}: {row}"
    for path, text in texts.items():
        assert "256 on CUDA" not in text, f"{path}: the batch size on CUDA is probed (core/inference/batch_size.py)"
        assert "reused vs computed" not in text, f"{path}: prediction_files counts `predicted` and `reused`"


# --- figures and their results files -------------------------------------------------------------

RESULTS = PROJECT_ROOT / "bench" / "results"
FIGURE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+\.\d+)(?![\d.]*\d)|(?<![\w.])(\d+)(?=\s?(?:%|×|img/s|MiB))")
RESULTS_LINK = re.compile(r"\]\((?:\.\./)?(bench/results/[^)]+)\)")


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)*", text.replace(",", "")))


def _matches(figure: str, numbers: set[str]) -> bool:
    """The figure is a number of the file, written the same, shortened, or rounded."""
    figure = figure.replace(",", "")
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    for number in numbers:
        if number == figure or number.startswith(figure + ".") or (decimals and number.startswith(figure)):
            return True
        if number.count(".") == 1 and f"{float(number):.{decimals}f}" == figure:
            return True
    return False


@pytest.mark.fast
def test_every_measured_figure_is_in_the_results_file_it_cites():
    checked, problems = 0, []
    for path in (PROJECT_ROOT / "docs" / "performance.md", PROJECT_ROOT / "docs" / "exactness.md"):
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        cited: list[str] = []
        for paragraph in re.split(r"\n\s*\n", text):
            links = RESULTS_LINK.findall(paragraph)
            if links:
                cited = links
            assert all((PROJECT_ROOT / link).is_file() for link in cited), f"{path.name}: {cited}"
            figures = [m[1] or m[2] for m in FIGURE.finditer(re.sub(r"`[^`]*`", "", paragraph))]
            if not figures:
                continue
            if not cited:
                problems.append(f"{path.name}: figures {figures} with no results file cited before them:\n{paragraph}")
                continue
            numbers = set().union(*(_numbers((PROJECT_ROOT / link).read_text()) for link in cited))
            for sibling in cited:  # a Markdown table's JSON holds the same run's unrounded figures
                json_file = PROJECT_ROOT / Path(sibling).with_suffix(".json")
                if json_file.is_file():
                    numbers |= _numbers(json_file.read_text())
            missing = [figure for figure in figures if not _matches(figure, numbers)]
            if missing:
                problems.append(f"{path.name}: {missing} are in none of {cited}:\n{paragraph}")
            checked += len(figures)
    assert not problems, "\n\n".join(problems)
    assert checked >= 50


# --- running the blocks --------------------------------------------------------------------------

def _fresh_checkout(dest: Path) -> Path:
    """The project's files as a clone would have them (tracked, or new and not ignored), and a
    ``.venv`` that ``make install`` finds up to date."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if source.is_file() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    environment = Path(sys.prefix)
    assert (environment / "pyvenv.cfg").is_file(), f"the tests run in a virtual environment, not {environment}"
    venv = dest / ".venv"
    venv.mkdir()
    for entry in environment.iterdir():
        if not entry.name.startswith("."):  # the stamps and logs of make install stay its own
            (venv / entry.name).symlink_to(entry)
    old = time.time() - 3600
    os.utime(dest / "pyproject.toml", (old, old))
    (venv / ".installed").touch()
    dry = subprocess.run(["make", "-q", "install"], cwd=dest, capture_output=True, text=True)
    assert dry.returncode == 0, f"make install would reinstall into the shared environment:\n{dry.stdout}{dry.stderr}"
    return dest


def _user_environment(checkout: Path) -> dict[str, str]:
    """A user's shell: none of the tests' INFERENCE_* settings, no DAGSTER_HOME, no outer make;
    the checkout importable as the editable install of a clone makes it."""
    skip = ("INFERENCE_", "PYTEST_", "MAKE")
    env = {name: value for name, value in os.environ.items() if not name.startswith(skip)}
    for name in ("DAGSTER_HOME", "MFLAGS", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(checkout)
    return env


def _script(block: Block, checkout: Path, state: Path) -> tuple[str, int]:
    """A bash script that runs the block as typed in a shell in ``checkout``, with the variables
    earlier blocks exported, and saves its own exports for the next; the block's first line's
    number in it."""
    if block.language == "python":
        code = f".venv/bin/python - <<'PYTHON_BLOCK'\n{block.code}\nPYTHON_BLOCK"
    else:
        code = "\n".join(line[2:] if line.startswith("$ ") else line for line in block.code.splitlines())
    head = (
        f"set -e\nsource {state}\ncd {checkout}\n"
        "trap 'echo \"documented command failed (block line $((LINENO - OFFSET))): $BASH_COMMAND\" >&2' ERR\n"
    )
    offset = head.count("\n")  # the block's line k is the script's line offset + k
    head = head.replace("OFFSET", str(offset))
    return f"{head}{code}\nexport -p > {state}\n", offset


def _port_in_use(url: str) -> bool:
    match = re.match(r"https?://([^:/]+):(\d+)", url)
    if match is None:
        return False
    with socket.socket() as sock:
        return sock.connect_ex((match[1], int(match[2]))) == 0


def _serve(block: Block, script: str, env: dict[str, str], log: Path) -> None:
    """Start the block, wait for its URL to answer, stop it and everything it started."""
    url = block.argument
    assert not _port_in_use(url), f"{block.where}: something already listens at {url}; stop it and run again"
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert process.poll() is None, (
                f"{block.where}: `{block.code}` exited ({process.returncode}) before serving {url}:\n"
                f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    assert response.status == 200, f"{block.where}: {url} answered {response.status}"
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, (
                f"{block.where}: `{block.code}` did not serve {url} in {SERVER_TIMEOUT}s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
    finally:
        try:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def test_every_documented_command_runs_as_written_on_a_fresh_checkout(tmp_path):
    checkout = _fresh_checkout(tmp_path / "inference_assets")
    env = _user_environment(checkout)
    state = tmp_path / "exported.sh"
    state.write_text("")
    ran, not_run = [], []
    for block in documented_blocks():
        if block.language not in MARKED or block.kind not in ("run", "server"):
            if block.language in MARKED:
                not_run.append(f"{block.where} ({block.kind}: {block.argument})")
            continue
        script, offset = _script(block, checkout, state)
        started = time.monotonic()
        if block.kind == "server":
            _serve(block, script, env, tmp_path / f"server-{len(ran)}.log")
        else:
            try:
                result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                                        timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT}s:\n{block.code}")
            if result.returncode != 0:
                failed = re.search(r"documented command failed \(block line (\d+)\): (.*)", result.stderr)
                line = block.line + int(failed[1]) if failed else block.line
                command = failed[2] if failed else block.code
                pytest.fail(
                    f"{block.path.relative_to(PROJECT_ROOT)}:{line}: `{command}` failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
        ran.append(f"{block.where} ({time.monotonic() - started:.0f}s)")
    print("ran:", *ran, "not run:", *not_run, sep="\n  ")
    assert len(ran) >= 8
    assert (checkout / "data" / "warehouse.duckdb").is_file()
    assert (checkout / "data" / "work" / "report" / "index.html").is_file()
    assert (checkout / ".dagster_home" / "dagster.yaml").is_file()
