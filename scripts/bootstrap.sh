#!/usr/bin/env bash
# Creates ./.venv with Python >= 3.11 and installs spanmeter (editable, with test extras) into it.
# Safe to run again: it reinstalls only when pyproject.toml changed or the install is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "spanmeter needs Python 3.11 or newer: install it, or set PYTHON=/path/to/python3.11" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  python=$(pick_python)
  echo "setting up .venv with $("$python" --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.spanmeter-installed
wanted=$(cat pyproject.toml | cksum)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ] || ! .venv/bin/python -c 'import spanmeter.collector, spanmeter.billing' 2>/dev/null; then
  echo "installing spanmeter and its dependencies into .venv (first run takes a minute)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$wanted" > "$stamp"
fi

# The compiled metering core (native/: Rust, PyO3, built by maturin) when a Rust toolchain is present; without
# one spanmeter meters in pure Python (and says so at start). Rebuilt when its sources change.
native_stamp=.venv/.spanmeter-native
native_wanted=$(cat native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src/*.rs | cksum)
if command -v cargo >/dev/null 2>&1; then
  if [ "$(cat "$native_stamp" 2>/dev/null || true)" != "$native_wanted" ] || ! .venv/bin/python -c 'import spanmeter_native' 2>/dev/null; then
    echo "building the native metering core (native/, Rust; the first build takes a minute or two)"
    if .venv/bin/python -m pip install --quiet ./native; then
      echo "$native_wanted" > "$native_stamp"
    else
      echo "the native metering core did not build: spanmeter meters in pure Python (see the pip output above)" >&2
    fi
  fi
else
  echo "no Rust toolchain (cargo): spanmeter meters in pure Python; install Rust (rustup) and rerun for the native core"
fi
