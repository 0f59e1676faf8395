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
