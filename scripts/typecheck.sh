#!/usr/bin/env bash
# mypy over spanmeter, configured in pyproject.toml ([tool.mypy]): strict on spanmeter.billing.rating and
# spanmeter.collector.processors, the defaults elsewhere.
#
# The code folders import as spanmeter.* through setuptools' package-dir (collector/ is spanmeter.collector,
# billing/ is spanmeter.billing, ...), which mypy cannot follow (it reads folders, not import hooks). So this
# builds the layout as Python sees it in .venv/typecheck/spanmeter (symlinks into the checkout, rebuilt on
# every run), and mypy checks those files; its messages name them under .venv/typecheck/.
set -euo pipefail
cd "$(dirname "$0")/.."
farm=.venv/typecheck
rm -rf "$farm" && mkdir -p "$farm/spanmeter"
for entry in spanmeter/*; do
  ln -s "$PWD/$entry" "$farm/spanmeter/$(basename "$entry")"
done
.venv/bin/python - "$farm" <<'PY'
import os, sys, tomllib
farm = sys.argv[1]
dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for package, folder in dirs.items():
    parts = package.split(".")
    if len(parts) == 2:  # spanmeter.collector -> collector/
        os.symlink(os.path.abspath(folder), os.path.join(farm, *parts))
PY
exec .venv/bin/mypy --config-file pyproject.toml "$farm/spanmeter" "$@"
