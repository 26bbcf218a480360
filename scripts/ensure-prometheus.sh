#!/usr/bin/env bash
# promtool and the Prometheus server for the alert tests (tests/test_alerts.py, tests/test_prometheus_e2e.py):
# Debian's `prometheus` package. Installed here when this runs as root with apt-get (CI does); otherwise the
# tests stop with the install command. Nothing is started: the tests run their own Prometheus.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's prometheus package (promtool + server) for the alert tests ..."
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "apt-get could not install prometheus: the alert tests will fail until promtool is installed" >&2
  fi
  # the package may start a server of its own where an init system runs; the tests do not need it
  (command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus >/dev/null 2>&1) || true
else
  echo "promtool/prometheus not found and cannot install them here (not root, or no apt-get)." >&2
  echo "Install them with: sudo apt-get update && sudo apt-get install -y prometheus" >&2
  echo "(the alert tests will fail until then)" >&2
fi
