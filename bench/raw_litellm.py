"""Baseline: plain ``litellm.acompletion`` against the loopback FakeOpenAIServer.

    python bench/raw_litellm.py [--calls 300] [--repeats 3]

Prints sequential latency (median, p99) and throughput with 8 and 64 concurrent
callers: the floor under any letta_ray agent step that goes through litellm; then one
run of the same calls through ``letta_ray.llm.LiteLLM.complete`` for comparison. Measured
twice: with the fake server in a thread of this process (as the tests run it, sharing
the GIL) and in a child process (closer to a real provider).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_MESSAGES,
    SEND_MESSAGE_TOOL,
    format_result,
    measure_calls,
    measure_raw_litellm,
    spawned_fake_server,
)

from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.llm import LiteLLM
from letta_ray.schemas import LLMConfig


async def run(label: str, url: str, calls: int, repeats: int) -> None:
    print(f"== fake server {label}")
    await measure_raw_litellm(url, 50, 8)  # warm up: imports, pools, caches
    for concurrency in (1, 8, 64):
        runs = [await measure_raw_litellm(url, calls, concurrency) for _ in range(repeats)]
        median = {key: statistics.median(run[key] for run in runs) for key in ("median_ms", "p99_ms", "calls_per_s")}
        print(format_result(f"concurrency={concurrency}", {"n": calls, **median}))
    # The same calls through letta_ray's boundary: what LiteLLM.complete adds on top.
    llm, config = LiteLLM(), LLMConfig(model="fake-model", model_endpoint=url)
    for concurrency in (1, 64):
        result = await measure_calls(
            lambda: llm.complete(BENCH_MESSAGES, [SEND_MESSAGE_TOOL], config), calls, concurrency
        )
        print(format_result(f"LiteLLM.complete, conc={concurrency}", result))


async def main(calls: int, repeats: int) -> None:
    print(f"raw litellm.acompletion, {calls} calls per run, median of {repeats} runs")
    with FakeOpenAIServer(keep_requests=0) as server:
        await run("in-process (thread)", server.url, calls, repeats)
    with spawned_fake_server() as url:
        await run("in a child process", url, calls, repeats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeats))
