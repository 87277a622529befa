"""Importing and exporting agent files: seconds per agent, for one file of many agents.

The file is customer_service.af (a real Letta agent file, tests/fixtures) with its agent
copied N times (new file-local ids; each copy with its 2 blocks, 7 tools and M history
messages). Printed, medians of the repeats, in one run:
- import: ``client.import_agent_file`` of the whole file (parse, plan, tools, agents,
  messages, all or nothing), per agent;
- export: ``client.export_agent_file`` of each imported agent, per agent;
- baseline: ``client.create_agents`` of N agents of the same shape (blocks, tools) and the
  same number of messages, without a file, per agent: what creating the agents costs anyway
  (the import's own work is the difference).

Run: .venv/bin/python bench/agent_files.py [--agents 100] [--messages 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "agent-files" / "customer_service.af"


def many_agents_file(agents: int, messages: int) -> dict[str, Any]:
    doc = json.loads(FIXTURE.read_text())
    doc = json.loads(doc) if isinstance(doc, str) else doc
    [template] = doc["agents"]
    out = []
    counter = 0
    for i in range(agents):
        agent = copy.deepcopy(template)
        agent["id"] = f"agent-{i}"
        agent["name"] = f"cs-{i}"
        system = dict(agent["messages"][0], id=f"message-{counter}")
        counter += 1
        history = []
        for j in range(messages):
            role = "user" if j % 2 == 0 else "assistant"
            history.append({"id": f"message-{counter}", "role": role, "created_at": system["created_at"],
                            "content": [{"type": "text", "text": f"{role} says {j} to agent {i}"}]})
            counter += 1
        agent["messages"] = [system, *history]
        agent["in_context_message_ids"] = [system["id"], *(m["id"] for m in history[-10:])]
        out.append(agent)
    doc["agents"] = out
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20, help="history messages per agent")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import letta_ray
    from letta_ray.messages import Message

    doc = many_agents_file(args.agents, args.messages)
    client = letta_ray.connect(home=tempfile.mkdtemp(prefix="letta-ray-bench-af-"))
    imports, exports, baselines = [], [], []
    try:
        client.import_agent_file(json.loads(json.dumps(many_agents_file(1, 0))))  # warm: tools stored, hosts up
        for _ in range(args.repeats):
            started = time.perf_counter()
            handles = client.import_agent_file(doc)
            imports.append((time.perf_counter() - started) / args.agents)
            assert len(handles) == args.agents
            started = time.perf_counter()
            for handle in handles:
                client.export_agent_file(handle.id)
            exports.append((time.perf_counter() - started) / args.agents)
            states = [client.build_agent_state(f"plain-{k}", model="openai/gpt-4o-mini",
                                               memory_blocks=[{"label": "human", "value": "x"},
                                                              {"label": "persona", "value": "y"}],
                                               tools=["cancel_order", "escalate"])
                      for k in range(args.agents)]
            messages = [[Message(agent_id=st.id, role="user" if j % 2 == 0 else "assistant",
                                 content=f"says {j} to agent {k}") for j in range(args.messages + 1)]
                        for k, st in enumerate(states)]
            for st, batch in zip(states, messages, strict=True):
                st.message_ids = [m.id for m in batch[-10:]]
            started = time.perf_counter()
            client.run_sync(client.create_agents_async(
                states, context=[b[-10:] for b in messages], history=[b[:-10] for b in messages]))
            baselines.append((time.perf_counter() - started) / args.agents)
    finally:
        client.close()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.2f} ms"

    print(f"\nagent files bench — {os.cpu_count()} CPUs, one file of {args.agents} agents "
          f"({args.messages} history messages each), medians of {args.repeats}, per agent")
    print(f"  import                      {ms(imports)}")
    print(f"  export                      {ms(exports)}")
    print(f"  baseline: create_agents     {ms(baselines)}   (same blocks, tools and messages, no file)")
    print(f"  import / baseline           {statistics.median(imports) / statistics.median(baselines):8.2f}x")


if __name__ == "__main__":
    main()
