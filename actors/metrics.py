"""The runtime's metrics: recorded with ``ray.util.metrics`` in the processes where things
happen, exported by Ray on every node's metrics endpoint, and read back for the inspector.

| metric | kind | tags | recorded |
|---|---|---|---|
| ``letta_ray_turns_total`` | counter | model, stop_reason | by a host, per turn it ran |
| ``letta_ray_steps_total`` | counter | model, status | per turn: its LLM calls of the agent loop |
| ``letta_ray_llm_latency_seconds`` | histogram | model | per step: the LLM call's duration |
| ``letta_ray_prompt_tokens_total``, ``letta_ray_completion_tokens_total`` | counter | model | per turn |
| ``letta_ray_tool_calls_total`` | counter | tool, status | per turn, by tool |
| ``letta_ray_host_queue_depth`` | gauge | host | turns waiting or running in the host |
| ``letta_ray_host_agents`` | gauge | host | agents the host holds in memory |
| ``letta_ray_store_apply_lag_seconds`` | gauge | store | DuckDB holds every turn journaled longer ago |
| ``letta_ray_store_apply_lag_bytes`` | gauge | store | hosts' journal bytes not yet applied |

``model`` is the model string of the turn's LLM config (``openai/gpt-4o-mini``); ``host``
and ``store`` are the actor's name (``letta_ray-<id>-host-3``), unique across the runtimes
of one cluster. Ray prefixes every name with ``ray_`` on its endpoint
(``ray_letta_ray_turns_total``) and adds labels of its own (WorkerId, Component, ...).

A turn records about six points (~5 µs each: a call into Ray's core worker), from tag
dictionaries built once. Ray forgets a gauge that was not set within two report intervals,
so gauges are not set as things change but every ``refresh_s()`` by a ``GaugeSampler``; the
gauges of a host that died go away by themselves. Recording works without Ray (it goes
nowhere), so the actors' plain classes run in unit tests unchanged.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

if TYPE_CHECKING:
    from letta_ray.agent import StepResult

log = logging.getLogger(__name__)

PREFIX = "ray_letta_ray_"  # what our metrics are called on Ray's endpoints
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0]
# Stop reasons of turns that failed (the others ended as the model, a rule or the caller chose).
ERROR_STOP_REASONS = frozenset({"error", "llm_api_error", "invalid_tool_call", "context_window_overflow"})

HOST_QUEUE_DEPTH = "letta_ray_host_queue_depth"
HOST_AGENTS = "letta_ray_host_agents"
STORE_APPLY_LAG_S = "letta_ray_store_apply_lag_seconds"
STORE_APPLY_LAG_BYTES = "letta_ray_store_apply_lag_bytes"

# Labels Ray adds to every series, saying which process and node recorded it: summed away.
_PROCESS_LABELS = frozenset({"WorkerId", "Component", "SessionName", "Version", "NodeAddress", "JobId"})


class _Tags:
    """Tag dictionaries by their values, each built once (Ray's record takes a dict)."""

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self._made: dict[tuple[str, ...], dict[str, str]] = {}

    def __call__(self, *values: str) -> dict[str, str]:
        tags = self._made.get(values)
        if tags is None:
            tags = self._made[values] = dict(zip(self.keys, values, strict=True))
        return tags


class TurnMetrics:
    """What agents' turns record, one instance per process (``TurnMetrics.shared()``)."""

    _shared: ClassVar[TurnMetrics | None] = None

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.turns = Counter("letta_ray_turns_total", "Agent turns run, by model and stop reason",
                             ("model", "stop_reason"))
        self.steps = Counter("letta_ray_steps_total", "LLM calls of the agent loop (steps), by model and status",
                             ("model", "status"))
        self.llm_latency = Histogram("letta_ray_llm_latency_seconds", "Duration of a step's LLM call, seconds",
                                     LATENCY_BUCKETS_S, ("model",))
        self.prompt_tokens = Counter("letta_ray_prompt_tokens_total", "Prompt tokens of turns, by model", ("model",))
        self.completion_tokens = Counter("letta_ray_completion_tokens_total", "Completion tokens of turns, by model",
                                         ("model",))
        self.tool_calls = Counter("letta_ray_tool_calls_total", "Tool calls of turns, by tool and status",
                                  ("tool", "status"))
        self._model = _Tags("model")
        self._turn = _Tags("model", "stop_reason")
        self._step = _Tags("model", "status")
        self._tool = _Tags("tool", "status")

    @classmethod
    def shared(cls) -> TurnMetrics:
        """This process's instance, made on first use."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def record(self, model: str, result: StepResult) -> None:
        """One turn that ran on ``model`` (the turn's LLM config; a retry answered from
        memory is no turn): its stop reason, steps and their latency, tokens, tool calls."""
        self.turns.inc(1, self._turn(model, result.stop_reason.stop_reason))
        by_model = self._model(model)
        statuses: dict[str, int] = {}
        for step in result.steps:
            statuses[step.status] = statuses.get(step.status, 0) + 1
            if step.llm_request_ns is not None:
                self.llm_latency.observe(step.llm_request_ns / 1e9, by_model)
        for status, count in statuses.items():
            self.steps.inc(count, self._step(model, status))
        if result.usage.prompt_tokens > 0:  # Ray's counters refuse an increment of 0
            self.prompt_tokens.inc(result.usage.prompt_tokens, by_model)
        if result.usage.completion_tokens > 0:
            self.completion_tokens.inc(result.usage.completion_tokens, by_model)
        calls: dict[tuple[str, str], int] = {}
        for message in result.new_messages:
            if message.role == "tool" and message.name:
                key = (message.name, message.tool_status or "success")
                calls[key] = calls.get(key, 0) + 1
        for (tool, status), count in calls.items():
            self.tool_calls.inc(count, self._tool(tool, status))


def refresh_s() -> float:
    """How often a sampler sets its gauges: twice per report interval (Ray drops a gauge
    not set within two), never more than once a second (Ray's floor for the interval)."""
    interval_ms = float(os.environ.get("RAY_metrics_report_interval_ms") or 10_000)
    return max(1.0, interval_ms / 2000.0)


def _actor_name() -> str | None:
    """This process's Ray actor name; None outside a Ray actor (a driver, a unit test)."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    return context.get_actor_name() or context.get_actor_id()


class GaugeSampler:
    """Gauges of one actor, tagged ``{tag: <actor name>}``, set from ``read()`` every
    ``refresh_s()``. ``start()`` (from the actor's event loop) does nothing outside a Ray
    actor, so the actor's plain class runs no timer in unit tests."""

    def __init__(self, tag: str, gauges: dict[str, str], read: Callable[[], Sequence[float]]) -> None:
        self.tag = tag
        self.gauges = gauges  # name -> description, in the order ``read`` gives the values
        self.read = read
        self._task: asyncio.Future[None] | None = None
        self._off = False

    def start(self) -> None:
        if self._task is not None or self._off:
            return
        name = _actor_name()
        if name is None:
            self._off = True
            return
        self._task = asyncio.ensure_future(self._run(name))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self, name: str) -> None:
        from ray.util.metrics import Gauge

        gauges = [Gauge(gauge, description, (self.tag,)) for gauge, description in self.gauges.items()]
        tags = {self.tag: name}
        every = refresh_s()
        while True:
            try:
                for gauge, value in zip(gauges, self.read(), strict=True):
                    gauge.set(value, tags)
            except Exception:  # a metric must never take its actor down
                log.warning("sampling %s failed", list(self.gauges), exc_info=True)
            await asyncio.sleep(every)


def host_gauges(read: Callable[[], tuple[int, int]]) -> GaugeSampler:
    """An agent host's gauges; ``read()`` gives (turns waiting or running, agents hosted)."""
    return GaugeSampler("host", {HOST_QUEUE_DEPTH: "Turns waiting or running in the agent host",
                                 HOST_AGENTS: "Agents held by the agent host"}, read)


def store_gauges(read: Callable[[], tuple[float, int]]) -> GaugeSampler:
    """The metadata store's apply lag; ``read()`` gives (seconds, bytes)."""
    return GaugeSampler("store", {
        STORE_APPLY_LAG_S: "The store holds every turn journaled longer ago than this (0: nothing waits)",
        STORE_APPLY_LAG_BYTES: "Bytes of the hosts' journals not yet applied to the store"}, read)


# --------------------------------------------------------------------------- reading them back


class Sample(TypedDict):
    """One series: its labels (Ray's per-process ones dropped) and its value."""

    labels: dict[str, str]
    value: float


def parse_metrics(texts: Iterable[str], prefix: str = PREFIX) -> dict[str, list[Sample]]:
    """The series named ``prefix...`` in Prometheus texts (one per node), by name without
    Ray's ``ray_`` (``letta_ray_turns_total``); the same series recorded by several
    processes or nodes summed into one (labels WorkerId, Component, SessionName, Version,
    NodeAddress and otel_* dropped). A histogram gives ``<name>_bucket`` (label ``le``),
    ``_count`` and ``_sum``."""
    from prometheus_client.parser import text_string_to_metric_families

    heads = (prefix, f"# HELP {prefix}", f"# TYPE {prefix}")
    totals: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for text in texts:
        # Ray's own hundreds of series are skipped before parsing, not parsed and dropped.
        ours = "\n".join(line for line in text.splitlines() if line.startswith(heads))
        for family in text_string_to_metric_families(ours):
            for sample in family.samples:
                if not sample.name.startswith(prefix):
                    continue
                name = sample.name.removeprefix("ray_")
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k not in _PROCESS_LABELS and not k.startswith("otel_")))
                series = totals.setdefault(name, {})
                series[labels] = series.get(labels, 0.0) + sample.value
    return {name: [Sample(labels=dict(labels), value=value) for labels, value in sorted(series.items())]
            for name, series in sorted(totals.items())}


