"""A supervisor group: a lead fans a question out to three specialists and sums up.

Runs end to end with no provider and no network: the agents think with a scripted fake
model served by ``FakeOpenAIServer`` on 127.0.0.1 and reached through the real litellm
path. The lead calls ``send_message_to_all_agents_in_group``; each worker answers in
character from its persona block; the lead replies with a summary of their answers.

Run: .venv/bin/python examples/supervisor.py
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import letta_ray
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.messages import AssistantMessage, ReasoningMessage, ToolCallMessage, ToolReturnMessage
from letta_ray.testing import last_user_text, send_message, tool_call

PERSONAS = {
    "lead": "I am lead, the release manager. I ask my specialists and decide.",
    "sec": "I am sec, the security reviewer. I worry about secrets and access.",
    "perf": "I am perf, the performance engineer. I watch latency and memory.",
    "docs": "I am docs, the technical writer. I check that users can follow the change.",
}
VERDICTS = {
    "sec": "no secrets in the diff and the new endpoint checks its token: fine by me.",
    "perf": "p50 latency is unchanged and memory per agent is flat: ship it.",
    "docs": "the README example needs one more line about the new flag; otherwise good.",
}


def fake_model(messages: list[dict[str, Any]], info: Any) -> Any:
    """Who is speaking comes from the persona block in the system prompt."""
    me = re.search(r"I am (\w+),", messages[0]["content"]).group(1)  # type: ignore[union-attr]
    last = messages[-1]
    if me == "lead":
        if last["role"] == "tool":  # the workers' replies came back: sum them up
            replies = json.loads(last["content"])["message"].splitlines()
            return send_message(f"Heard from {len(replies)} specialists; all agree to release once the "
                                "README line is added.")
        return tool_call("send_message_to_all_agents_in_group",
                         message=f"Your verdict, please: {last_user_text(messages)}", request_heartbeat=True)
    return send_message(f"As {me}: {VERDICTS[me]}")


def show(event: Any) -> str:
    if isinstance(event, AssistantMessage):
        return f"says: {event.content}"
    if isinstance(event, ToolCallMessage):
        return f"calls {event.tool_call.name}({event.tool_call.arguments})"
    if isinstance(event, ToolReturnMessage):
        lines = json.loads(event.tool_return)["message"].splitlines()
        return f"gets back from {event.name}:" + "".join(f"\n      {line}" for line in lines)
    if isinstance(event, ReasoningMessage):
        return f"thinks: {event.reasoning}"
    return event.message_type


def main() -> None:
    with FakeOpenAIServer(fake_model) as server, tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)
        try:
            def agent(name: str) -> Any:
                return client.create_agent(name, model="fake-model", model_endpoint=server.url,
                                           memory_blocks=[{"label": "persona", "value": PERSONAS[name]}])

            lead = agent("lead")
            workers = [agent(name) for name in ("sec", "perf", "docs")]
            groups = client.groups
            group = groups.create_group([w.id for w in workers],
                                        {"manager_type": "supervisor", "manager_agent_id": lead.id},
                                        description="release council")
            print(f"group {group.id}: {lead.name} supervises {', '.join(w.name for w in workers)}\n")

            response = groups.send_group(group.id, "Can we release 0.2 today?")
            names = {a.id: a.name for a in (lead, *workers)}
            for event in response.messages:  # each event's sender_id says whose it is
                print(f"[{names[event.sender_id or '']}] {show(event)}")
            print(f"\nstop reason: {response.stop_reason.stop_reason}; lead's tokens: {response.usage.total_tokens}")
            groups.delete_group(group.id)
        finally:
            client.close()


if __name__ == "__main__":
    main()
