"""Build step: fetch the playground's pinned npm packages and copy their browser bundles.

``make install`` runs ``python -m evlink.playground.vendor``. It runs ``npm ci``
in ``assets/playground/``, whose package.json and package-lock.json pin every
package by version and integrity hash (install scripts are not run), then
copies the bundles named in :data:`VENDOR_FILES` and each package's licence
into ``evlink/playground/static/vendor/``. Git ignores that folder: code from
elsewhere is fetched at build time and never committed. The pinned packages
and their licences are recorded in THIRD_PARTY.md beside this file, which
``--third-party`` writes from the lock file.

Standard library only: it runs before the package's dependencies are installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["NPM_DIR", "VENDOR_DIR", "VENDOR_FILES", "build", "third_party_markdown"]

HERE = Path(__file__).resolve().parent
VENDOR_DIR = HERE / "static" / "vendor"
NPM_DIR = HERE.parent.parent / "assets" / "playground"
THIRD_PARTY = HERE / "THIRD_PARTY.md"
# Written last: its presence means the folder is complete (the Makefile's target).
COMPLETE = ".complete"

# Served name -> path under node_modules. UMD builds: they run from plain <script>
# tags, no bundler. graphiql's bundle carries graphql, graphql-ws and the
# @graphiql/toolkit fetcher; React 18 is the last React with UMD builds.
VENDOR_FILES: dict[str, str] = {
    "react.production.min.js": "react/umd/react.production.min.js",
    "react-dom.production.min.js": "react-dom/umd/react-dom.production.min.js",
    "graphiql.min.js": "graphiql/graphiql.min.js",
    "graphiql.min.css": "graphiql/graphiql.min.css",
}


class BuildError(Exception):
    """The assets could not be built; the message says why and what to do."""


def _locked_packages(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Package name -> its lock entry, for every package npm installs (nested copies too)."""
    packages: dict[str, dict[str, Any]] = {}
    for path, entry in lock["packages"].items():
        if path:  # "" is the project itself
            packages[path.removeprefix("node_modules/")] = entry
    return packages


def _npm_ci(npm_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError(
            "npm (Node.js 18 or later) is needed to fetch the playground's JavaScript: "
            "install Node.js, then run `make install` again"
        )
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    result = subprocess.run(command, cwd=npm_dir, check=False)  # noqa: S603 (fixed arguments)
    if result.returncode != 0:
        raise BuildError(f"`npm ci` in {npm_dir} failed (exit {result.returncode})")


def _copy_licences(npm_dir: Path, packages: dict[str, dict[str, Any]], target: Path) -> None:
    """Every installed package's licence text: the bundles include their code.

    A few packages ship none; THIRD_PARTY.md names their licence from package.json.
    """
    target.mkdir()
    for path in packages:
        package_dir = npm_dir / "node_modules" / path
        texts = sorted(f for f in package_dir.iterdir() if f.name.lower().startswith("licen"))
        if texts:
            flat = path.replace("node_modules/", "").replace("/", "__")
            shutil.copyfile(texts[0], target / f"{flat}.txt")


def build(npm_dir: Path = NPM_DIR, vendor_dir: Path = VENDOR_DIR) -> None:
    """Install the pinned packages and replace ``vendor_dir`` with their bundles."""
    lock = json.loads((npm_dir / "package-lock.json").read_text())
    _npm_ci(npm_dir)
    staging = vendor_dir.with_name(vendor_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for served, source in VENDOR_FILES.items():
        origin = npm_dir / "node_modules" / source
        if not origin.is_file():
            raise BuildError(f"{origin} is missing after `npm ci`: do the pinned versions match?")
        shutil.copyfile(origin, staging / served)
    _copy_licences(npm_dir, _locked_packages(lock), staging / "licenses")
    (staging / COMPLETE).write_text("")
    # Swap in whole, so that a failed build never leaves half a folder behind.
    shutil.rmtree(vendor_dir, ignore_errors=True)
    staging.rename(vendor_dir)


def third_party_markdown(lock: dict[str, Any]) -> str:
    """THIRD_PARTY.md: the pinned packages and every package they bring, with licences."""
    direct = lock["packages"][""]["dependencies"]
    packages = _locked_packages(lock)
    lines = [
        "# Third-party code in the playground",
        "",
        "evlink serves GraphiQL at `/graphql` from its own package. The browser bundles",
        "are not in git: `make install` runs `python -m evlink.playground.vendor`, which",
        "runs `npm ci` in `assets/playground/` (versions and integrity hashes pinned by",
        "its package-lock.json) and copies these files into",
        "`evlink/playground/static/vendor/`, with each package's licence text in",
        "`vendor/licenses/`:",
        "",
        *(f"- `vendor/{served}` from `{source}`" for served, source in VENDOR_FILES.items()),
        "",
        "## Pinned packages",
        "",
        "| package | version | licence |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {packages[name]['version']} | {packages[name].get('license')} |"
            for name in sorted(direct)
        ),
        "",
        "## Everything npm installs for them",
        "",
        "graphiql's bundle includes the code of the packages it depends on.",
        "",
        "| package | version | licence |",
        "| --- | --- | --- |",
        *(
            f"| {path} | {entry['version']} | {entry.get('license')} |"
            for path, entry in sorted(packages.items())
        ),
        "",
        "This file is written by `python -m evlink.playground.vendor --third-party`;",
        "a test checks that it matches the lock file.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--third-party", action="store_true", help="rewrite THIRD_PARTY.md from the lock file"
    )
    args = parser.parse_args(argv)
    if args.third_party:
        lock = json.loads((NPM_DIR / "package-lock.json").read_text())
        THIRD_PARTY.write_text(third_party_markdown(lock))
        return 0
    try:
        build()
    except BuildError as exc:
        print(f"evlink playground: {exc}", file=sys.stderr)
        return 1
    print(f"evlink playground: bundles copied into {VENDOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
