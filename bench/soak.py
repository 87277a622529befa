"""A soak: mixed HTTP traffic for a set time; memory of every process, errors, latency per minute.

Starts an embedded letta_ray with the HTTP API on 127.0.0.1 (a temporary data directory)
against the loopback fake LLM (in its own process), then ``--workers`` concurrent clients
drive a mix of requests for ``--minutes``: agents created and deleted (a live population
of about ``--agents``), messages (JSON), streamed messages (SSE), archival inserts and
searches, block edits, and round-robin groups created, sent a message and deleted. A
worker leases the agents it uses, so no request races a delete of its agent: every 4xx
is a bug too.

Prints, as it goes:
- every ``--sample-s`` seconds, the memory of every process of the session (this driver,
  the fake LLM server, Ray's gcs_server and raylet, each actor by its class), RSS and PSS
  (shared pages split among their users, so PSS sums to the memory really taken);
- every minute, requests by kind, errors, latency p50/p95/p99 per kind.
At the end: memory per process kind when warm (after the first quarter of the run) and at
the end, with its growth in MB/min (least squares over the warm samples), a verdict on
the total RSS (``flat`` or ``growing``, the fake LLM server left out), the whole run's
latency and errors (with the server's traceback of the first 5xx, found in Ray's logs by
its error id), and how many lines litellm's logging worker left in those logs. Exits 1 on
any error (5xx, an error event in a stream, an exception or timeout, an unexpected 4xx, a
reply that is not a finished turn).

The figures go to stdout; Ray's actors log to stderr (``2>soak.err`` keeps them apart).

Run: .venv/bin/python bench/soak.py [--minutes 30] [--quick] [--workers 6] [--agents 24] [--skip group]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FAKE_SERVER_MODULE, cmdline, percentile, pss_bytes, rss_bytes, session_pids, spawned_fake_server

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MB = 2**20
KINDS = ("create", "delete", "message", "stream", "archival_insert", "archival_search", "block_edit", "group")
# How often a worker picks each kind (create and delete only while the population is off its size).
WEIGHTS = {"message": 4, "stream": 3, "archival_insert": 2, "archival_search": 2, "block_edit": 1, "group": 1}
GROUP_SIZE = 3
WORDS = ("harbour", "lantern", "orchard", "granite", "meadow", "copper", "violet", "thunder", "saffron", "glacier")


# --------------------------------------------------------------------------- bookkeeping


class Stats:
    """Requests by kind: this minute's latencies and errors, and the whole run's."""

    def __init__(self) -> None:
        self.minute: dict[str, list[float]] = defaultdict(list)
        self.minute_errors: Counter[str] = Counter()
        self.total: dict[str, array[float]] = defaultdict(lambda: array("d"))
        self.errors: Counter[tuple[str, str]] = Counter()  # (kind, category)
        self.examples: list[str] = []  # the first few errors in full
        self.error_ids: list[str] = []

    def ok(self, kind: str, seconds: float) -> None:
        self.minute[kind].append(seconds)
        self.total[kind].append(seconds)

    def error(self, kind: str, category: str, detail: str) -> None:
        self.minute_errors[kind] += 1
        self.errors[kind, category] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind} [{category}] {detail[:600]}")
        if (found := re.search(r"error id ([0-9a-f]{16})", detail)) and len(self.error_ids) < 20:
            self.error_ids.append(found.group(1))

    def roll(self) -> tuple[dict[str, list[float]], Counter[str]]:
        """This minute's figures, and a fresh minute."""
        figures = self.minute, self.minute_errors
        self.minute, self.minute_errors = defaultdict(list), Counter()
        return figures


