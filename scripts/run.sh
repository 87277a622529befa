#!/usr/bin/env bash
# Install letta_ray into .venv and run the main job on the embedded defaults:
# a local Ray on 127.0.0.1, the data directory ~/.letta_ray, and the model of the first
# provider key found in the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).
# With no key and no network it runs the built-in offline demo model instead.
# Usage: bash scripts/run.sh [letta-ray run options...]
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "local"
exec .venv/bin/letta-ray run --demo "$@"
