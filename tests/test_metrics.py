"""The runtime's metrics: recorded by hosts and the store, exported by Ray, read back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from letta_ray.actors._journal import Journal, TurnRecord
from letta_ray.actors.host import AgentHost
from letta_ray.actors.metadata_store import MetadataStoreActor, MetadataStoreHandle
from letta_ray.actors.metrics import Sample, histogram_quantile, parse_metrics, read_metrics, summary
from letta_ray.messages import MessageCreate
from letta_ray.schemas import AgentState, LLMConfig
from letta_ray.testing import FunctionLLM, send_message

_RAY = 'Component="core_worker",NodeAddress="127.0.0.1",SessionName="s",Version="2.60.0",WorkerId="{w}"'
_OTEL = 'otel_scope_name="ray",otel_scope_schema_url="",otel_scope_version=""'


def worker(w: str, turns: float, latencies: tuple[float, float, float], queue: float) -> str:
    """One worker's series as a node's endpoint shows them (Ray's labels and all)."""
    ray, model = _RAY.format(w=w), 'model="m"'
    fast, slow, total = latencies
    return f"""\
# HELP ray_letta_ray_turns_total Agent turns run
# TYPE ray_letta_ray_turns_total counter
ray_letta_ray_turns_total{{{ray},{model},stop_reason="end_turn",{_OTEL}}} {turns}
ray_letta_ray_turns_total{{{ray},{model},stop_reason="llm_api_error",{_OTEL}}} 1.0
# HELP ray_letta_ray_llm_latency_seconds LLM call
# TYPE ray_letta_ray_llm_latency_seconds histogram
ray_letta_ray_llm_latency_seconds_bucket{{{ray},le="0.1",{model},{_OTEL}}} {fast}
ray_letta_ray_llm_latency_seconds_bucket{{{ray},le="1.0",{model},{_OTEL}}} {fast + slow}
ray_letta_ray_llm_latency_seconds_bucket{{{ray},le="+Inf",{model},{_OTEL}}} {fast + slow}
ray_letta_ray_llm_latency_seconds_count{{{ray},{model},{_OTEL}}} {fast + slow}
ray_letta_ray_llm_latency_seconds_sum{{{ray},{model},{_OTEL}}} {total}
# HELP ray_letta_ray_host_queue_depth Turns waiting or running
# TYPE ray_letta_ray_host_queue_depth gauge
ray_letta_ray_host_queue_depth{{{ray},host="letta_ray-x-host-{w}",{_OTEL}}} {queue}
# HELP ray_tasks Ray's own
# TYPE ray_tasks gauge
ray_tasks{{{ray},State="RUNNING"}} 7.0
"""


def test_series_of_several_workers_are_summed_and_their_labels_dropped() -> None:
    node = worker("a", 2.0, (3.0, 0.0, 0.15), 4.0) + worker("b", 3.0, (1.0, 4.0, 2.05), 0.0)
    parsed = parse_metrics([node, node.replace('NodeAddress="127.0.0.1"', 'NodeAddress="10.0.0.2"')])

    def m(labels: dict[str, str], value: float) -> Sample:
        return {"labels": labels, "value": value}

    assert parsed["letta_ray_turns_total"] == [m({"model": "m", "stop_reason": "end_turn"}, 10.0),
                                               m({"model": "m", "stop_reason": "llm_api_error"}, 4.0)]
    assert parsed["letta_ray_llm_latency_seconds_bucket"] == [
        m({"le": "+Inf", "model": "m"}, 16.0), m({"le": "0.1", "model": "m"}, 8.0),
        m({"le": "1.0", "model": "m"}, 16.0)]
    assert parsed["letta_ray_llm_latency_seconds_count"] == [m({"model": "m"}, 16.0)]
    # a gauge per host: the two nodes' copies of one host's series are summed too
    assert parsed["letta_ray_host_queue_depth"] == [m({"host": "letta_ray-x-host-a"}, 8.0),
                                                    m({"host": "letta_ray-x-host-b"}, 0.0)]
    assert "tasks" not in parsed and all(name.startswith("letta_ray_") for name in parsed)

    totals = summary(parsed)
    model = totals["models"]["m"]
    assert totals["turns"] == 14 and model["turns"] == 14 and model["llm_calls"] == 16
    assert totals["stop_reasons"] == {"end_turn": 10, "llm_api_error": 4}
    assert totals["errors"] == {"llm_api_error": 4}
    assert model["llm_latency_mean_s"] == pytest.approx(4.4 / 16)
    assert model["llm_latency_p50_s"] == pytest.approx(0.1)  # half the calls took at most 0.1 s
    assert totals["hosts"] == {"letta_ray-x-host-a": {"queue_depth": 8.0}, "letta_ray-x-host-b": {"queue_depth": 0.0}}


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]) == pytest.approx(0.15)
    assert histogram_quantile(0.9, [(0.1, 5.0), (float("inf"), 10.0)]) == 0.1  # past the last bound: that bound
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def agent_state(model: str = "openai/fake") -> AgentState:
    return AgentState(name=f"a-{uuid.uuid4().hex[:6]}", system="You are a test agent.", tools=["send_message"],
                      llm_config=LLMConfig(model=model))


