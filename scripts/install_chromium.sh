#!/usr/bin/env bash
# Test set-up for the MLflow UI browser test: Debian's chromium (headless). Skipped where it cannot be
# installed (no root or no apt); the test then skips with a message.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium for the MLflow UI test"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
    || echo "[setup] chromium could not be installed; the browser test will skip"
else
  echo "[setup] chromium not found and not installable here; the browser test will skip"
fi
exit 0
