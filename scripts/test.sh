#!/usr/bin/env bash
# Install letta_ray with its test dependencies into .venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "dev,local-embeddings"
# The web inspector's tests drive a real, headless Chromium: Debian's package, installed
# here when missing (as root, or with sudo); without it those tests say why they skip.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; } \
      || echo "note: could not install chromium; the browser tests will skip" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
