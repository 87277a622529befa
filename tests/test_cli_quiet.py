"""The terminal shows what the user came for: the real ``letta-ray`` command in a subprocess,
with no provider key and its own embedded Ray (~30 s a run, bounded at 90 s for a busy
machine), keeps Ray's, Serve's and litellm's logs in the log file (``--verbose`` brings them
back); ``sim`` with no key runs offline."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from letta_ray.cli.logfile import LOG_NAME
from letta_ray.settings import PROVIDER_KEYS, Settings, local_llm_available
from letta_ray.sim.cli import missing_key
from letta_ray.sim.config import AgentTemplate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENTRY = Path(sys.executable).with_name("letta-ray")  # the console script pip installed
COMMAND = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "letta_ray.cli"]
BANNER = re.compile(r"^logs:? (\S+); Ray's workers: (\S+) \(--verbose shows them here\)$", re.M)
# What reached the terminal before: Ray's driver, the agent hosts' litellm, Serve's driver and actors.
RAY_LINE = "Token authentication is enabled"
LITELLM_LINE = "register_model"
SERVE_LINES = ("Started Serve", "(ServeController pid=", "(ProxyActor pid=", "Application 'letta_ray' is ready")


def keyless_env(**extra: str) -> dict[str, str]:
    """This environment without a provider key, a default model or a Ray to join."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("LETTA_RAY_DEFAULT_MODEL", "LETTA_RAY_HOME",
                                                       "LETTA_RAY_RAY_ADDRESS", "RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, "LETTA_RAY_LOCAL_LLM": "0", **extra}


def letta_ray(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, "--home", str(home), *args], env=env or keyless_env(), capture_output=True,
                          text=True, timeout=timeout)


def banner(stdout: str) -> tuple[Path, Path]:
    found = BANNER.search(stdout)
    assert found, stdout
    return Path(found.group(1)), Path(found.group(2))


def logged_by_workers(folder: Path, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in folder.glob("worker-*.err"))


# --------------------------------------------------------------------------- no Ray


def test_the_sim_goes_offline_only_for_a_key_that_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for env, _ in PROVIDER_KEYS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv("LETTA_RAY_DEFAULT_MODEL", raising=False)
    settings = Settings()
    assert missing_key(AgentTemplate(model="openai/gpt-4o-mini"), settings) == "OPENAI_API_KEY"
    assert missing_key(AgentTemplate(model="anthropic/claude-3-5-haiku-latest"), settings) == "ANTHROPIC_API_KEY"
    assert missing_key(AgentTemplate(), settings) == "provider key"
    assert missing_key(AgentTemplate(model="openai/gpt-4o-mini", model_endpoint="http://127.0.0.1:9/v1"),
                       settings) is None  # a server of its own
    assert missing_key(AgentTemplate(model="ollama/llama3"), settings) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert missing_key(AgentTemplate(model="openai/gpt-4o-mini"), settings) is None
    assert missing_key(AgentTemplate(), settings) is None  # the key's model is the default


# --------------------------------------------------------------------------- the real command


def test_a_chat_keeps_ray_and_litellm_logs_in_the_log_file(tmp_path: Path) -> None:
    result = letta_ray(tmp_path / "home", "run", "--demo", "--message", "my name is Ada")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "assistant> Nice to meet you, Ada!" in result.stdout
    terminal = result.stdout + result.stderr
    for line in (RAY_LINE, LITELLM_LINE, "LiteLLM", "(AgentHost pid="):
        assert line not in terminal, terminal
    log_file, worker_logs = banner(result.stdout)
    assert log_file == tmp_path / "home" / "logs" / LOG_NAME
    assert RAY_LINE in log_file.read_text()
    assert logged_by_workers(worker_logs, LITELLM_LINE)  # the agent host's litellm warning stayed with Ray


def test_a_chat_with_verbose_shows_them(tmp_path: Path) -> None:
    result = letta_ray(tmp_path / "home", "run", "--demo", "--verbose", "--message", "my name is Ada")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "assistant> Nice to meet you, Ada!" in result.stdout
    assert RAY_LINE in result.stderr
    assert "(AgentHost pid=" in result.stderr and LITELLM_LINE in result.stderr
    assert not BANNER.search(result.stdout)


def test_serve_keeps_serve_logs_in_the_log_file(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*COMMAND, "--home", str(tmp_path / "home"), "serve", "--port", str(port)],
                            env=keyless_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any(line.startswith("logs: ") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    terminal = "".join(lines)
    assert "letta_ray HTTP API on" in terminal
    for line in (RAY_LINE, *SERVE_LINES):
        assert line not in terminal, terminal
    log_file, _ = banner(terminal)
    logged = log_file.read_text()
    assert RAY_LINE in logged and "Started Serve" in logged and "Application 'letta_ray' is ready" in logged


@pytest.mark.local_llm
@pytest.mark.skipif(not local_llm_available(), reason="needs the local-llm extra (llama.cpp + SmolLM2)")
def test_a_chat_with_the_local_model_keeps_serve_logs_in_the_log_file(tmp_path: Path) -> None:
    result = letta_ray(tmp_path / "home", "run", "--message", "hi", env=keyless_env(LETTA_RAY_LOCAL_LLM="1"),
                       timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local/smollm2-135m" in result.stdout and "[end_turn]" in result.stdout
    terminal = result.stdout + result.stderr
    for line in (RAY_LINE, LITELLM_LINE, *SERVE_LINES):
        assert line not in terminal, terminal
    log_file, _ = banner(result.stdout)
    assert "Started Serve" in log_file.read_text()


def test_the_sim_without_a_key_runs_offline(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = letta_ray(tmp_path / "home", "sim", str(EXAMPLES / "town.yaml"), "--rounds", "1", "--no-progress",
                       "--out", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no OPENAI_API_KEY: running offline on the scripted town model" in result.stdout
    assert "set OPENAI_API_KEY to use openai/gpt-4o-mini" in result.stdout
    assert "40 agents ready" in result.stdout
    terminal = result.stdout + result.stderr
    assert RAY_LINE not in terminal and "LiteLLM" not in terminal, terminal
    metrics = pq.read_table(run_dir / "metrics").to_pylist()
    assert [(r["round"], r["active_agents"], r["errors"]) for r in metrics] == [(1, 40, 0)]
    assert metrics[0]["llm_calls"] >= 40 and metrics[0]["messages_delivered"] > 0
