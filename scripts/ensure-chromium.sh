#!/usr/bin/env bash
# Chromium for the billing page's browser test (tests/test_api.py drives it with Playwright from PyPI, headless):
# Debian's `chromium` package at /usr/bin/chromium. Installed here when this runs as root with apt-get (CI does);
# otherwise the test stops with the install command.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium package for the billing page's browser test ..."
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    echo "apt-get could not install chromium: the billing page test will fail until it is installed" >&2
  fi
else
  echo "/usr/bin/chromium not found and cannot install it here (not root, or no apt-get)." >&2
  echo "Install it with: sudo apt-get update && sudo apt-get install -y chromium" >&2
fi
