"""The HTTP API on Ray Serve: latency and throughput of one message, against a floor.

Prints, in one run against a loopback fake LLM (in its own process):
- p50/p99 latency of one message (one LLM call) sent over HTTP, one sender;
- messages/s (and p50/p99) with 8 and 32 concurrent senders, each on its own agent;
- the floor: the same figures for a trivial Serve route (``GET /v1/health/``) on the
  same deployment, i.e. what Serve and the HTTP client cost by themselves;
- the ceiling the HTTP layer sits on: the same messages sent through the Python
  driver (``AgentHandle.send_async``), no HTTP at all;
- and litellm's own: plain ``litellm.acompletion`` calls from this one process to the same
  fake, 8 at once (issue 17's target: 8 senders over HTTP at >= 0.8x of it).
Each figure is the median over ``--repeats`` rounds of ``--seconds`` each, every round
from empty contexts (the agents' messages are reset before it). (Not named ``http.py``: a file of
that name in bench/ would shadow the standard library's ``http`` for every bench script.)

Targets on a 2-core machine: p50 <= 25 ms per message, >= 150 messages/s with 8
senders. For scale: the Letta server on the same machine and fake LLM took 251 ms per
message and managed 3.4 messages/s with 8 senders.

Run: .venv/bin/python bench/http_api.py [--seconds 5] [--repeats 3] [--profile 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, measure_raw_litellm, percentile, process_name, session_pids, spawned_fake_server

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


AGENTS = 32


async def senders(call: Callable[[int], Awaitable[Any]], seconds: float, concurrency: int) -> dict[str, float]:
    """``concurrency`` senders calling back to back for ``seconds``, each on agents of its own.

    Sender ``i`` goes round the agents ``i, i + concurrency, ...`` (of ``AGENTS``), so no
    two senders share an agent. The rate counts the calls that finished within the
    window, so all ``concurrency`` senders are busy for the whole of it (a fixed number
    of calls per sender would end with a tail where fewer are); calls still running at
    the end are awaited before the next round starts, and left out.
    """
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def sender(i: int) -> None:
        mine = list(range(i, AGENTS, concurrency)) or [i % AGENTS]
        k = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await call(mine[k % len(mine)])
            k += 1
            if time.perf_counter() <= deadline:
                latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    return {"p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "per_s": len(latencies) / seconds}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


THIS_PROCESS = "this process (HTTP client)"
PROFILED = ("ray::AgentHost", "ray::ServeReplica", "ray::MetadataStoreActor", "fake LLM server", THIS_PROCESS)


def _who(pid: int) -> str:
    return THIS_PROCESS if pid == os.getpid() else process_name(pid)


def _frame_package(frame: str) -> str:
    """The package a py-spy frame ("function (path:line)") is in: its path's first part."""
    path = frame.rsplit(" (", 1)[-1].split(":", 1)[0]
    top = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
    return f"letta_ray.{top}" if top in ("actors", "serve", "letta_ray", "storage") else top


