"""Schema fuzzing: schemathesis drives every operation of the server's own OpenAPI spec with
generated requests against ``letta-ray serve`` on 127.0.0.1, bounded in examples and time.

Checked on every response: no server error (5xx), the status code is one the spec
documents, the body matches the spec's schema, the content type and headers are the
documented ones, and a 405 names the path's methods. (Whether every schema-valid request
is accepted and every schema-violating one refused, schemathesis's
``positive_data_acceptance`` and ``negative_data_rejection``, is not yet clean: issue 18.)

``LETTA_RAY_FUZZ_EXAMPLES`` and ``LETTA_RAY_FUZZ_SECONDS`` make it longer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from letta_ray.local_cluster import free_port, start_serve

EXAMPLES = int(os.environ.get("LETTA_RAY_FUZZ_EXAMPLES", "5"))
SECONDS = int(os.environ.get("LETTA_RAY_FUZZ_SECONDS", "90"))
CHECKS = ["not_a_server_error", "status_code_conformance", "response_schema_conformance",
          "content_type_conformance", "response_headers_conformance", "allow_header_conformance"]

pytestmark = pytest.mark.timeout(SECONDS + 300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server of its own: what the fuzzer creates stays out of the other tests' data."""
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {**os.environ, "LETTA_RAY_HOME": str(home / "home"),
           "LETTA_RAY_MCP_STDIO": "0",  # no commands from generated MCP server configs
           "PIP_NO_INDEX": "1", "LETTA_RAY_TOOL_INSTALL_TIMEOUT_S": "20"}  # tools' pip_requirements fail fast
    log = home / "serve.log"
    proc = start_serve(port, env, log)
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_every_operation_answers_as_its_schema_says(server: tuple[str, Path], tmp_path: Path) -> None:
    url, log = server
    report = tmp_path / "schemathesis.txt"
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
               "--checks", ",".join(CHECKS), "--max-examples", str(EXAMPLES), "--max-time", str(SECONDS),
               "--request-timeout", "60", "--seed", "1", "--no-color"]
    # in tmp_path: schemathesis keeps a cache (.schemathesis/) in its working directory
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 240, cwd=tmp_path)
    report.write_text(result.stdout + result.stderr)
    summary = result.stdout[result.stdout.find("SUMMARY"):] if "SUMMARY" in result.stdout else result.stdout[-3000:]
    print(summary)
    assert "Tested: " in result.stdout and "Selected: " in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-2000:]}\nserver log: {log}"
