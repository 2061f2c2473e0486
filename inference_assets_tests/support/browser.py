"""Headless Chromium (Debian's package) for the tests: the rendered DOM, console messages, screenshots."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Flags for a machine with no network but loopback (see the project's environment notes).
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium not found: apt-get install chromium (.ci/run does)")
    return found


@dataclass
class Page:
    dom: str
    console: list[str]  # every console message the page produced

    @property
    def text(self) -> str:
        """The page's text without markup, each element's text separated by " | "."""
        body = re.sub(r"<(style|script)\b.*?</\1>", "", self.dom, flags=re.S)
        return html.unescape(re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"<[^>]+>", " | ", body)))

    def errors(self) -> list[str]:
        """Console messages that report an error (Chromium logs every level at INFO)."""
        return [line for line in self.console if re.search(r"error|uncaught|failed", line, re.I)]


def load(url: str, wait_ms: int = 2000, timeout: float = 120, size: str = "1200,1600") -> Page:
    """The DOM after scripts ran (``wait_ms`` of virtual time) in a ``size`` window, and the
    page's console messages."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Page(done.stdout, console)


def screenshot(url: str, output: Path, size: str = "1200,1600", wait_ms: int = 2000, timeout: float = 120) -> Path:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={wait_ms}", f"--screenshot={output}", url],
            capture_output=True, text=True, timeout=timeout,
        )
    assert done.returncode == 0 and output.exists(), done.stderr[-2000:]
    return output
