# Sourced by run.sh and test.sh: make .venv (if missing) and install letta_ray with the extras in $1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$1]"
export LITELLM_LOCAL_MODEL_COST_MAP=True RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
