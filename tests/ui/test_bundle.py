"""The page's bundle served by the plugin was built from the sources in ui/ as they are in this checkout.

``npm run build`` (run by ``make install``) writes ``build-info.json`` next to the bundle: the sha256 of the bundle
and a digest of the sources it was built from (see ui/scripts/stamp.mjs). This test recomputes both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from optimove_netmera.ui.routes import BUNDLE_FILE, STATIC_DIR

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "ui"
SOURCES = ["package.json", "package-lock.json", "tsconfig.json", "vite.config.ts", "scripts", "src"]
REBUILD = "rebuild it: `make install` (or `cd ui && npm ci && npm run build`)"


def source_digest() -> tuple[str, int]:
    """The digest stamp.mjs records: sha256 over sorted "<path>\\0<sha256>\\n" lines, and the number of files."""
    files: list[Path] = []
    for entry in SOURCES:
        path = UI / entry
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    lines = sorted(f"{p.relative_to(UI).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(lines)


def test_bundle_matches_its_sources() -> None:
    bundle, info_path = STATIC_DIR / BUNDLE_FILE, STATIC_DIR / "build-info.json"
    if not bundle.is_file() or not info_path.is_file():
        pytest.fail(f"the page's bundle is not built ({bundle} missing): {REBUILD}", pytrace=False)
    info = json.loads(info_path.read_text())
    digest, count = source_digest()
    assert (info["sources_sha256"], info["sources"]) == (digest, count), f"the bundle is stale: {REBUILD}"
    assert info["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest(), f"bundle altered: {REBUILD}"


def test_bundle_is_an_airflow_plugin_library() -> None:
    """A UMD build exporting the global AirflowPlugin, with React and Chakra left to the Airflow UI."""
    text = (STATIC_DIR / BUNDLE_FILE).read_text()
    head = text[:1000]
    assert "AirflowPlugin" in head
    for global_name in ("ReactJSXRuntime", "React", "ChakraUI"):
        assert f".{global_name}" in head, global_name
    assert "react.production" not in text and "__SECRET_INTERNALS" not in text  # React itself is not bundled
