"""A simulation at scale against the loopback fake LLM: creation, memory, idle CPU, turns/s.

Prints, in one run (the fake town model in its own process, an embedded Ray):
- seconds to build the population and topology, and to create the agents;
- memory of the whole Ray cluster (every process of the embedded Ray, the fake LLM
  server excluded) as PSS (shared pages counted once) and as the plain RSS sum;
- CPU the cluster burns while every agent sits idle, over ``--idle-s`` seconds;
- agent-turns per second in each round, next to the raw litellm ceiling: concurrent
  ``litellm.acompletion`` calls per second from one process to the same fake server,
  measured before and after the rounds, with a tiny request and with the agents' own
  round-2 request (like for like).

With ``--nodes 2`` the run is on a two-node Ray cluster on 127.0.0.1 (hosts on the second
node ship their journals to keepers on the head); with ``--storage s3`` archival memory
and metadata snapshots go to an S3 server on 127.0.0.1 (moto), and the S3 requests per
turn and the cost of one snapshot are printed. Either way a one-node, local-storage run is
measured first, in the same run, as the baseline (``--no-baseline`` skips it).

Run: .venv/bin/python bench/sim.py [--agents 10000] [--rounds 2] [--degree 4] [--idle-s 10]
     .venv/bin/python bench/sim.py --nodes 2 --storage s3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    FAKE_SERVER_MODULE,
    cmdline,
    cpu_seconds,
    measure_raw_litellm,
    process_name,
    pss_bytes,
    rss_bytes,
    session_pids,
    spawned_fake_server,
)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

GIB = 2**30


def cluster_pids(exclude: set[int]) -> list[int]:
    """Every process of the embedded Ray (this driver and the fake server excluded)."""
    return [p for p in session_pids() if p != os.getpid() and p not in exclude]


def memory(exclude: set[int]) -> tuple[float, float, int]:
    pids = cluster_pids(exclude)
    return sum(map(pss_bytes, pids)) / GIB, sum(map(rss_bytes, pids)) / GIB, len(pids)


def idle_cpu(exclude: set[int], seconds: float, by_process: dict[str, float] | None = None) -> float:
    """CPU-seconds per second the cluster used over ``seconds`` (1.0 = one core busy);
    ``by_process`` receives the same per process name."""
    pids = cluster_pids(exclude)
    before = {p: cpu_seconds(p) for p in pids}
    time.sleep(seconds)
    used = {p: (cpu_seconds(p) - before[p]) / seconds for p in pids}
    if by_process is not None:
        for p, share in used.items():
            by_process[process_name(p)] = by_process.get(process_name(p), 0.0) + share
    return sum(used.values())


def settle_until_quiet(exclude: set[int], limit_s: float = 30.0) -> None:
    """Wait (at most ``limit_s``) until the cluster uses under 10% of a core over a second."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and idle_cpu(exclude, 1.0) > 0.10:
        pass


def host_infos(client: Any) -> list[dict[str, Any]]:
    """Every agent host's ``info()``."""

    async def infos() -> list[dict[str, Any]]:
        hosts = await client.runtime.directory.all_hosts()
        return await asyncio.gather(*(h.info() for h in hosts.values()))

    return client.run_sync(infos())


