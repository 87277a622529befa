"""MetadataStore write costs: bulk agent creation, the per-turn commit, upsert_agent.

Prints medians, in one run, against a DuckDB file in a temp dir:
- per-agent cost of ``create_agents`` with 1,000 and with 10,000 agents per call;
- ``commit_turn`` with 3 messages (user, tool call, tool result): each call its own
  transaction (a durable commit each), and 20 calls per transaction as the store actor
  group-commits concurrent turns; without and with an edited block;
- ``upsert_agent`` of a new agent and of a changed one, each its own transaction;
- ``append_messages`` of 10,000 messages in one call;
- one DuckDB statement with 10 parameters as installed (pandas importable: DuckDB looks
  it up for every parameter) and with pandas blocked (no lookup at all: the floor), each
  in a fresh process.

Run: .venv/bin/python bench/store.py [--turns 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS
from letta_ray.messages import Message, ToolCall
from letta_ray.schemas import AgentState, Block, LLMConfig, utcnow
from letta_ray.storage.metadata import MetadataStore

GROUP = 20  # turns per transaction in the group-committed figure

_STATEMENT_PROBE = """
import statistics, sys, time
if sys.argv[1] == "blocked":
    sys.modules["pandas"] = None  # any import of it fails at once
import duckdb
conn = duckdb.connect()
conn.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, a VARCHAR, b VARCHAR, c BIGINT, d VARCHAR, e VARCHAR, "
             "f VARCHAR, g BIGINT, h VARCHAR, i VARCHAR)")
sql = "SELECT count(*) FROM t WHERE " + " OR ".join(f"{c} = ?" for c in "kabcdefghi")
params = ["x", "y", "z", 1, "w", "v", "u", 2, "s", "r"]
times = []
for _ in range(2000):
    started = time.perf_counter()
    conn.execute(sql, params).fetchone()
    times.append(time.perf_counter() - started)
print(statistics.median(times) * 1000)
"""


def make_agent(i: int) -> AgentState:
    return AgentState(
        name=f"agent{i}",
        system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
        tools=DEFAULT_TOOLS["memgpt_v2_agent"],
        blocks=[Block(label="persona", value="I am a helpful assistant with memory."),
                Block(label="human", value=f"Name: user {i}")],
        llm_config=LLMConfig(model="openai/gpt-4o-mini"),
    )


def turn_messages(agent_id: str, n: int) -> list[Message]:
    call = ToolCall(name="send_message", arguments=json.dumps({"message": f"Reply number {n}, as asked."}))
    return [
        Message(agent_id=agent_id, role="user", content=f"Message number {n}: how was your day?"),
        Message(agent_id=agent_id, role="assistant", content="The user asks about my day.", tool_calls=[call]),
        Message(agent_id=agent_id, role="tool", name="send_message", tool_call_id=call.id,
                content='{"status": "OK", "message": "None", "time": "2025-01-01 10:00:00 AM UTC+0000"}'),
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def per_call(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_create(store: MetadataStore, n: int, repeats: int) -> float:
    """Median per-agent cost of create_agents(n agents)."""
    costs = []
    for r in range(repeats):
        agents = [make_agent(r * n + i) for i in range(n)]
        costs.append(per_call(lambda agents=agents: store.create_agents(agents)) / n)
    return statistics.median(costs)


def bench_turns(store: MetadataStore, turns: int, *, edit: bool, grouped: bool) -> float:
    """Median cost of one commit_turn with 3 messages, on agents that already exist."""
    agents = [make_agent(i) for i in range(100)]
    store.create_agents(agents)
    work = []
    for n in range(turns):
        state = agents[n % len(agents)]
        messages = turn_messages(state.id, n)
        edited = []
        if edit:
            human = state.blocks[1].with_value(f"Name: user {n % len(agents)}\nLikes: tea ({n})")
            state, edited = state.replace_block(human), [human]
        state = state.model_copy(update={"message_ids": [*state.message_ids[-27:], *(m.id for m in messages)],
                                         "updated_at": utcnow()})
        agents[n % len(agents)] = state
        work.append((state, messages, edited))
    if not grouped:
        return statistics.median(per_call(lambda w=w: store.commit_turn(*w)) for w in work)

    def batch(chunk: list[tuple[AgentState, list[Message], list[Block]]]) -> None:
        with store.transaction():
            for w in chunk:
                store.commit_turn(*w)

    return statistics.median(
        per_call(lambda i=i: batch(work[i: i + GROUP])) / GROUP for i in range(0, len(work), GROUP)
    )


def bench_append(store: MetadataStore, n: int, repeats: int) -> float:
    """Median seconds of one append_messages call of ``n`` messages."""
    costs = []
    for r in range(repeats):
        messages = [Message(agent_id=f"agent-{r}", role="user", content=f"message {i} with some words in it")
                    for i in range(n)]
        costs.append(per_call(lambda messages=messages: store.messages.append_messages(messages)))
    return statistics.median(costs)


def bench_upsert(store: MetadataStore, calls: int) -> tuple[float, float]:
    """Median upsert_agent cost: a new agent, then the same agents with a changed summary."""
    agents = [make_agent(i) for i in range(calls)]
    new = statistics.median(per_call(lambda a=a: store.upsert_agent(a)) for a in agents)
    changed = [a.model_copy(update={"summary": "They talked about tea.", "updated_at": utcnow()}) for a in agents]
    existing = statistics.median(per_call(lambda a=a: store.upsert_agent(a)) for a in changed)
    return new, existing


def statement_cost(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _STATEMENT_PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip()) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=2000, help="commit_turn calls per figure")
    parser.add_argument("--upserts", type=int, default=500, help="upsert_agent calls per figure")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        def fresh(name: str) -> MetadataStore:
            return MetadataStore(Path(tmp) / f"{name}.duckdb")

        print("create_agents (bulk, one call, its own transaction), per agent:")
        with fresh("create") as store:
            store.create_agents([make_agent(-1)])  # warm up
            print(f"  1,000 agents per call:  {ms(bench_create(store, 1_000, 5))}  (median of 5 calls)")
            print(f"  10,000 agents per call: {ms(bench_create(store, 10_000, 3))}  (median of 3 calls)")

        print(f"commit_turn, 3 messages, median of {args.turns:,} calls:")
        for edit in (False, True):
            label = "+ 1 edited block" if edit else "no block edited "
            with fresh(f"turns-{edit}-own") as store:
                own = bench_turns(store, args.turns, edit=edit, grouped=False)
            with fresh(f"turns-{edit}-grouped") as store:
                grouped = bench_turns(store, args.turns, edit=edit, grouped=True)
            print(f"  {label}  own transaction: {ms(own)}   {GROUP} per transaction: {ms(grouped)} per turn")

        with fresh("append") as store:
            print(f"append_messages, 10,000 messages in one call: {ms(bench_append(store, 10_000, 3))} "
                  "(median of 3 calls)")

        print(f"upsert_agent, its own transaction, median of {args.upserts:,} calls:")
        with fresh("upsert") as store:
            new, existing = bench_upsert(store, args.upserts)
        print(f"  new agent: {ms(new)}   changed agent: {ms(existing)}")

    print("one DuckDB statement with 10 parameters (fresh process each):")
    print(f"  as installed (pandas importable): {ms(statement_cost('installed'))}"
          f"   pandas blocked (the floor): {ms(statement_cost('blocked'))}")


if __name__ == "__main__":
    main()