def metrics_endpoints() -> list[str]:
    """The metrics endpoint of every alive Ray node (Ray must be initialised here)."""
    import ray

    urls = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            address = node["NodeManagerAddress"]
            urls.append(f"http://{f'[{address}]' if ':' in address else address}:{port}/metrics")
    return urls


async def read_metrics(prefix: str = PREFIX, *, endpoints: list[str] | None = None,
                       timeout_s: float = 5.0) -> dict[str, list[Sample]]:
    """Scrape every alive node's metrics endpoint (or ``endpoints``) and ``parse_metrics``:
    e.g. ``{"letta_ray_turns_total": [{"labels": {"model": "openai/gpt-4o-mini",
    "stop_reason": "end_turn"}, "value": 3.0}], ...}``.

    The numbers lag: each process reports to its node every ``RAY_metrics_report_interval_ms``
    (10 s by default), so a turn shows up to one interval (plus a scrape) after it ended.
    A node that does not answer within ``timeout_s`` is left out (and logged)."""
    import httpx

    urls = endpoints if endpoints is not None else await asyncio.to_thread(metrics_endpoints)

    async def scrape(client: httpx.AsyncClient, url: str) -> str:
        try:
            response = await client.get(url)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("metrics endpoint %s did not answer: %s", url, exc)
            return ""
        return response.text

    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        texts = await asyncio.gather(*(scrape(client, url) for url in urls))
    return parse_metrics(texts, prefix)


