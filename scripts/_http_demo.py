"""The conversation ``scripts/run.sh`` holds with an agent over the HTTP API (Letta's REST shape).

Creates an agent on the server at ``--url`` with the server's default model, tells it a
fact, asks for it back, and prints the transcript and the agent's ``human`` memory block.
Only the standard Letta routes are used, so any Letta client could do the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx

CONVERSATION = ["Hi! My name is Ada and I live in Lisbon.", "What is my name?"]
BLOCKS = [
    {"label": "human", "value": "",
     "description": "What you know about the user: their name, where they live, what they like."},
    {"label": "persona", "value": "I am a helpful assistant with a memory. I keep what I learn about "
     "the user in my human block and use it in later conversations."},
]


def _show(event: dict) -> None:
    kind = event.get("message_type")
    if kind == "reasoning_message":
        print(f"  thinking: {event.get('reasoning')}")
    elif kind == "tool_call_message":
        call = event.get("tool_call") or {}
        print(f"  -> {call.get('name')}({call.get('arguments')})")
    elif kind == "tool_return_message":
        try:
            text = json.loads(event.get("tool_return") or "{}").get("message")
        except (json.JSONDecodeError, AttributeError):
            text = event.get("tool_return")
        print(f"  <- {event.get('name') or 'tool'} ({event.get('status')}): {text}")
    elif kind == "assistant_message":
        print(f"agent> {event.get('content')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8283")
    parser.add_argument("--wait-s", type=float, default=600.0, help="how long to wait for the server to answer")
    args = parser.parse_args()
    http = httpx.Client(base_url=args.url, timeout=300.0)
    deadline = time.monotonic() + args.wait_s
    while True:
        try:
            if http.get("/v1/health/").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            print(f"the server at {args.url} did not answer within {args.wait_s:.0f}s", file=sys.stderr)
            return 1
        time.sleep(1.0)
    models = http.get("/v1/models/").json()
    print(f"model: {models[0]['handle'] if models else '(none: set a provider key)'}")
    created = http.post("/v1/agents/", json={"name": f"demo-{int(time.time())}", "memory_blocks": BLOCKS})
    if created.status_code >= 400:
        print(f"creating the agent failed ({created.status_code}): {created.text}", file=sys.stderr)
        return 1
    agent = created.json()
    print(f"agent {agent['name']} ({agent['id']})\n")
    for text in CONVERSATION:
        print(f"you> {text}")
        started = time.perf_counter()
        reply = http.post(f"/v1/agents/{agent['id']}/messages", json={"messages": [{"role": "user", "content": text}]})
        if reply.status_code >= 400:
            print(f"the turn failed ({reply.status_code}): {reply.text}", file=sys.stderr)
            return 1
        body = reply.json()
        for event in body["messages"]:
            _show(event)
        stop = (body.get("stop_reason") or {}).get("stop_reason")
        print(f"  [{stop}, {time.perf_counter() - started:.1f}s]\n")
    block = http.get(f"/v1/agents/{agent['id']}/core-memory/blocks/human").json()
    print(f"the agent's human block, as it edited it:\n---\n{block['value'] or '(empty)'}\n---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
