"""The ``letta-ray`` command, run in-process with CliRunner on the shared local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from letta_ray.cli import app
from letta_ray.cli.demo import demo_responder
from letta_ray.schemas import LLMConfig
from letta_ray.settings import PROVIDER_KEYS
from letta_ray.testing import CallInfo

runner = CliRunner()


def cli(home: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(app, ["--home", str(home), *args], input=input)


def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env, _ in PROVIDER_KEYS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv("LETTA_RAY_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("LETTA_RAY_LOCAL_LLM", "0")  # as if the local-llm extra were not installed


# --------------------------------------------------------------------------- no Ray


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("run", "agents", "export-parquet", "import", "export"):
        assert command in result.output
    result = runner.invoke(app, ["agents", "--help"])
    assert result.exit_code == 0
    assert all(c in result.output for c in ("list", "show", "delete"))


def test_importing_the_cli_does_not_import_ray() -> None:
    code = "import sys, letta_ray.cli; print('ray' in sys.modules, 'litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _info(*tools: str) -> CallInfo:
    schemas = [{"type": "function", "function": {"name": t}} for t in tools]
    return CallInfo(schemas, LLMConfig(model="letta-ray-demo"), None, 0)


def _system(human: str) -> dict[str, Any]:
    return {"role": "system", "content": f"...<human>\n<metadata>\n</metadata>\n<value>\n{human}\n</value>\n</human>"}


def test_demo_responder_stores_facts_then_confirms() -> None:
    info = _info("send_message", "memory_insert")
    messages = [_system(""), {"role": "user", "content": "Hi! My name is Ada and I live in Lisbon."}]
    first = demo_responder(messages, info)
    [call] = first.tool_calls
    assert call.name == "memory_insert"
    assert json.loads(call.arguments)["new_str"] == "Name: Ada\nLives in Lisbon"

    openai_call = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    messages += [{"role": "assistant", "content": first.content, "tool_calls": [openai_call]},
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"status": "OK", "message": "ok"})}]
    [reply] = demo_responder(messages, info).tool_calls
    assert reply.name == "send_message"
    assert json.loads(reply.arguments)["message"].startswith("Nice to meet you, Ada!")


def test_demo_responder_reads_memory_back_and_echoes_the_rest() -> None:
    info = _info("send_message", "memory_insert")
    known = [_system("1→ Name: Ada")]
    asked = demo_responder([*known, {"role": "user", "content": "What do you know about me?"}], info)
    assert "Name: Ada" in json.loads(asked.tool_calls[0].arguments)["message"]
    again = demo_responder([*known, {"role": "user", "content": "my name is Ada"}], info)
    assert again.tool_calls[0].name == "send_message"  # already known: no second insert
    echo = demo_responder([*known, {"role": "user", "content": "nice weather"}], info)
    assert json.loads(echo.tool_calls[0].arguments)["message"] == "You said: nice weather"


# --------------------------------------------------------------------------- on Ray


@pytest.mark.ray
def test_run_with_messages_prints_reply_and_stop_reason(ray_session: Any, fake_llm_server: Any,
                                                        tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--model", "fake-model", "--model-endpoint", fake_llm_server.url,
                 "--message", "hello there", "--message", "remember likes green tea")
    assert result.exit_code == 0, result.output
    assert "fake-model" in result.output and "--model given" in result.output
    assert "assistant> You said: hello there" in result.output
    assert "[end_turn]" in result.output and "tokens" in result.output
    assert '→ memory_insert(label="human", new_str="likes green tea")' in result.output
    assert "human (edited)" in result.output


@pytest.mark.ray
def test_run_demo_without_a_key_falls_back_and_edits_memory(ray_session: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    no_provider_keys(monkeypatch)
    result = cli(tmp_path, "run", "--demo", "--message", "my name is Ada")
    assert result.exit_code == 0, result.output
    assert "export OPENAI_API_KEY" in result.output and "--model ollama/llama3" in result.output
    assert "built-in demo model" in result.output
    assert "→ memory_insert" in result.output
    assert "human (edited)" in result.output and "Name: Ada" in result.output
    assert "assistant> Nice to meet you, Ada!" in result.output
    assert "[end_turn]" in result.output


@pytest.mark.ray
def test_run_without_a_key_or_demo_says_how_to_set_one(ray_session: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    no_provider_keys(monkeypatch)
    result = cli(tmp_path, "run", "--message", "hi")
    assert result.exit_code == 1
    assert "export OPENAI_API_KEY" in result.output and "letta-ray run --demo" in result.output


@pytest.mark.ray
def test_agents_list_show_chat_delete(ray_session: Any, fake_llm_server: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    no_provider_keys(monkeypatch)
    created = cli(tmp_path, "run", "--name", "sam", "--model", "fake-model", "--model-endpoint",
                  fake_llm_server.url, "--message", "remember lives in Porto")
    assert created.exit_code == 0, created.output

    listed = cli(tmp_path, "agents", "list")
    assert listed.exit_code == 0, listed.output
    assert "sam" in listed.output and "fake-model" in listed.output and "agent-" in listed.output
    assert "No agents" in cli(tmp_path, "agents", "list", "--tags", "nope").output

    shown = cli(tmp_path, "agents", "show", "sam")
    assert shown.exit_code == 0, shown.output
    assert "lives in Porto" in shown.output  # the human block
    assert "you> remember lives in Porto" in shown.output and "sam> Done." in shown.output

    # Interactive on stdin, the agent's own model (no key, no --model needed).
    chat = cli(tmp_path, "run", "--agent", "sam", input="hello\n/blocks\n/quit\n")
    assert chat.exit_code == 0, chat.output
    assert "the agent's own model" in chat.output
    assert "sam> You said: hello" in chat.output and "persona" in chat.output

    deleted = cli(tmp_path, "agents", "delete", "sam", "--yes")
    assert deleted.exit_code == 0, deleted.output
    gone = cli(tmp_path, "agents", "show", "sam")
    assert gone.exit_code == 1
    errors = [line for line in gone.output.splitlines() if line.strip()]
    assert errors == ["Error: agent 'sam' not found"]


@pytest.mark.ray
def test_unknown_agent_id_is_one_red_line(ray_session: Any, tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--agent", "agent-does-not-exist", "--message", "hi")
    assert result.exit_code == 1
    assert "not found" in result.output and "Traceback" not in result.output


@pytest.mark.ray
def test_export_parquet_writes_files_with_row_counts(ray_session: Any, fake_llm_server: Any,
                                                     tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "run", "--model", "fake-model", "--model-endpoint", fake_llm_server.url,
               "--message", "hi").exit_code == 0
    out = tmp_path / "export"
    result = cli(home, "export-parquet", "--out", str(out))
    assert result.exit_code == 0, result.output
    files = {p.stem for p in out.glob("*.parquet")}
    assert {"agents", "messages", "blocks"} <= files
    import pyarrow.parquet as pq

    agents_rows = pq.read_metadata(out / "agents.parquet").num_rows
    assert agents_rows == 1
    rows = {cells[0]: cells[1] for line in result.output.splitlines()
            if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 4}
    assert rows["agents"] == "1" and rows["messages"] == str(pq.read_metadata(out / "messages.parquet").num_rows)



@pytest.mark.ray
def test_import_then_export_an_agent_file(ray_session: Any, tmp_path: Path) -> None:
    fixture = Path(__file__).with_name("fixtures") / "agent-files" / "deep_research_agent.af"
    result = cli(tmp_path, "import", str(fixture), "--name", "scout", "--secret", "TAVILY_API_KEY=k")
    assert result.exit_code == 0, result.output
    assert "Imported agent scout (agent-" in result.output
    out = tmp_path / "scout.af"
    result = cli(tmp_path, "export", "scout", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["agents"][0]["name"] == "scout"
    assert doc["agents"][0]["secrets"] == {"TAVILY_API_KEY": ""}  # never the value
    assert {b["label"] for b in doc["blocks"]} == {"human", "persona", "research_citations", "research_plan"}
    bad = cli(tmp_path, "import", str(tmp_path / "missing.af"))
    assert bad.exit_code != 0 and "cannot read the agent file" in bad.output


@pytest.mark.ray
def test_status_shows_the_store_lag_and_no_snapshots(ray_session: Any, tmp_path: Path) -> None:
    shown = cli(tmp_path, "status")
    assert shown.exit_code == 0, shown.output
    assert "agents placed" in shown.output  # the hosts table (empty: an embedded runtime starts afresh)
    assert "journaled bytes not yet applied" in shown.output and "turns applied" in shown.output
    assert "Snapshots: none (no object store" in shown.output
    # without an object store there is nothing to snapshot to: one red line
    snap = cli(tmp_path, "snapshot")
    assert snap.exit_code == 1 and "no object store is configured" in snap.output and "Traceback" not in snap.output
