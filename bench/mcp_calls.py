"""The cost of a call to an MCP server's tool, against running a tool in-process.

Prints p50/p99 in milliseconds, in one run, of one call of ``add`` on the test suite's
demo MCP server (tests/mcp_demo_server.py, written with the MCP SDK), over stdio:
- in-process: a Python tool run by ``letta_ray.tools.run_tool`` in this process (the baseline);
- MCP session: ``MCPSession.call_tool`` from this process, no Ray (the SDK and the server);
- through the server's actor: what an agent host does, a Ray call to the one actor that
  holds the server's connection, then the session (and, apart, the Ray call alone);
- 16 at once through the actor: calls per second when 16 agents call together.

Run: .venv/bin/python bench/mcp_calls.py [--calls 300]
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

from tools import SOURCE, row, timed

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
DEMO = str(Path(__file__).resolve().parent.parent / "tests" / "mcp_demo_server.py")


async def main_async(args: argparse.Namespace) -> None:
    import letta_ray
    from letta_ray.mcp import MCPServer, MCPSession, StdioServerConfig
    from letta_ray.tools import run_tool, tool_from_source

    tf = tool_from_source(SOURCE)

    async def in_process(i: int) -> None:
        assert (await run_tool(tf, f'{{"a": {i}, "b": 1}}', None)).ok  # type: ignore[arg-type]

    baseline = await timed(args.calls, in_process)

    server = MCPServer(server_name="bench", config=StdioServerConfig(command=sys.executable, args=[DEMO, "stdio"]))
    session = MCPSession(server)

    async def direct(i: int) -> None:
        ok, text = await session.call_tool("add", {"a": i, "b": 1}, 30)
        assert ok, text

    await direct(-1)
    sessions = await timed(args.calls, direct)
    await session.close()

    client = letta_ray.connect(home=tempfile.mkdtemp(prefix="letta-ray-bench-mcp-"))
    try:
        stored = await client.mcp_servers.create_async("bench", server.config)
        mcp = client.runtime.mcp

        async def through_actor(i: int) -> None:
            ok, text = await mcp.call_tool(stored, "add", {"a": i, "b": 1})
            assert ok, text

        await through_actor(-1)
        actor = await timed(args.calls, through_actor)
        handle = mcp.handle(stored)

        async def ping(i: int) -> None:
            await handle.ping()

        pings = await timed(args.calls, ping)
        rounds = max(1, args.calls // 16)
        started = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(through_actor(r * 16 + k) for k in range(16)))
        concurrent = rounds * 16 / (time.perf_counter() - started)
        await client.mcp_servers.delete_async(stored.id)
    finally:
        client.close()

    print(f"\nMCP bench — {os.cpu_count()} CPUs, one call of a small tool over stdio, in ms")
    print(row("in-process tool (the baseline)", baseline))
    print(row("MCP session, no Ray", sessions))
    print(row("through the server's actor", actor))
    print(row("a Ray call to that actor, no MCP", pings))
    print(f"  16 calls at once through the actor: {concurrent:.0f} calls/s")
    added = statistics.median(actor) - statistics.median(baseline)
    print(f"  added latency per call through the actor: {added * 1000:.2f} ms "
          f"({statistics.median(actor) / statistics.median(sessions):.2f}x the bare session)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per figure")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