def latency_table(latencies: dict[str, Any], errors: Counter[str], seconds: float) -> list[str]:
    lines = [f"    {'kind':<16} {'n':>6} {'per s':>7} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for kind in KINDS:
        values = list(latencies.get(kind, ()))
        if not values and not errors[kind]:
            continue
        p = [percentile(values, q) * 1000 for q in (50, 95, 99)]
        lines.append(f"    {kind:<16} {len(values):>6} {len(values) / seconds:>7.1f} {errors[kind]:>6} "
                     f"{p[0]:>8.1f} {p[1]:>8.1f} {p[2]:>8.1f}")
    return lines


class Population:
    """The live agents. A request leases the agents it needs, so a delete never hits an agent in use."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.idle: list[str] = []
        self.leased = 0
        self.creating = 0

    def size(self) -> int:
        return len(self.idle) + self.leased + self.creating

    def take(self, n: int, rng: random.Random) -> list[str] | None:
        if len(self.idle) < n:
            return None
        taken = rng.sample(self.idle, n)
        for agent_id in taken:
            self.idle.remove(agent_id)
        self.leased += n
        return taken

    def give(self, agent_ids: list[str]) -> None:
        self.leased -= len(agent_ids)
        self.idle.extend(agent_ids)

    def drop(self, agent_ids: list[str]) -> None:
        self.leased -= len(agent_ids)


# --------------------------------------------------------------------------- traffic


class Failed(Exception):
    """A request that went wrong: its category (``5xx``, ``4xx``, ``bad reply``) and what came back."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category


def checked(response: Any, what: str) -> Any:
    if response.status_code >= 500:
        raise Failed("5xx", f"{what}: {response.status_code} {response.text}")
    if response.status_code >= 400:
        raise Failed("4xx", f"{what}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def finished(reply: Any, what: str) -> None:
    stop = (reply or {}).get("stop_reason") or {}
    if stop.get("stop_reason") != "end_turn":
        raise Failed("bad reply", f"{what}: stop reason {stop!r}: {json.dumps(reply)[:400]}")


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


@dataclass
class Traffic:
    http: Any  # httpx.AsyncClient
    fake_url: str
    population: Population
    stats: Stats
    skip: tuple[str, ...] = ()
    created: int = 0
    groups: int = 0

    def pick(self, rng: random.Random) -> str:
        size, target = self.population.size(), self.population.target
        if size < max(GROUP_SIZE + 1, target // 2):
            return "create"
        weights = {kind: w for kind, w in WEIGHTS.items() if kind not in self.skip}
        if size < target:
            weights["create"] = 2
        if size > target // 2:
            weights["delete"] = 1
        kinds = list(weights)
        return rng.choices(kinds, [weights[k] for k in kinds])[0]

    async def create(self, rng: random.Random) -> None:
        self.created += 1
        self.population.creating += 1
        try:
            agent = checked(await self.http.post("/v1/agents/", json={
                "name": f"soak-{self.created}", "model": "fake-model", "model_endpoint": self.fake_url,
                "memory_blocks": [{"label": "human", "value": f"Person {self.created}: {sentence(rng)}"},
                                  {"label": "persona", "value": "I help, briefly."}],
            }), "create an agent")
        finally:
            self.population.creating -= 1
        self.population.idle.append(agent["id"])

    async def one(self, kind: str, agent_id: str, rng: random.Random) -> bool:
        """One request of ``kind`` on a leased agent; whether the agent is gone."""
        http, base = self.http, f"/v1/agents/{agent_id}"
        if kind == "delete":
            checked(await http.delete(base), "delete an agent")
            return True
        if kind == "message":
            reply = checked(await http.post(f"{base}/messages", json={
                "messages": [{"role": "user", "content": sentence(rng)}]}), "send a message")
            finished(reply, "send a message")
        elif kind == "stream":
            await self.stream(f"{base}/messages/stream", rng)
        elif kind == "archival_insert":
            checked(await http.post(f"{base}/archival-memory", json={
                "text": sentence(rng), "tags": [rng.choice(WORDS)]}), "insert a passage")
        elif kind == "archival_search":
            found = checked(await http.get(f"{base}/archival-memory/search",
                                           params={"query": sentence(rng), "top_k": 5}), "search passages")
            if "results" not in found:
                raise Failed("bad reply", f"search passages: {found!r}")
        elif kind == "block_edit":
            checked(await http.patch(f"{base}/core-memory/blocks/human", json={
                "value": f"Likes {sentence(rng)}"}), "edit a block")
        return False

    async def stream(self, path: str, rng: random.Random) -> None:
        events: list[str] = []
        async with self.http.stream("POST", path, json={
                "messages": [{"role": "user", "content": sentence(rng)}]}) as response:
            if response.status_code >= 400:
                await response.aread()
                checked(response, "stream a message")
            async for line in response.aiter_lines():
                if line:
                    events.append(line)
        if any(line.startswith("event: error") for line in events):
            raise Failed("5xx", f"stream a message: error event: {' '.join(events)[-600:]}")
        if not events or events[-1] != "data: [DONE]":
            raise Failed("bad reply", f"stream a message: no [DONE] at the end: {' '.join(events)[-600:]}")
        kinds = [json.loads(e[6:]).get("message_type") for e in events[:-1] if e.startswith("data: ")]
        if "assistant_message" not in kinds:
            raise Failed("bad reply", f"stream a message: no assistant message among {kinds}")

    async def group(self, agent_ids: list[str], rng: random.Random) -> None:
        group = checked(await self.http.post("/v1/groups/", json={
            "agent_ids": agent_ids, "description": "soak",
            "manager_config": {"manager_type": "round_robin", "max_turns": len(agent_ids)}}), "create a group")
        self.groups += 1
        try:
            reply = checked(await self.http.post(f"/v1/groups/{group['id']}/messages", json={
                "messages": [{"role": "user", "content": sentence(rng)}]}), "send a group a message")
            finished(reply, "send a group a message")
        finally:
            checked(await self.http.delete(f"/v1/groups/{group['id']}"), "delete a group")

    async def request(self, kind: str, rng: random.Random) -> bool:
        """One request of ``kind`` (timed and counted); False when no agent was free for it."""
        if kind == "create":
            return await self.timed(kind, self.create(rng))
        leased = self.population.take(GROUP_SIZE if kind == "group" else 1, rng)
        if leased is None:
            return False
        gone = False

        async def run() -> None:
            nonlocal gone
            if kind == "group":
                await self.group(leased, rng)
            else:
                gone = await self.one(kind, leased[0], rng)

        try:
            await self.timed(kind, run())
        finally:
            (self.population.drop if gone else self.population.give)(leased)
        return True

    async def timed(self, kind: str, call: Any) -> bool:
        began = time.perf_counter()
        try:
            await call
        except Failed as failed:
            self.stats.error(kind, failed.category, str(failed))
        except Exception as exc:  # a timeout, a dropped connection, a body that is not JSON
            self.stats.error(kind, "exception", f"{type(exc).__name__}: {exc}")
        else:
            self.stats.ok(kind, time.perf_counter() - began)
        return True

    async def worker(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            if not await self.request(self.pick(rng), rng):
                await asyncio.sleep(0.02)  # every agent leased: wait for one


async def drive(base: str, fake_url: str, args: argparse.Namespace, stats: Stats,
                memory: MemorySampler) -> Traffic:
    import httpx

    limits = httpx.Limits(max_connections=args.workers * 2, max_keepalive_connections=args.workers * 2)
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout_s, limits=limits) as http:
        traffic = Traffic(http, fake_url, Population(args.agents), stats, tuple(args.skip))
        began = time.monotonic()
        deadline = began + args.minutes * 60

        async def minutes() -> None:
            minute = 0
            while time.monotonic() < deadline:
                await asyncio.sleep(min(60.0, max(0.0, deadline - time.monotonic())))
                minute += 1
                latencies, errors = stats.roll()
                print(f"\n-- minute {minute} ({time.monotonic() - began:.0f} s): {traffic.population.size()} agents "
                      f"live, {traffic.created} created in all, {traffic.groups} groups; "
                      f"total RSS {memory.latest_total() / MB:,.0f} MB", flush=True)
                print("\n".join(latency_table(latencies, errors, 60.0)), flush=True)

        await asyncio.gather(minutes(), *(traffic.worker(args.seed + i, deadline) for i in range(args.workers)))
        return traffic


# --------------------------------------------------------------------------- memory


def kind_of(pid: int, driver: int) -> str:
    """A process's kind: ``driver``, ``fake LLM``, ``gcs_server``, ``raylet``, an actor's class, ..."""
    if pid == driver:
        return "driver"
    line = cmdline(pid)
    if FAKE_SERVER_MODULE in line:
        return "fake LLM"
    if line.startswith("ray::"):
        title = line.split()[0][5:]
        if title.startswith("ServeReplica:"):
            return "Replica:" + title.rsplit(":", 1)[-1]
        return title.split(".", 1)[0]  # "AgentHost.send" while it runs a method
    for known in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env_agent"):
        if known in line:
            return known.removesuffix(".py")
    return line.split()[0].rsplit("/", 1)[-1] if line else str(pid)


@dataclass
class Sample:
    t: float  # seconds since the traffic began
    rss: dict[str, int]  # bytes by kind
    pss: dict[str, int]
    count: Counter[str]


class MemorySampler:
    """Every ``interval`` seconds, RSS and PSS of every process of the session, summed by kind (a thread)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory sampler", daemon=True)
        self._header: list[str] = []

    def start(self) -> None:
        self.began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def latest_total(self) -> int:
        return total(self.samples[-1].rss) if self.samples else 0

    def sample(self) -> Sample:
        rss: dict[str, int] = defaultdict(int)
        pss: dict[str, int] = defaultdict(int)
        count: Counter[str] = Counter()
        driver = os.getpid()
        for pid in session_pids():
            kind = kind_of(pid, driver)
            rss[kind] += rss_bytes(pid)
            pss[kind] += pss_bytes(pid)
            count[kind] += 1
        return Sample(time.monotonic() - self.began, dict(rss), dict(pss), count)

    def _run(self) -> None:
        while True:
            s = self.sample()
            self.samples.append(s)
            self._print(s)
            if self._stop.wait(self.interval):
                return

    def _print(self, s: Sample) -> None:
        kinds = sorted(s.rss, key=lambda k: -s.rss[k])
        if not self._header or set(kinds) != set(self._header):
            self._header = kinds
            print("  memory, MB RSS (PSS) by process kind (xN: N processes): "
                  + ", ".join(f"{k}{f' x{s.count[k]}' if s.count[k] > 1 else ''}" for k in kinds), flush=True)
        print(f"  [{s.t:6.0f} s] total {total(s.rss) / MB:6.0f} RSS ({total(s.pss) / MB:6.0f} PSS) | "
              + " ".join(f"{k} {s.rss[k] / MB:.0f} ({s.pss[k] / MB:.0f})" for k in self._header), flush=True)


def total(by_kind: dict[str, int], skip: tuple[str, ...] = ("fake LLM",)) -> int:
    return sum(v for k, v in by_kind.items() if k not in skip)


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes) in MB per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60 / MB if var else float("nan")


def memory_report(samples: list[Sample], run_s: float, flat_mb_per_min: float) -> tuple[list[str], bool]:
    """Memory per kind, warm and at the end, its growth; a verdict on the total RSS. (lines, flat?)

    The verdict is on RSS: a process's PSS also moves when a process outside the session
    that maps the same libraries (anything else run from this venv) starts or exits."""
    warm = [s for s in samples if s.t >= run_s / 4] or samples[-1:]
    first, last = warm[0], samples[-1]
    kinds = sorted(last.rss, key=lambda k: -last.rss[k])
    lines = [f"  memory once warm (from {first.t:.0f} s) and at the end ({last.t:.0f} s), MB; growth in MB/min "
             f"by least squares over the {len(warm)} warm samples:",
             f"    {'process kind':<26} {'n':>3} {'RSS warm':>9} {'RSS end':>8} {'RSS/min':>8} "
             f"{'PSS warm':>9} {'PSS end':>8} {'PSS/min':>8}"]

    def row(name: str, n: int, of: Any) -> str:
        return (f"    {name:<26} {n:>3} {of(first.rss) / MB:>9.1f} {of(last.rss) / MB:>8.1f} "
                f"{slope_mb_per_min([(s.t, of(s.rss)) for s in warm]):>8.2f} "
                f"{of(first.pss) / MB:>9.1f} {of(last.pss) / MB:>8.1f} "
                f"{slope_mb_per_min([(s.t, of(s.pss)) for s in warm]):>8.2f}")

    for kind in kinds:
        lines.append(row(kind, last.count[kind], lambda by_kind, kind=kind: by_kind.get(kind, 0)))
    lines.append(row("total (fake LLM left out)", sum(n for k, n in last.count.items() if k != "fake LLM"), total))
    growth = slope_mb_per_min([(s.t, total(s.rss)) for s in warm])
    second = [s for s in samples if run_s / 4 <= s.t < run_s / 2]
    final = [s for s in samples if s.t >= run_s * 3 / 4]
    if second and final:
        q2, q4 = (sum(total(s.rss) for s in part) / len(part) for part in (second, final))
        apart = (sum(s.t for s in final) / len(final) - sum(s.t for s in second) / len(second)) / 60
        lines.append(f"  total RSS: mean {q2 / MB:,.0f} MB in the second quarter, {q4 / MB:,.0f} MB in the last "
                     f"({(q4 - q2) / MB / apart:+.2f} MB/min between them)")
    flat = growth <= flat_mb_per_min
    lines.append(f"  memory verdict: {'flat' if flat else 'growing'} ({growth:+.2f} MB/min total RSS once warm; "
                 f"threshold {flat_mb_per_min:.1f} MB/min)")
    return lines, flat


# --------------------------------------------------------------------------- logs


def ray_logs_dir() -> Path | None:
    try:  # Ray has no public accessor for the session's log folder
        import ray._private.worker as worker

        node = worker._global_node
        return Path(node.get_logs_dir_path()) if node is not None else None
    except Exception:
        return None


def traceback_end(text: str, keep: int = 12) -> str:
    """The last ``keep`` lines of the first traceback in ``text``, down to its exception line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
    if start is None:
        return "\n".join(f"    {line}" for line in lines[:keep])
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines) - 1)
    return "\n".join(f"    {line}" for line in lines[max(start, end + 1 - keep):end + 1])


def log_findings(logs: Path | None, error_ids: list[str]) -> list[str]:
    """litellm's logging-worker lines in the session's logs, and the tracebacks of the 5xx's error ids."""
    if logs is None or not logs.is_dir():
        return ["  (Ray's log folder not found)"]
    worker_lines: list[str] = []
    tracebacks: list[str] = []
    seen: set[str] = set()
    for path in sorted(logs.rglob("*")):
        if not path.is_file() or path.suffix not in (".log", ".out", ".err"):
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "LoggingWorker" in line or "logging task" in line:
                worker_lines.append(f"{path.name}: {line.strip()[:300]}")
        for error_id in error_ids:
            at = text.find(f"error id {error_id}")
            if at >= 0 and (end := traceback_end(text[at:at + 20_000])) not in seen:  # one of each
                seen.add(end)
                tracebacks.append(f"  error id {error_id} in {path.name}, the traceback's end:\n{end}")
    lines = [f"  litellm LoggingWorker lines in Ray's logs ({logs}): {len(worker_lines)}"]
    lines += [f"    {line}" for line in worker_lines[:10]]
    lines += tracebacks[:3]
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs")
    parser.add_argument("--quick", action="store_true", help="2 minutes, memory sampled every 5 s")
    parser.add_argument("--workers", type=int, default=6, help="concurrent HTTP clients")
    parser.add_argument("--agents", type=int, default=24, help="live agents the churn keeps around")
    parser.add_argument("--sample-s", type=float, default=15.0, help="seconds between memory samples")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="a request slower than this is an error")
    parser.add_argument("--flat-mb-per-min", type=float, default=2.0,
                        help="total RSS growth once warm above which memory counts as growing")
    parser.add_argument("--skip", nargs="*", default=[], choices=[k for k in KINDS if k not in ("create", "delete")],
                        help="kinds of request to leave out of the mix")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.sample_s = 2.0, 5.0
    args.agents = max(args.agents, 2 * (GROUP_SIZE + 1))

    import letta_ray
    from letta_ray.serve.deployment import start_http
    from letta_ray.serve.startup import free_port

    stats = Stats()
    with spawned_fake_server() as fake_url, tempfile.TemporaryDirectory() as home:
        os.environ["LETTA_RAY_HOME"] = home
        started = time.perf_counter()
        client = letta_ray.connect(home=home)
        try:
            base = start_http(client.settings, host="127.0.0.1", port=free_port())
            print(f"bench/soak.py: {args.minutes:g} min, {args.workers} workers, ~{args.agents} live agents, "
                  f"{os.cpu_count()} CPUs; server up in {time.perf_counter() - started:.1f} s at {base}, "
                  f"fake LLM at {fake_url}", flush=True)
            memory = MemorySampler(args.sample_s)
            memory.start()
            traffic = asyncio.run(drive(base, fake_url, args, stats, memory))
            memory.stop()
            memory.samples.append(memory.sample())
            logs = ray_logs_dir()
            findings = log_findings(logs, stats.error_ids)
        finally:
            from ray import serve

            serve.shutdown()
            client.close()

    run_s = args.minutes * 60
    print(f"\n== bench/soak.py: {args.minutes:g} min of mixed traffic, {args.workers} workers, ~{args.agents} live "
          f"agents ({traffic.created} created in all, {traffic.groups} groups)")
    print("  whole run:")
    print("\n".join(latency_table(stats.total, Counter({k: sum(n for (kk, _), n in stats.errors.items() if kk == k)
                                                          for k in KINDS}), run_s)))
    lines, _flat = memory_report(memory.samples, run_s, args.flat_mb_per_min)
    print("\n".join(lines))
    errors = sum(stats.errors.values())
    by_category = Counter()
    for (_, category), n in stats.errors.items():
        by_category[category] += n
    print(f"  errors: {errors}" + (" (" + ", ".join(f"{c} {n}" for c, n in by_category.most_common()) + ")"
                                   if errors else ""))
    for example in stats.examples[:10]:
        print(f"    {example}")
    print("\n".join(findings))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