async def test_a_hosts_queue_depth_counts_turns_waiting_and_running(tmp_path: Path) -> None:
    meta = MetadataStoreActor(tmp_path / "meta.duckdb", batch_ms=1.0)
    release = asyncio.Event()

    async def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        await release.wait()
        return send_message("ok")

    host = AgentHost("h", MetadataStoreHandle.local(meta), None, llm=FunctionLLM(fn))
    a, b = agent_state(), agent_state()
    await host.create_agents([a, b])
    assert host._gauges.read() == (0, 2)  # what the host's gauges are set from
    turns = [asyncio.ensure_future(host.send(agent.id, [MessageCreate(content="hi")])) for agent in (a, a, a, b)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if host._gauges.read()[0] == 4:
            break
    assert host._gauges.read() == (4, 2)  # a's first turn and b's run, a's other two wait their turn
    release.set()
    await asyncio.gather(*turns)
    assert host._gauges.read() == (0, 2)
    await meta.close()


async def test_the_stores_apply_lag_is_what_the_hosts_journaled_and_it_has_not_applied(tmp_path: Path) -> None:
    journals = tmp_path / "journal"
    meta = MetadataStoreActor(tmp_path / "meta.duckdb", batch_ms=1.0, host_journals=journals)
    state = agent_state()
    await meta.create_agents([state], [[]])
    assert meta._apply_lag() == (0.0, 0)
    journal = Journal(journals / "host-0-abc-000000.log")
    journal.append([TurnRecord(1, state, [], [])])
    await asyncio.sleep(0.05)
    seconds, waiting = meta._apply_lag()
    assert waiting == journal.size() > 0 and seconds >= 0.05
    await meta.ingest_host_journals()
    assert meta._apply_lag() == (0.0, 0)
    journal.close()
    await meta.close()


@pytest.mark.ray
def test_turns_show_on_rays_metrics_endpoint(client: Any, fake_llm_server: Any) -> None:
    model = f"metrics-{uuid.uuid4().hex[:6]}"  # no other test's turns mix in
    agent = client.create_agent(f"m-{uuid.uuid4().hex[:6]}", model=model, model_endpoint=fake_llm_server.url,
                                memory_blocks=[{"label": "human", "value": "Name: Ada"}])
    replies = [agent.send(text) for text in ("hello", "remember Ada likes tea")]
    host_id, _ = client.run_sync(client.hosts.locate(agent.id))
    deadline = time.monotonic() + 30
    while True:
        raw = client.run_sync(read_metrics())
        totals = summary(raw)
        mine = totals["models"].get(model)
        host = next((h for name, h in totals["hosts"].items() if name.endswith(f"-{host_id}")), None)
        if (mine and mine["turns"] == 2 and mine["llm_calls"] == 3 and host and totals["stores"]) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine is not None, totals
    assert [s["value"] for s in raw["letta_ray_turns_total"] if s["labels"]["model"] == model] == [2.0]
    assert {s["labels"]["stop_reason"] for s in raw["letta_ray_turns_total"] if s["labels"]["model"] == model} \
        == {"end_turn"}
    assert mine["steps"] == sum(r.usage.step_count for r in replies) == 3  # memory_insert, then send_message
    assert mine["llm_calls"] == mine["steps"] and mine["llm_latency_p50_s"] is not None
    assert mine["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies) > 0
    assert mine["completion_tokens"] == sum(r.usage.completion_tokens for r in replies) > 0
    assert totals["tool_calls"]["memory_insert"]["success"] >= 1
    assert host is not None, totals["hosts"]
    assert host["agents"] >= 1 and host["queue_depth"] >= 0
    assert totals["stores"] and all(set(s) == {"apply_lag_s", "apply_lag_bytes"} for s in totals["stores"].values())
