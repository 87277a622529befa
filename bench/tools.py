"""The tool sandbox's cost per call: warm and cold, against running the tool in-process.

Prints p50/p99 in milliseconds, in one run, of one call of a small tool (it adds two
numbers and writes a line to stdout):
- in-process: the tool function run by ``letta_ray.tools.run_tool`` in this process, as
  agent hosts ran user tools before the sandbox (the baseline);
- sandbox, warm: ``ToolSandbox.call`` from this process, the tool's worker already started:
  what an agent host does (it calls its own sandbox's workers directly, no Ray hop);
- in a pip environment, warm: the same, the worker on the interpreter of a tool
  environment Ray built (``pip_requirements``; built before the timing starts);
- cold, with a spare: the first call of a new tool, a spare worker already started;
- cold, no spare: the first call of a new tool when a worker must be started for it.
The added latency (sandbox minus in-process) is what a tool call costs a turn.

Run: .venv/bin/python bench/tools.py [--calls 300] [--cold 10]
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

from _common import percentile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

SOURCE = '''
def add(a: int, b: int) -> str:
    """Add two numbers.

    Args:
        a: the first
        b: the second
    """
    print("adding", a, b)
    return str(a + b)
'''


def fresh_source(i: int) -> str:
    return SOURCE.replace("def add(", f"def add_{i}(")


def row(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"  {label:<34} p50 {statistics.median(ms):8.2f} ms   p99 {percentile(ms, 99):8.2f} ms   (n={len(ms)})"


async def timed(calls: int, call: object) -> list[float]:
    out = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)  # type: ignore[operator]
        out.append(time.perf_counter() - started)
    return out


async def main_async(args: argparse.Namespace) -> None:
    from letta_ray.sandbox import SandboxLimits, ToolSandbox
    from letta_ray.tools import run_tool, tool_from_source

    tf = tool_from_source(SOURCE)

    async def in_process(i: int) -> None:
        outcome = await run_tool(tf, f'{{"a": {i}, "b": 1}}', None)  # type: ignore[arg-type]
        assert outcome.ok

    baseline = await timed(args.calls, in_process)

    sandbox = ToolSandbox(SandboxLimits(), workers=args.cold + 4)
    await sandbox.start()

    async def warm(i: int) -> None:
        result = await sandbox.call(SOURCE, "add", {"a": i, "b": 1})
        assert result.ok, result.message

    await warm(-1)
    sandboxed = await timed(args.calls, warm)

    async def cold_spare(i: int) -> None:
        await sandbox.start()  # the spare is back before each timed call
        started = time.perf_counter()
        result = await sandbox.call(fresh_source(i), f"add_{i}", {"a": i, "b": 1})
        cold_with_spare.append(time.perf_counter() - started)
        assert result.ok, result.message

    cold_with_spare: list[float] = []
    for i in range(args.cold):
        await cold_spare(i)
    await sandbox.close()

    bare = ToolSandbox(SandboxLimits(), workers=args.cold + 4, spares=0)

    async def cold(i: int) -> None:
        result = await bare.call(fresh_source(1000 + i), f"add_{1000 + i}", {"a": i, "b": 1})
        assert result.ok, result.message

    cold_no_spare = await timed(args.cold, cold)
    await bare.close()

    in_env = await pip_env_calls(args.calls)

    print(f"\ntool sandbox bench — {os.cpu_count()} CPUs, one call of a small tool, medians in ms")
    print(row("in-process (the baseline)", baseline))
    print(row("sandbox, warm", sandboxed))
    print(row("in a pip environment, warm", in_env))
    print(row("cold, a spare worker ready", cold_with_spare))
    print(row("cold, no spare worker", cold_no_spare))
    added = statistics.median(sandboxed) - statistics.median(baseline)
    added_env = statistics.median(in_env) - statistics.median(baseline)
    print(f"  added latency per call, warm: {added * 1000:.2f} ms, {added_env * 1000:.2f} ms in a pip environment "
          "(target <= 5 ms)")


async def pip_env_calls(calls: int) -> list[float]:
    """Warm calls in a tool environment with one small package, built by Ray (on an embedded Ray)."""
    import letta_ray
    from letta_ray.schemas import PipRequirement

    home = tempfile.mkdtemp(prefix="letta-ray-bench-tools-")
    client = letta_ray.connect(home=home)
    try:
        sandbox = await client.runtime.tools.get([PipRequirement(name="humanize", version="4.17.0")])

        async def call(i: int) -> None:
            result = await sandbox.call(SOURCE, "add", {"a": i, "b": 1})
            assert result.ok, result.message

        await call(-1)
        return await timed(calls, call)
    finally:
        await client.runtime.tools.close()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="warm calls per figure")
    parser.add_argument("--cold", type=int, default=10, help="cold calls per figure")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
