"""Build the three dashboards and keep the committed JSON in step with the code.

``build_all()`` returns ``{"spanmeter-pipeline.json": model, …}``; ``write_all(directory)`` writes them
(``json.dumps(indent=2, sort_keys=True)`` plus a newline, so the files diff well and regenerate byte for
byte); ``differences(directory)`` says which files are missing, different or extra. Grafana provisioning
reads ``dashboards/json/``; the test suite fails when it differs from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .billing import billing
from .contract import DASHBOARD_UIDS, JSON_DIR, TAGS
from .pipeline import pipeline
from .slos import slos

__all__ = ["DASHBOARD_UIDS", "JSON_DIR", "TAGS", "build_all", "differences", "render", "write_all"]

_BUILDERS = {"pipeline": pipeline, "slos": slos, "billing": billing}


def build_all() -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON model, for the three dashboards. Deterministic."""
    return {f"{uid}.json": _BUILDERS[key](uid, list(TAGS)) for key, uid in DASHBOARD_UIDS.items()}


def render(model: dict[str, Any]) -> str:
    """The file text of one dashboard."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every dashboard into ``directory`` (created if missing); returns the paths written. Files
    the code no longer generates are left alone (``differences`` lists them as extra)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in build_all().items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def differences(directory: Path) -> list[str]:
    """Human-readable differences between ``directory`` and the generated dashboards; empty when equal."""
    directory = Path(directory)
    found = []
    expected = {name: render(model) for name, model in build_all().items()}
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            found.append(f"{path}: missing")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != text:
            found.append(f"{path}: differs from the generated dashboard ({_first_difference(text, actual)})")
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            found.append(f"{path}: extra (no longer generated; delete it)")
    return found


def _first_difference(expected: str, actual: str) -> str:
    want, have = expected.splitlines(), actual.splitlines()
    for number, (a, b) in enumerate(zip(want, have, strict=False), start=1):
        if a != b:
            return f"line {number}: expected {a.strip()!r}, found {b.strip()!r}"
    return f"{len(want)} lines expected, {len(have)} found"