def read_profile(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """A py-spy raw (collapsed) profile: samples, samples by the package of the running
    function (self), and samples with a package anywhere on the stack (inclusive)."""
    total, own, within = 0, Counter[str](), Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[_frame_package(frames[-1])] += int(count)
        for package in {_frame_package(f) for f in frames}:
            within[package] += int(count)
    return total, own, within


async def profiled(call: Callable[[int], Awaitable[Any]], seconds: float, folder: Path) -> list[str]:
    """One 8-sender round with py-spy sampling each process of the path: per process, CPU
    per message and where its Python time goes (samples of the thread holding the GIL, by
    the package of the function running; litellm inclusive). Native threads that never
    hold the GIL (Ray's core worker, the raylet) show in the CPU figure only."""
    pids = [p for p in session_pids() if _who(p).startswith(PROFILED)]
    spy = str(Path(sys.executable).with_name("py-spy"))
    recorders = {pid: await asyncio.create_subprocess_exec(
        spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw", "--nonblocking", "--gil",
        "-o", str(folder / f"{pid}.txt"), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for pid in pids}
    before = {p: cpu_seconds(p) for p in pids}
    done = await senders(call, seconds, 8)
    used = {p: cpu_seconds(p) - before[p] for p in pids}
    for recorder in recorders.values():
        await recorder.wait()
    messages = done["per_s"] * seconds
    lines = []
    for pid in sorted(pids, key=lambda p: -used[p]):
        name = _who(pid)
        raw = folder / f"{pid}.txt"
        if not raw.exists():
            lines.append(f"{name}: {used[pid] * 1000 / messages:.2f} ms CPU/message (py-spy recorded nothing)")
            continue
        total, own, within = read_profile(raw)
        shares = ", ".join(f"{pkg} {n / total:.0%}" for pkg, n in own.most_common(6) if n / total >= 0.02)
        lite = f"; under litellm {within['litellm'] / total:.0%}" if within["litellm"] else ""
        lines.append(f"{name}: {used[pid] * 1000 / messages:.2f} ms CPU/message ({total} samples): {shares}{lite}")
    return lines


async def bench(client: Any, base: str, fake_url: str, seconds: float, repeats: int, profile_s: float = 0.0
                ) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, float], list[str]]:
    """The figures by label and number of senders, the CPU per message (ms) by process over
    the 8-sender message rounds, and (``profile_s``) a py-spy profile of one more round."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(base, connector=connector) as http:
        async def post(path: str, body: dict[str, Any]) -> Any:
            async with http.post(path, json=body) as response:
                data = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"POST {path}: {response.status} {data}")
                return data

        agents = [(await post("/v1/agents/", {
            "name": f"bench-{i}", "model": "fake-model", "model_endpoint": fake_url,
            "memory_blocks": [{"label": "human", "value": f"Person {i}"}, {"label": "persona", "value": "I help."}],
        }))["id"] for i in range(AGENTS)]

        async def reset() -> None:  # every round starts from empty contexts
            for agent_id in agents:
                async with http.patch(f"/v1/agents/{agent_id}/reset-messages") as response:
                    assert response.status == 200, await response.text()

        async def send(i: int) -> None:
            data = await post(f"/v1/agents/{agents[i]}/messages",
                              {"messages": [{"role": "user", "content": "hello there"}]})
            assert data["stop_reason"]["stop_reason"] == "end_turn", data

        handles = [await client.get_agent_async(agent_id) for agent_id in agents]

        async def driver(i: int) -> None:  # the same turn through the Python driver: no HTTP at all
            reply = await handles[i].send_async("hello there")
            assert reply.stop_reason.stop_reason == "end_turn", reply

        async def health(i: int) -> None:
            async with http.get("/v1/health/") as response:
                await response.read()
                assert response.status == 200

        # warm up every agent (loads it on its host) and both paths
        await asyncio.gather(*(send(i) for i in range(AGENTS)))
        await senders(send, 1.0, 8)
        await senders(health, 0.5, 8)
        await senders(driver, 1.0, 8)

        results: dict[str, dict[int, dict[str, float]]] = {"message": {}, "floor": {}, "driver": {}, "litellm": {}}
        # the ceiling: plain litellm calls to the same fake from this one process, 8 at once
        await measure_raw_litellm(fake_url, 100, 8)  # warm up
        raw, cpu_used = [], time.process_time()
        for _ in range(repeats):
            raw.append(await measure_raw_litellm(fake_url, max(200, int(seconds * 150)), 8))
        cpu_used = time.process_time() - cpu_used
        results["litellm"][8] = {"per_s": statistics.median(r["calls_per_s"] for r in raw),
                                 "cpu_ms": cpu_used * 1000 / sum(r["n"] for r in raw),
                                 "p50_ms": statistics.median(r["median_ms"] for r in raw),
                                 "p99_ms": statistics.median(r["p99_ms"] for r in raw)}
        cpu: dict[str, float] = {}  # CPU-seconds by process, over the 8-sender message rounds
        messages = 0.0
        for label, call in (("message", send), ("floor", health), ("driver", driver)):
            for concurrency in (1, 8, 32):
                rounds = []
                for _ in range(repeats):
                    await reset()
                    pids = session_pids()
                    before = {p: cpu_seconds(p) for p in pids}
                    rounds.append(await senders(call, seconds, concurrency))
                    if label == "message" and concurrency == 8:
                        for p in pids:
                            name = _who(p)
                            cpu[name] = cpu.get(name, 0.0) + cpu_seconds(p) - before[p]
                        messages += rounds[-1]["per_s"] * seconds
                results[label][concurrency] = median_of(rounds)
        profile: list[str] = []
        if profile_s:
            await reset()
            with tempfile.TemporaryDirectory() as folder:
                profile = await profiled(send, profile_s, Path(folder))
        return results, {name: used * 1000 / messages for name, used in cpu.items()}, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="then one 8-sender round this long under py-spy: where each process's CPU goes")
    args = parser.parse_args()

    import letta_ray
    from letta_ray.serve.deployment import start_http
    from letta_ray.serve.startup import free_port

    with spawned_fake_server() as fake_url, tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)
        try:
            base = start_http(client.settings, host="127.0.0.1", port=free_port())
            results, cpu_ms, profile = asyncio.run(bench(client, base, fake_url, args.seconds, args.repeats,
                                                         args.profile))
        finally:
            from ray import serve

            serve.shutdown()
            client.close()

    msg, floor, driver = results["message"], results["floor"], results["driver"]
    print(f"\nletta_ray HTTP bench — {os.cpu_count()} CPUs, Ray Serve on 127.0.0.1, fake LLM on loopback "
          f"(own process), medians of {args.repeats} rounds")
    print(f"  {'':42} {'p50 ms':>8} {'p99 ms':>8} {'per s':>8}")
    for concurrency in (1, 8, 32):
        for label, rows in (("message (one LLM call)", msg), ("floor: GET /v1/health/", floor),
                            ("same message, Python driver", driver)):
            r = rows[concurrency]
            who = "1 sender" if concurrency == 1 else f"{concurrency} senders"
            print(f"  {label + ', ' + who:42} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['per_s']:8.1f}")
    p50, rate8 = msg[1]["p50_ms"], msg[8]["per_s"]
    print(f"  one message p50 {p50:.1f} ms (target <= 25 ms; Letta server: 251 ms); "
          f"{rate8:.0f} messages/s with 8 senders (target >= 150; Letta server: 3.4)")
    ceiling = results["litellm"][8]
    print(f"  the ceiling: raw litellm.acompletion from one process, 8 at once: {ceiling['per_s']:.0f} calls/s "
          f"(p50 {ceiling['p50_ms']:.1f} ms, {ceiling['cpu_ms']:.2f} ms CPU per call); "
          f"8 senders over HTTP reach {rate8 / ceiling['per_s']:.2f}x it "
          f"(target >= 0.8x), p99/p50 under load {msg[8]['p99_ms'] / msg[8]['p50_ms']:.1f} (target <= 3)")
    print(f"  HTTP over the driver: +{p50 - driver[1]['p50_ms']:.1f} ms p50 with one sender; "
          f"{rate8 / driver[8]['per_s']:.2f}x the driver's messages/s with 8 senders")
    shares = sorted(((ms, name) for name, ms in cpu_ms.items()), reverse=True)
    print(f"  CPU per message, 8 senders: {sum(ms for ms, _ in shares):.1f} ms in all = "
          + ", ".join(f"{name} {ms:.2f}" for ms, name in shares if ms >= 0.05))

    if profile:
        print(f"  py-spy, one more 8-sender round of {args.profile:g} s (share of each process's samples by "
              "the package running):")
        for line in profile:
            print(f"    {line}")


if __name__ == "__main__":
    main()
