#!/usr/bin/env bash
# Install letta_ray with its test dependencies into .venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "dev,local-embeddings"
exec .venv/bin/python -m pytest -q "$@"
