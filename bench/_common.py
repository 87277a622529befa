"""Shared bench helpers: percentiles and the raw-litellm baseline against a fake server.

``measure_raw_litellm`` calls ``litellm.acompletion`` directly (no letta_ray layer), so
other benches can print how much of their latency is litellm + HTTP itself.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from letta_ray.llm import drain_litellm_logging
from letta_ray.local_cluster import descendants

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SEND_MESSAGE_TOOL = {
    "type": "function",
    "function": {
        "name": "send_message",
        "description": "Sends a message to the human user.",
        "parameters": {
            "type": "object",
            "properties": {"message": {"type": "string", "description": "Message contents."}},
            "required": ["message"],
        },
    },
}


FAKE_SERVER_MODULE = "letta_ray.fake_llm_server"  # in the command line of the fake server's process


@contextmanager
def spawned_fake_server(latency_s: float = 0.0, responder: str | None = None) -> Iterator[str]:
    """A FakeOpenAIServer in a child process (so it does not share our GIL); yields its URL.

    ``responder`` is a ``module:function`` answering requests (default: the echo model)."""
    extra = ["--responder", responder] if responder else []
    with url_printing_child([sys.executable, "-m", FAKE_SERVER_MODULE, "--latency-s", str(latency_s),
                             *extra]) as url:
        yield url


@contextmanager
def url_printing_child(command: list[str]) -> Iterator[str]:
    """Run a server ``command`` that prints its loopback URL first and serves until its stdin
    closes; yields the URL, then closes its stdin (killing it if it does not exit)."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fake server process failed to start (printed {url!r})")
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uss_bytes(pid: int) -> int:
    """Unique memory of a process (what it would free if killed)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def session_pids() -> list[int]:
    """This process and all its descendants (the embedded Ray and its workers)."""
    return [os.getpid(), *sorted(descendants(os.getpid()))]


def total_uss(exclude: set[int]) -> int:
    return sum(uss_bytes(p) for p in session_pids() if p not in exclude)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def process_name(pid: int) -> str:
    """A short name for a process of the session: ``ray::AgentHost``, ``raylet``, ..."""
    line = cmdline(pid)
    if "ray::" in line:
        return line.split()[0]
    if FAKE_SERVER_MODULE in line:
        return "fake LLM server"
    for known in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if known in line:
            return known
    return line.split()[0].rsplit("/", 1)[-1] if line else str(pid)


def pss_bytes(pid: int) -> int:
    """Proportional memory of a process: shared pages split among their users, so a sum
    over processes is the memory they really take together."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("Pss:"))


def rss_bytes(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("VmRSS:")), 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    return {
        "n": len(latencies_s),
        "median_ms": statistics.median(latencies_s) * 1000,
        "p99_ms": percentile(latencies_s, 99) * 1000,
        "calls_per_s": len(latencies_s) / wall_s if wall_s else float("nan"),
    }


BENCH_MESSAGES = [
    {"role": "system", "content": "You are a helpful agent with memory."},
    {"role": "user", "content": "hello there"},
]


async def measure_calls(call: Callable[[], Awaitable[Any]], n: int, concurrency: int) -> dict[str, Any]:
    """Run ``call`` ``n`` times from ``concurrency`` concurrent callers; latency and throughput."""
    latencies: list[float] = []
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    wall = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    return {**summarize(latencies, wall), "concurrency": concurrency}


async def measure_raw_litellm(server_url: str, n: int, concurrency: int, *,
                              messages: list[dict[str, Any]] | None = None,
                              tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``n`` plain ``litellm.acompletion`` calls to an OpenAI-compatible server.

    ``concurrency`` callers share the ``n`` calls; returns n, median_ms, p99_ms,
    calls_per_s and concurrency. ``messages``/``tools`` replace the small default
    request, e.g. with an agent's real prompt, for a like-for-like baseline.
    """
    import litellm

    litellm.suppress_debug_info = True

    def call() -> Awaitable[Any]:
        return litellm.acompletion(
            model="fake-model",
            custom_llm_provider="openai",
            api_base=server_url,
            api_key="sk-fake",
            messages=messages or BENCH_MESSAGES,
            tools=tools or [SEND_MESSAGE_TOOL],
            num_retries=0,
            max_retries=0,
        )

    result = await measure_calls(call, n, concurrency)
    await drain_litellm_logging()  # outside the timing; else it runs during the next measurement
    return result


def format_result(label: str, result: dict[str, Any]) -> str:
    return (
        f"{label:<28} n={result['n']:<5} median={result['median_ms']:7.2f} ms  "
        f"p99={result['p99_ms']:7.2f} ms  {result['calls_per_s']:8.1f} calls/s"
    )
