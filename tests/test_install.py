"""The Makefile's recipes, run by the real make: what `make run` installs, and
`make screenshots` without Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _make(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(  # noqa: S603 (make, with fixed arguments)
        [MAKE, "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_run_installs_the_runtime_without_the_dev_tools(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # never made: -n only prints what make would run

    shown = _make("-n", "run", f"VENV={venv}", "PLAYGROUND=/nonexistent/.complete")

    assert shown.returncode == 0, shown.stderr
    installs = [line for line in shown.stdout.splitlines() if "pip install" in line]
    assert f"{venv}/bin/pip install --quiet -e ." in installs
    assert not any(".[dev]" in line for line in installs), installs
    assert "evlink serve" in shown.stdout


def test_make_test_and_lint_install_the_dev_tools(tmp_path: Path) -> None:
    for target in ("test", "lint"):
        shown = _make("-n", target, f"VENV={tmp_path / 'venv'}", "PLAYGROUND=/dev/null")
        assert shown.returncode == 0, shown.stderr
        assert "pip install --quiet -e '.[dev]'" in shown.stdout, target


def test_make_screenshots_without_chromium_fails_and_says_why() -> None:
    picture = ROOT / "docs" / "playground.png"
    before = picture.read_bytes()

    # -o: take the installed virtualenv as it is; PATH: nowhere to find chromium.
    result = _make(
        "screenshots",
        "-o",
        ".venv/.installed",
        "-o",
        ".venv/bin/python",
        path="/nonexistent",
    )

    assert result.returncode != 0
    assert "chromium is not installed" in result.stdout + result.stderr
    assert picture.read_bytes() == before


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    joined = dockerfile.replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_dockerfile_compose_builds_installs_as_make_install_without_dev_tools() -> None:
    """No container engine here: the file is read, not built (docs/compose.yaml says so)."""
    compose = (ROOT / "docs" / "compose.yaml").read_text()
    assert "build: .." in compose
    stages = _stages((ROOT / "Dockerfile").read_text())
    makefile = (ROOT / "Makefile").read_text()

    assert len(stages) >= 2  # multi-stage: npm and pip stay out of the image that runs
    steps = [step for stage in stages for step in stage]
    # make install's two steps: the playground's bundles, then the package.
    assert "-m evlink.playground.vendor" in makefile
    assert any(s.startswith("RUN ") and "-m evlink.playground.vendor" in s for s in steps)
    pip = [s for s in steps if "pip install" in s and " ." in s]
    assert pip, steps
    assert not any("[dev]" in s for s in steps)
    final = stages[-1]
    assert not any(s.startswith("RUN ") and ("npm" in s or "pip install" in s) for s in final)
    users = [s.split()[1] for s in final if s.startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1] not in ("root", "0")
    assert final[-1].startswith("CMD ")
    assert "evlink" in final[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored  # this machine's virtualenv never reaches the image
