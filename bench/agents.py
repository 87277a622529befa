"""Agents on Ray: creation rate, memory per idle agent, step overhead, throughput.

Prints, in one run against a loopback fake LLM (in its own process):
- agents created per second in packed placement (bulk ``create_agents`` and concurrent
  single ``create_agent_async`` calls);
- resident memory (USS) of the whole Ray session per idle agent, with 1,000 created;
- latency of one message through an ``AgentHandle`` next to a raw litellm call to the
  same fake server (the baseline), and their ratio;
- messages per second with many agents sending at once, next to the raw litellm
  ceiling at the same concurrency.

Run: .venv/bin/python bench/agents.py [--agents 1000] [--sends 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    FAKE_SERVER_MODULE,
    cmdline,
    measure_raw_litellm,
    percentile,
    session_pids,
    spawned_fake_server,
    total_uss,
)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=300)
    args = parser.parse_args()

    import letta_ray

    with spawned_fake_server() as url, tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)
        fake_server_pids = {p for p in session_pids() if p != os.getpid() and cmdline(p).find(FAKE_SERVER_MODULE) >= 0}

        def spec(i: int) -> letta_ray.AgentState:
            return client.build_agent_state(
                f"agent-{i}", model="fake-model", model_endpoint=url,
                memory_blocks=[{"label": "human", "value": f"Person {i}"}, {"label": "persona", "value": "I help."}])

        # warm up: hosts, litellm import in each host, one turn each
        warm = client.create_agents([spec(-i) for i in range(1, 5)])
        for handle in warm:
            handle.send("warm up")
        baseline_uss = total_uss(fake_server_pids)

        # --- creation rate, bulk
        states = [spec(i) for i in range(args.agents)]
        started = time.perf_counter()
        handles = []
        for chunk in range(0, len(states), 250):
            handles += client.create_agents(states[chunk: chunk + 250])
        bulk_rate = args.agents / (time.perf_counter() - started)

        # --- creation rate, concurrent single calls
        async def create_many(n: int) -> float:
            t0 = time.perf_counter()
            await asyncio.gather(*(client.create_agent_async(
                f"single-{i}", model="fake-model", model_endpoint=url) for i in range(n)))
            return n / (time.perf_counter() - t0)

        single_rate = client.run_sync(create_many(200))

        time.sleep(2.0)  # let allocators settle
        idle_uss = total_uss(fake_server_pids)
        per_agent = (idle_uss - baseline_uss) / (args.agents + 200)

        # --- one message through a handle vs raw litellm, sequential. 20 agents in turn,
        # so contexts stay conversation-sized (the raw baseline is measured twice: the
        # small default request, and the very prompt one of these agents sends).
        latencies = []
        for i in range(args.sends):
            t0 = time.perf_counter()
            handles[i % 20].send(f"message {i}")
            latencies.append(time.perf_counter() - t0)
        handle_median = statistics.median(latencies) * 1000
        raw = asyncio.run(measure_raw_litellm(url, n=args.sends, concurrency=1))
        prompt, tools = agent_prompt(handles[0])
        raw_same = asyncio.run(measure_raw_litellm(url, n=args.sends, concurrency=1, messages=prompt, tools=tools))

        # --- many agents sending at once
        async def burst(concurrency: int, n: int) -> float:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with sem:
                    await handles[i % len(handles)].send_async(f"burst {i}")

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return n / (time.perf_counter() - t0)

        rows = []
        for concurrency in (8, 64):
            rate = client.run_sync(burst(concurrency, args.sends))
            raw_c = asyncio.run(measure_raw_litellm(url, n=args.sends, concurrency=concurrency))
            rows.append((concurrency, rate, raw_c["calls_per_s"]))

        client.close()

    print(f"\nletta_ray agents bench — {os.cpu_count()} CPUs, fake LLM on loopback (own process)")
    print(f"  agents created/s, packed, bulk create_agents:        {bulk_rate:8.0f}   (target >= 500)")
    print(f"  agents created/s, packed, 200 concurrent singles:    {single_rate:8.0f}")
    print(f"  Ray session USS: {baseline_uss / 2**20:.0f} MiB before, {idle_uss / 2**20:.0f} MiB with "
          f"{args.agents + 200} more idle agents")
    print(f"  memory per idle agent:                               {per_agent / 1024:8.1f} KiB   "
          f"(1,000 agents = {per_agent * 1000 / 2**20:.1f} MiB; target < 1 GiB)")
    print(f"  one message via AgentHandle, median:                 {handle_median:8.2f} ms "
          f"(p90 {percentile(latencies, 90) * 1000:.2f} ms)")
    print(f"  raw litellm call to the same server, median:         {raw['median_ms']:8.2f} ms")
    print(f"  raw litellm with the agent's own prompt, median:     {raw_same['median_ms']:8.2f} ms "
          f"({len(prompt)} messages, {len(tools)} tools)")
    print(f"  ratio handle / raw litellm (small request):          {handle_median / raw['median_ms']:8.2f} x "
          f"(target <= 2)")
    print(f"  ratio handle / raw litellm (same prompt):            {handle_median / raw_same['median_ms']:8.2f} x")
    for concurrency, rate, raw_rate in rows:
        print(f"  messages/s, {concurrency:2d} agents sending at once:            {rate:8.0f}   "
              f"(raw litellm at the same concurrency: {raw_rate:.0f}/s, ratio {rate / raw_rate:.2f})")


def agent_prompt(handle: object) -> tuple[list[dict], list[dict]]:
    """The messages and tool schemas the agent's next LLM call would carry."""
    from letta_ray.base_tools import BASE_TOOLS, TERMINAL_TOOLS
    from letta_ray.context import compile_context
    from letta_ray.memory import MemoryStats
    from letta_ray.testing import estimate_tokens
    from letta_ray.tools import openai_schema

    class _Counter:
        def count_tokens(self, messages, config, tools=None):
            return estimate_tokens(messages, tools)

    state = handle.state()
    tools = [openai_schema(BASE_TOOLS[n].tool, with_heartbeat=n not in TERMINAL_TOOLS) for n in state.tools]
    compiled = compile_context(state, state.blocks, handle.context(), MemoryStats(), tools, _Counter())
    return compiled.messages, tools


if __name__ == "__main__":
    main()
