"""Creating agents one call at a time: the Python driver loop and the HTTP route.

Prints, in one run (embedded Ray, a temporary data directory, no LLM call is made):
- the floor: one Ray actor call (a no-op method) from the driver, and one trivial Serve
  route (``GET /v1/health/``) over HTTP, measured now;
- ``--repeats`` plain loops of ``--agents`` ``client.create_agent(...)`` calls (two memory
  blocks each): each loop's total time and their median, per-call p50/p99 over all of them,
  and the rate; then the same number created in one ``client.create_agents([...])`` call,
  for scale;
- then, with Ray Serve started (a driver script runs no HTTP server; ``--serve-running``
  starts it before the loops), ``--http`` sequential ``POST /v1/agents/`` requests:
  p50/p99 (Letta 0.11.7 on this machine took 52 ms p50 per create);
- every agent counted back from the store at the end (an acknowledged create is stored).

Targets (issue 17): p50 <= 5 ms in-process, <= 15 ms over HTTP, p99 <= 50 ms, and the
10,000-call loop in <= 30 s.

Run: .venv/bin/python bench/create.py [--agents 10000] [--repeats 3] [--http 1000] [--serve-running]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MODEL = "openai/gpt-4o-mini"  # resolved, never called: creating an agent makes no LLM call


def timed(calls: int, call: object) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``call(i)``."""
    out = []
    for i in range(calls):
        began = time.perf_counter()
        call(i)  # type: ignore[operator]
        out.append((time.perf_counter() - began) * 1000)
    return out


def row(label: str, ms: list[float]) -> str:
    return (f"  {label:44} {statistics.median(ms):8.2f} {percentile(ms, 99):8.2f} "
            f"{len(ms) / (sum(ms) / 1000):9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000, help="create_agent calls in the driver loop")
    parser.add_argument("--repeats", type=int, default=3, help="driver loops of --agents calls each")
    parser.add_argument("--serve-running", action="store_true",
                        help="start Ray Serve before the driver loops, not after them (its controller, proxy "
                             "and replica then take ~9%% of a core beside the loops, as in sessions <= 12)")
    parser.add_argument("--http", type=int, default=1_000, help="POST /v1/agents/ requests")
    args = parser.parse_args()

    import httpx
    import ray

    import letta_ray
    from letta_ray.serve.deployment import start_http
    from letta_ray.serve.startup import free_port

    def blocks(i: int) -> list[dict[str, str]]:
        return [{"label": "human", "value": f"Person {i}"}, {"label": "persona", "value": "I help."}]

    with tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)
        try:
            @ray.remote
            class Noop:
                def ping(self) -> int:
                    return 1

            noop = Noop.remote()
            ray.get(noop.ping.remote())
            if args.serve_running:
                base = start_http(client.settings, host="127.0.0.1", port=free_port())
            time.sleep(2.0)  # let Ray's (and Serve's) start-up work settle
            timed(200, lambda i: client.create_agent(f"warm-{i}", model=MODEL, memory_blocks=blocks(i)))
            ray_floor = timed(1000, lambda i: ray.get(noop.ping.remote()))

            loop: list[float] = []
            loop_s = []
            for r in range(args.repeats):
                began = time.perf_counter()
                loop += timed(args.agents, lambda i, r=r: client.create_agent(
                    f"agent-{r}-{i}", model=MODEL, memory_blocks=blocks(i)))
                loop_s.append(time.perf_counter() - began)

            states = [client.build_agent_state(f"bulk-{i}", model=MODEL, memory_blocks=blocks(i))
                      for i in range(args.agents)]
            began = time.perf_counter()
            client.create_agents(states)
            bulk_s = time.perf_counter() - began

            if not args.serve_running:
                base = start_http(client.settings, host="127.0.0.1", port=free_port())
                time.sleep(2.0)

            with httpx.Client(base_url=base, timeout=60) as http:
                body = {"model": MODEL, "memory_blocks": blocks(0)}
                for i in range(50):  # warm the route
                    http.post("/v1/agents/", json={**body, "name": f"http-warm-{i}"}).raise_for_status()
                http_floor = timed(500, lambda i: http.get("/v1/health/").raise_for_status())

                def post(i: int) -> None:
                    http.post("/v1/agents/", json={**body, "name": f"http-{i}"}).raise_for_status()
                over_http = timed(args.http, post)

            stored = client.run_sync(client.runtime.store.count_agents())
            expected = 200 + args.agents * (args.repeats + 1) + 50 + args.http
        finally:
            from ray import serve

            serve.shutdown()
            client.close()

    print(f"\nletta_ray create bench — {os.cpu_count()} CPUs, embedded Ray, medians and p99 of single calls")
    print(f"  {'':44} {'p50 ms':>8} {'p99 ms':>8} {'per s':>9}")
    print(row("floor: a no-op Ray actor call", ray_floor))
    print(row(f"create_agent, {args.repeats} driver loops of {args.agents}", loop))
    print(row("floor: GET /v1/health/ over HTTP", http_floor))
    print(row(f"POST /v1/agents/, {args.http} one after another", over_http))
    print(f"  each loop of {args.agents} create_agent calls: {', '.join(f'{s:.1f}' for s in loop_s)} s, "
          f"median {statistics.median(loop_s):.1f} s (target <= 30 s for 10,000); "
          f"one create_agents call of as many: {bulk_s:.1f} s")
    print(f"  create_agent p50 = {statistics.median(loop) / statistics.median(ray_floor):.1f}x a Ray call; "
          f"POST p50 = {statistics.median(over_http) / statistics.median(http_floor):.1f}x GET /v1/health/; "
          f"Letta 0.11.7's POST p50 (52 ms) / ours = {52 / statistics.median(over_http):.1f}x")
    print(f"  agents stored at the end: {stored} of {expected} acknowledged"
          + ("" if stored == expected else "  <-- MISMATCH"))


if __name__ == "__main__":
    main()
