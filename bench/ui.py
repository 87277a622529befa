"""The web inspector's agent list with many agents: is a page as fast with 10,000 as with 100?

Creates ``--agents`` agents (bulk ``create_agents``) with ``--talkers`` of them having had a
turn against a loopback fake LLM, serves the HTTP API on 127.0.0.1, and times
``GET /ui/api/agents`` (the route the list page calls: a page of rows with host, model,
message count and last activity) for the first page, a page deep in the list, and a search,
each ``--repeats`` times; then the same with only the first 100 agents' worth of rows found
by a search that matches them (the baseline, measured in the same run). Prints medians.

Run: .venv/bin/python bench/ui.py [--agents 10000] [--talkers 200] [--repeats 30]
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

from _common import spawned_fake_server

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--talkers", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import httpx

    import letta_ray
    from letta_ray.serve.deployment import start_http
    from letta_ray.serve.startup import free_port

    with spawned_fake_server() as url, tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)

        def spec(i: int) -> letta_ray.AgentState:
            return client.build_agent_state(f"{'few' if i < 100 else 'many'}-{i:06d}", model="fake-model",
                                            model_endpoint=url, tags=["town"] if i % 10 == 0 else ["farm"],
                                            memory_blocks=[{"label": "human", "value": f"Person {i}"}])

        started = time.perf_counter()
        handles = []
        for first in range(0, args.agents, 2000):
            handles += client.create_agents([spec(i) for i in range(first, min(args.agents, first + 2000))])
        print(f"created {args.agents:,} agents in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        for handle in handles[:: max(1, args.agents // args.talkers)][: args.talkers]:
            handle.send("hello")
        print(f"{args.talkers} turns in {time.perf_counter() - started:.1f} s")

        base = start_http(client.settings, host="127.0.0.1", port=free_port())
        with httpx.Client(base_url=base, timeout=60) as http:
            def timed(params: dict[str, object]) -> tuple[float, dict[str, object]]:
                times, body = [], {}
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    response = http.get("/ui/api/agents", params=params)
                    times.append((time.perf_counter() - t) * 1000)
                    assert response.status_code == 200, response.text
                    body = response.json()
                return statistics.median(times), body

            timed({"limit": 50})  # warm up
            cases = [("first page of all", {"limit": 50}),
                     ("a page deep in the list", {"limit": 50, "offset": args.agents // 2}),
                     ("search by tag", {"limit": 50, "q": "town"}),
                     ("search by name", {"limit": 50, "q": "many-0042"}),
                     ("baseline: first page of 100", {"limit": 50, "q": "few-"})]
            results = {}
            for label, params in cases:
                median, body = timed(params)
                results[label] = median
                print(f"{label:32s} p50 {median:7.2f} ms  (matched {body['total']:,}, page {len(body['agents'])})")
            baseline = results["baseline: first page of 100"]
            print(f"ratio, first page of {args.agents:,} / first page of 100: "
                  f"{results['first page of all'] / baseline:.2f}x")
        client.close()


if __name__ == "__main__":
    main()
