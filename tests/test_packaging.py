"""Every Python package in the source folders ships: pyproject's explicit ``packages`` list names each one.

setuptools installs only the packages listed (the folders are mapped to ``spanmeter.*`` by ``package-dir``), so
a new subpackage missing from the list works in an editable checkout and is absent from a wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert {"spanmeter.billing.invoices", "spanmeter.billing.ledger"} <= found  # the walk sees subpackages
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"