def hosts_by_node(infos: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Which node each agent host runs on, with its agent count."""
    nodes: dict[str, list[str]] = {}
    for info in infos:
        nodes.setdefault(info["node_id"] or "?", []).append(f"{info['host_id']} ({info['agents']:,} agents)")
    return nodes


def collector_during(before: list[dict[str, Any]], after: list[dict[str, Any]], turns: int) -> str:
    """The hosts' garbage collections between two ``host_infos``: per generation, how many
    and the milliseconds they took per turn."""
    was = {i["host_id"]: i["gc"] for i in before}
    counts, seconds = [0, 0, 0], [0.0, 0.0, 0.0]
    for info in after:
        old = was.get(info["host_id"], {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]})
        for g in range(3):
            counts[g] += info["gc"]["collections"][g] - old["collections"][g]
            seconds[g] += info["gc"]["seconds"][g] - old["seconds"][g]
    return ", ".join(f"generation {g}: {counts[g]:,} ({seconds[g] * 1000 / max(1, turns):.3f} ms/turn)"
                     for g in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--raw-calls", type=int, default=3000)
    parser.add_argument("--raw-concurrency", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=256, help="turns in flight per host")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes on this machine (>1: a multi-node "
                        "cluster on 127.0.0.1, CPUs split between them)")
    parser.add_argument("--storage", choices=["local", "s3"], default="local",
                        help="s3: archival memory and metadata snapshots in an S3 server on 127.0.0.1 (moto)")
    parser.add_argument("--store-shards", type=int, default=1, help="metadata store shards (store_shards)")
    parser.add_argument("--no-baseline", action="store_true", help="with --nodes > 1, --storage s3 or "
                        "--store-shards > 1, skip the one-node, local-storage, one-store run that is otherwise "
                        "measured first, in the same run")
    args = parser.parse_args()

    with spawned_fake_server(responder="letta_ray.sim.fake:town_responder") as url, object_store(args.storage) as s3:
        runs = []
        if (args.nodes > 1 or args.storage != "local" or args.store_shards > 1) and not args.no_baseline:
            runs.append(("one node, local storage, one store (baseline)", measure(args, url, nodes=1, s3=None)))
        runs.append((f"{args.nodes} node{'s' * (args.nodes > 1)}, {args.storage} storage, "
                     f"{args.store_shards} store shard{'s' * (args.store_shards > 1)}",
                     measure(args, url, nodes=args.nodes, s3=s3, shards=args.store_shards)))
    for title, (lines, _) in runs:
        print(f"== {title}")
        print("\n".join(lines))
    if len(runs) == 2:
        (_, (_, base)), (_, (_, other)) = runs
        print(f"== {runs[1][0]} against the baseline: turns/s x{other['rate'] / base['rate']:.2f}, "
              f"creation time x{other['create_s'] / base['create_s']:.2f}, "
              f"memory x{other['pss'] / base['pss']:.2f}, idle CPU {other['idle'] * 100:.1f} % of a core "
              f"(baseline {base['idle'] * 100:.1f} %)")


@contextlib.contextmanager
def object_store(kind: str) -> Iterator[Any]:
    """For ``s3``: moto's S3 server on 127.0.0.1 with a bucket, its settings in this process's
    environment (which reaches the actors); else nothing."""
    if kind != "s3":
        yield None
        return
    from letta_ray.local_cluster import MotoServer, make_bucket, s3_env

    with tempfile.TemporaryDirectory() as logs:
        moto = MotoServer(Path(logs) / "moto.log")
        try:
            make_bucket(moto.endpoint, "letta-ray-bench")
            os.environ.update(s3_env(moto.endpoint))
            yield moto
        finally:
            moto.stop()


def measure(args: argparse.Namespace, url: str, *, nodes: int, s3: Any,
            shards: int = 1) -> tuple[list[str], dict[str, float]]:
    """One simulation: its printed figures and the key numbers."""
    import letta_ray
    from letta_ray.sim import Simulation, parse_config

    cpus = os.cpu_count() or 1
    storage: dict[str, Any] = {"storage": f"s3://letta-ray-bench/run-{time.time_ns()}"} if s3 is not None else {}
    storage["store_shards"] = shards
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        cluster = None
        if nodes > 1:
            from ray.cluster_utils import Cluster

            per_node = max(1, cpus // nodes)
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": per_node, "node_ip_address": "127.0.0.1", "include_dashboard": False})
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=per_node, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes()
            client = letta_ray.connect(address=cluster.address, home=home, **storage)
        else:
            client = letta_ray.connect(address="local", home=home, **storage)
        ray_start_s = time.perf_counter() - started
        fake = {p for p in session_pids() if FAKE_SERVER_MODULE in cmdline(p)}
        base_pss, base_rss, _ = memory(fake)
        config = parse_config({
            "name": "bench", "seed": 1, "rounds": args.rounds,
            "population": {"count": args.agents},
            "topology": {"kind": "random", "degree": args.degree},
            "agent": {"model": "openai/fake-model", "model_endpoint": url, "agent_type": "letta_v1_agent"},
            "concurrency": args.concurrency, "batch": 500,
        })

        started = time.perf_counter()
        sim = Simulation(config, client, Path(home) / "run", sim_id="bench")
        build_s = time.perf_counter() - started
        s3_before_create = s3_requests(s3)
        started = time.perf_counter()
        client.run_sync(sim._create_agents())
        create_s = time.perf_counter() - started
        client.run_sync(client.runtime.store.count_agents())  # a read: the store applied every agent
        applied_s = time.perf_counter() - started - create_s
        settle_until_quiet(fake)  # hosts import litellm in the background after they start
        pss, rss, nprocs = memory(fake)
        idle_by_process: dict[str, float] = {}
        idle = idle_cpu(fake, args.idle_s, idle_by_process)

        raw_before = asyncio.run(measure_raw_litellm(url, args.raw_calls, args.raw_concurrency))
        cpu_before = {p: cpu_seconds(p) for p in [*cluster_pids(fake), os.getpid(), *fake]}
        s3_before_rounds = s3_requests(s3)
        hosts_before = host_infos(client)
        with StoreLag(client) as lag:
            reports = client.run_sync(sim.run())
            rounds_done = time.perf_counter()
            client.run_sync(client.runtime.store.count_agents())  # a read: every acknowledged turn applied
            caught_up_s = time.perf_counter() - rounds_done
        s3_rounds = s3_requests(s3) - s3_before_rounds
        cpu_used: dict[str, float] = {}
        for p, before in cpu_before.items():
            name = "driver (bench)" if p == os.getpid() else "fake LLM server" if p in fake else process_name(p)
            cpu_used[name] = cpu_used.get(name, 0.0) + cpu_seconds(p) - before
        # The agents' own request of round 2, for a like-for-like ceiling.
        handle = client.get_agent(sim.agent_ids[0])
        from agents import agent_prompt

        messages, tools = agent_prompt(handle)
        raw_after = asyncio.run(measure_raw_litellm(url, args.raw_calls, args.raw_concurrency))
        raw_alike = asyncio.run(measure_raw_litellm(url, args.raw_calls, args.raw_concurrency,
                                                    messages=messages, tools=tools or None))
        pss_after, rss_after, _ = memory(fake)
        load = os.getloadavg()
        journal_bytes = sum(f.stat().st_size for f in (Path(home) / "journal").glob("**/*.log"))
        duckdb_bytes = sum(f.stat().st_size for f in Path(home).glob("meta*.duckdb*"))
        breakdown = sorted(((pss_bytes(p), process_name(p)) for p in cluster_pids(fake)), reverse=True)
        hosts_after = host_infos(client)
        placement = hosts_by_node(hosts_after)
        keepers = client.run_sync(keeper_stats(client.runtime.keepers))
        snapshot = None
        if s3 is not None:
            s3_before_snapshot = s3_requests(s3)
            snapshot = client.run_sync(client.runtime.store.snapshot())
            snapshot["requests"] = s3_requests(s3) - s3_before_snapshot
        client.close(shutdown=True)
        if cluster is not None:
            cluster.shutdown()

    ceiling = max(raw_before["calls_per_s"], raw_after["calls_per_s"])
    turns = sum(r.metrics.active_agents for r in reports)
    wall = sum(r.metrics.duration_s for r in reports)
    rate = turns / wall
    median_round = statistics.median(r.metrics.turns_per_s for r in reports)
    lines = [
        f"bench/sim.py: {args.agents:,} agents, random graph of degree {args.degree}, {args.rounds} rounds, "
        f"{cpus} CPUs over {nodes} node{'s' * (nodes > 1)}, load average {load[0]:.1f} at the end",
        f"  Ray started in                               {ray_start_s:8.1f} s",
        f"  population + topology built in               {build_s:8.2f} s",
        f"  agents created in                            {create_s:8.2f} s   ({args.agents / create_s:,.0f} agents/s); "
        f"DuckDB held every agent {applied_s:.2f} s later",
        f"  Ray cluster memory, idle, before agents      {base_pss:8.2f} GiB PSS ({base_rss:.2f} GiB RSS sum)",
        f"  Ray cluster memory, {args.agents:,} agents created   {pss:8.2f} GiB PSS ({rss:.2f} GiB RSS sum, "
        f"{nprocs} processes)",
        f"  Ray cluster memory after the rounds          {pss_after:8.2f} GiB PSS ({rss_after:.2f} GiB RSS sum)",
        f"  idle CPU with every agent created            {idle * 100 / cpus:8.2f} % of the machine "
        f"({idle * 100:.1f} % of one core, over {args.idle_s:.0f} s)",
    ]
    for report in reports:
        m = report.metrics
        lines.append(f"  round {m.round}: {m.active_agents:,} turns in {m.duration_s:6.1f} s = {m.turns_per_s:7.1f} "
                     f"turns/s (latency p50 {m.latency_p50_ms:.0f} ms, p99 {m.latency_p99_ms:.0f} ms, "
                     f"{m.llm_calls:,} LLM calls, {m.errors} errors)")
    lines += [
        f"  raw litellm ceiling, tiny request            {raw_before['calls_per_s']:8.1f} calls/s before, "
        f"{raw_after['calls_per_s']:.1f} after (concurrency {args.raw_concurrency})",
        f"  raw litellm ceiling, the agents' request     {raw_alike['calls_per_s']:8.1f} calls/s",
        f"  turns/s over {args.rounds} rounds: {rate:.1f} (median round {median_round:.1f}); "
        f"ratio to the tiny-request ceiling {rate / ceiling:.2f}, "
        f"to the like-for-like ceiling {rate / raw_alike['calls_per_s']:.2f}",
        "  where the memory is (PSS after the rounds): " + ", ".join(
            f"{name} {size / 2**20:.0f} MiB" for size, name in breakdown[:8]),
        f"  the store's apply lag during the rounds (sampled every {lag.every_s:.0f} s): {lag.summary()}; "
        f"DuckDB held every turn {caught_up_s:.2f} s after the last round",
        f"  what the store keeps: meta.duckdb {duckdb_bytes / 2**20:.0f} MiB, host journals "
        f"{journal_bytes / 2**20:.0f} MiB still on disk; {journal_bytes / max(1, turns) / 1024:.1f} KiB of journal "
        f"per turn",
        "  idle CPU by process (% of one core): " + ", ".join(
            f"{name} {share * 100:.1f}" for name, share in sorted(idle_by_process.items(), key=lambda kv: -kv[1])
            if share >= 0.001),
        "  CPU per agent-turn during the rounds: " + ", ".join(
            f"{name} {seconds * 1000 / turns:.2f} ms" for name, seconds in sorted(cpu_used.items(),
                                                                                key=lambda kv: -kv[1])
            if seconds * 1000 / turns >= 0.01),
        "  the hosts' garbage collections during the rounds: " + collector_during(hosts_before, hosts_after, turns),
    ]
    if nodes > 1:
        lines.append("  hosts per node: " + "; ".join(f"node {node[:8]}: {', '.join(hosts)}"
                                                      for node, hosts in sorted(placement.items())))
    if keepers:
        shipped = sum(k["appends"] for k in keepers)
        lines.append(f"  journals shipped to the head's keepers: {shipped:,} appends, "
                     f"{sum(k['bytes'] for k in keepers) / 2**20:.1f} MiB ({shipped / max(1, turns):.2f} per turn)")
    if s3 is not None and snapshot is not None:
        lines.append(f"  object store: {s3_rounds:,} S3 requests during the rounds ({s3_rounds / max(1, turns):.3f} "
                     f"per turn), {s3_before_rounds - s3_before_create:,} while creating the agents; one snapshot "
                     f"of the metadata: {snapshot['seconds']:.2f} s, {snapshot['bytes'] / 2**20:.1f} MiB, "
                     f"{snapshot['requests']} requests")
    return lines, {"rate": rate, "create_s": create_s, "pss": pss, "idle": idle}


class StoreLag:
    """Samples the metadata store's apply lag (journaled turns not yet in DuckDB) from a
    thread while the rounds run."""

    def __init__(self, client: Any, every_s: float = 1.0) -> None:
        self.client, self.every_s = client, every_s
        self.seconds: list[float] = []
        self.bytes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="store-lag", daemon=True)

    def __enter__(self) -> StoreLag:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            status = self.client.run_sync(self.client.runtime.store.status())
            self.seconds.append(status["apply_lag_s"])
            self.bytes.append(status["journal_backlog_bytes"])

    def summary(self) -> str:
        if not self.seconds:
            return "no sample"
        return (f"median {statistics.median(self.seconds):.2f} s / {statistics.median(self.bytes) / 2**20:.1f} MiB, "
                f"worst {max(self.seconds):.2f} s / {max(self.bytes) / 2**20:.1f} MiB")


async def keeper_stats(keepers: list[Any]) -> list[dict[str, int]]:
    return list(await asyncio.gather(*(k.stats() for k in keepers)))


def s3_requests(moto: Any) -> int:
    return sum(moto.requests().values()) if moto is not None else 0


if __name__ == "__main__":
    main()