def summary(metrics: dict[str, list[Sample]]) -> dict[str, Any]:
    """What the inspector shows, from ``read_metrics()``: totals, each model's turns, steps,
    tokens and LLM latency (p50 from the histogram's buckets, mean), turns by stop reason and
    those that failed, tool calls, each host's queue depth and agents, each store's lag."""

    def series(name: str) -> list[Sample]:
        return metrics.get(name, [])

    models: dict[str, dict[str, Any]] = {}

    def model(name: str) -> dict[str, Any]:
        return models.setdefault(name, {"turns": 0, "steps": 0, "failed_steps": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0, "llm_calls": 0, "llm_latency_p50_s": None,
                                        "llm_latency_mean_s": None})

    stop_reasons: dict[str, int] = {}
    for s in series("letta_ray_turns_total"):
        model(s["labels"]["model"])["turns"] += int(s["value"])
        reason = s["labels"]["stop_reason"]
        stop_reasons[reason] = stop_reasons.get(reason, 0) + int(s["value"])
    for s in series("letta_ray_steps_total"):
        entry = model(s["labels"]["model"])
        entry["steps"] += int(s["value"])
        if s["labels"].get("status") == "failed":
            entry["failed_steps"] += int(s["value"])
    for kind in ("prompt", "completion"):
        for s in series(f"letta_ray_{kind}_tokens_total"):
            model(s["labels"]["model"])[f"{kind}_tokens"] += int(s["value"])
    sums = {s["labels"]["model"]: s["value"] for s in series("letta_ray_llm_latency_seconds_sum")}
    for s in series("letta_ray_llm_latency_seconds_count"):
        entry = model(s["labels"]["model"])
        entry["llm_calls"] = int(s["value"])
        if s["value"]:
            entry["llm_latency_mean_s"] = sums.get(s["labels"]["model"], 0.0) / s["value"]
    buckets: dict[str, list[tuple[float, float]]] = {}
    for s in series("letta_ray_llm_latency_seconds_bucket"):
        buckets.setdefault(s["labels"]["model"], []).append((float(s["labels"]["le"]), s["value"]))
    for name, cumulative in buckets.items():
        model(name)["llm_latency_p50_s"] = histogram_quantile(0.5, cumulative)
    tools: dict[str, dict[str, int]] = {}
    for s in series("letta_ray_tool_calls_total"):
        tools.setdefault(s["labels"]["tool"], {})[s["labels"]["status"]] = int(s["value"])
    hosts: dict[str, dict[str, float]] = {}
    for key, name in (("queue_depth", HOST_QUEUE_DEPTH), ("agents", HOST_AGENTS)):
        for s in series(name):
            hosts.setdefault(s["labels"]["host"], {})[key] = s["value"]
    stores: dict[str, dict[str, float]] = {}
    for key, name in (("apply_lag_s", STORE_APPLY_LAG_S), ("apply_lag_bytes", STORE_APPLY_LAG_BYTES)):
        for s in series(name):
            stores.setdefault(s["labels"]["store"], {})[key] = s["value"]
    return {"turns": sum(m["turns"] for m in models.values()), "steps": sum(m["steps"] for m in models.values()),
            "models": dict(sorted(models.items())), "stop_reasons": dict(sorted(stop_reasons.items())),
            "errors": {r: n for r, n in sorted(stop_reasons.items()) if r in ERROR_STOP_REASONS},
            "tool_calls": dict(sorted(tools.items())), "hosts": dict(sorted(hosts.items())),
            "stores": dict(sorted(stores.items()))}


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram from its cumulative buckets ``(le, count)``, as
    Prometheus's ``histogram_quantile`` estimates it (linear within the bucket; the highest
    finite bound if it falls in the last). None for an empty histogram."""
    cumulative = sorted(cumulative)
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    counts = [count for _, count in cumulative]
    i = bisect.bisect_left(counts, rank)
    upper, count = cumulative[i]
    if math.isinf(upper):
        return cumulative[i - 1][0] if i > 0 else None
    lower, below = cumulative[i - 1] if i > 0 else (0.0, 0.0)
    if count == below:
        return upper
    return lower + (upper - lower) * (rank - below) / (count - below)
