"""The vendored npm bundles: pinned, recorded with their licences, and built."""

from __future__ import annotations

import json
from typing import Any

from evlink.playground.page import missing_assets
from evlink.playground.vendor import NPM_DIR, THIRD_PARTY, VENDOR_FILES, third_party_markdown


def _lock() -> dict[str, Any]:
    lock: dict[str, Any] = json.loads((NPM_DIR / "package-lock.json").read_text())
    return lock


def test_every_package_is_pinned_to_one_version_and_hash() -> None:
    manifest = json.loads((NPM_DIR / "package.json").read_text())
    lock = _lock()

    for name, version in manifest["dependencies"].items():
        assert version[0].isdigit(), f"{name} {version}: pin an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    for path, entry in lock["packages"].items():
        if path:
            assert entry["integrity"].startswith("sha512-"), path


def test_each_served_bundle_comes_from_a_pinned_package() -> None:
    pinned = json.loads((NPM_DIR / "package.json").read_text())["dependencies"]

    for source in VENDOR_FILES.values():
        assert source.split("/")[0] in pinned


def test_third_party_md_matches_the_lock_file() -> None:
    # After a change of versions: python -m evlink.playground.vendor --third-party
    assert THIRD_PARTY.read_text() == third_party_markdown(_lock())


def test_the_bundles_are_built() -> None:
    missing = missing_assets()

    assert missing == [], f"{missing} missing: run `make install` (it runs npm ci)"
