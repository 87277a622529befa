"""Shared fixtures: a temp data dir for every test, and no real provider calls."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Any LLM call to a non-loopback endpoint fails, in this process and every Ray worker.
os.environ["LETTA_RAY_OFFLINE_LLM"] = "1"
# Ray tries a failing runtime environment (a tool's pip_requirements) three times by
# default; once is enough to see that it fails.
os.environ.setdefault("RUNTIME_ENV_RETRY_TIMES", "1")
# Ray's processes report metrics every 10 s by default; every second keeps the metrics tests short.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")


@pytest.fixture(autouse=True)
def _no_real_llm(monkeypatch):
    """And in this process, litellm itself refuses non-loopback calls (belt and braces)."""
    from letta_ray.testing import forbid_real_llm_calls

    if "litellm" in __import__("sys").modules:
        forbid_real_llm_calls(monkeypatch)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    """Every test gets its own LETTA_RAY_HOME, so nothing leaks into ~/.letta_ray."""
    home = tmp_path / "letta_ray_home"
    monkeypatch.setenv("LETTA_RAY_HOME", str(home))
    return home


# --------------------------------------------------------------------------- Ray tier


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, on 127.0.0.1 only (starting Ray costs ~5 s)."""
    import ray

    from letta_ray.actors.runtime import init_ray
    from letta_ray.settings import Settings

    # The product's own start-up path, so the loopback test checks what users get.
    init_ray(Settings(num_cpus=2, namespace="letta_ray_tests"))
    yield ray
    ray.shutdown()


def remembering_responder(messages, info):
    """The fake model of the runtime tests: 'remember X' goes into the human block, else echo."""
    from letta_ray.testing import echo_responder, last_user_text, send_message, tool_call

    last = messages[-1]
    text = last_user_text(messages)
    if "sleep-time memory agent" in str(messages[0].get("content")):
        if last.get("role") == "tool":
            return tool_call("memory_finish_edits")
        turns = text.count("\nuser: ")
        # slow on purpose: the main agent's replies must not wait for it
        return _after(1.0, tool_call("memory_rethink", label="human",
                                     new_memory=f"Name: Ada (reviewed by the sleep-time agent, {turns} turns)",
                                     request_heartbeat=True))
    if last.get("role") == "user" and text.startswith("remember "):
        return tool_call("memory_insert", label="human", new_str=text.removeprefix("remember "),
                         request_heartbeat=True)
    if last.get("role") == "user" and text.startswith("ask agent-"):
        _, target, question = text.split(" ", 2)
        return tool_call("send_message_to_agent_and_wait_for_reply", message=question, other_agent_id=target,
                         request_heartbeat=True)
    if last.get("role") == "user" and text.startswith("call "):  # "call <tool> <json arguments>"
        _, name, arguments = text.split(" ", 2)
        return tool_call(name, **json.loads(arguments), request_heartbeat=True)
    if last.get("role") == "user" and text.startswith("slowly "):  # a turn to cancel
        return _after(30.0, send_message("finally"))
    if last.get("role") == "user" and text.startswith("archive "):
        return tool_call("archival_memory_insert", content=text.removeprefix("archive "), tags=["note"],
                         request_heartbeat=True)
    if last.get("role") == "tool" and "send_message" in info.tool_names:
        return send_message("Done.")
    return echo_responder(messages, info)


async def _after(seconds, value):
    import asyncio

    await asyncio.sleep(seconds)
    return value


@pytest.fixture(scope="session")
def fake_llm_server():
    """A loopback OpenAI-compatible server: agents reach it through real litellm."""
    from letta_ray.fake_llm_server import FakeOpenAIServer

    with FakeOpenAIServer(remembering_responder) as server:
        yield server


@pytest.fixture(scope="session")
def runtime_home(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime_home")


@pytest.fixture(scope="session")
def client(ray_session, runtime_home):
    """A driver client on the shared Ray, one data dir for the session."""
    import letta_ray

    c = letta_ray.connect(home=str(runtime_home))
    yield c
    c.close()
