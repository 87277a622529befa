"""The runtime's metrics: recorded by hosts and the store, exported by Ray, read back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from letta_ray.actors.metrics import histogram_quantile, parse_metrics, read_metrics, summary

TWO_WORKERS = """\
# HELP ray_letta_ray_turns_total Agent turns run
# TYPE ray_letta_ray_turns_total counter
ray_letta_ray_turns_total{Component="core_worker",WorkerId="a",model="m",stop_reason="end_turn",otel_scope_name="x"} 2.0
ray_letta_ray_turns_total{Component="core_worker",WorkerId="b",model="m",stop_reason="end_turn",otel_scope_name="x"} 3.0
ray_letta_ray_turns_total{Component="core_worker",WorkerId="b",model="m",stop_reason="llm_api_error"} 1.0
# HELP ray_other_total Not ours
# TYPE ray_other_total counter
ray_other_total{WorkerId="a"} 7.0
"""


def test_series_of_several_workers_are_summed_and_their_labels_dropped() -> None:
    parsed = parse_metrics([TWO_WORKERS, TWO_WORKERS])  # two nodes alike
    assert parsed == {"letta_ray_turns_total": [
        {"labels": {"model": "m", "stop_reason": "end_turn"}, "value": 10.0},
        {"labels": {"model": "m", "stop_reason": "llm_api_error"}, "value": 2.0}]}
    totals = summary(parsed)
    assert totals["turns"] == 12 and totals["models"]["m"]["turns"] == 12
    assert totals["errors"] == {"llm_api_error": 2}


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]) == pytest.approx(0.15)
    assert histogram_quantile(0.5, []) is None


@pytest.mark.ray
def test_a_turn_shows_on_rays_metrics_endpoint(client: Any, fake_llm_server: Any) -> None:
    model = f"metrics-{uuid.uuid4().hex[:6]}"  # no other test's turns mix in
    agent = client.create_agent(name=f"m-{uuid.uuid4().hex[:6]}", model=model, model_endpoint=fake_llm_server.url,
                                memory_blocks=[{"label": "human", "value": "Name: Ada"}])
    for text in ("hello", "remember Ada likes tea"):
        agent.send(text)
    deadline = time.monotonic() + 45
    while True:
        totals = summary(client.run_sync(read_metrics()))
        mine = totals["models"].get(model)
        if (mine and mine["turns"] == 2 and mine["llm_calls"] == mine["steps"] and totals["hosts"]
                and totals["stores"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert mine is not None, totals
    assert mine["turns"] == 2 and mine["steps"] == 3  # the memory_insert turn took two LLM calls
    assert mine["llm_calls"] == mine["steps"] and mine["llm_latency_p50_s"] is not None
    assert mine["prompt_tokens"] > 0 and mine["completion_tokens"] > 0
    assert totals["tool_calls"]["memory_insert"]["success"] >= 1
    host = next(iter(totals["hosts"].values()))
    assert set(host) == {"queue_depth", "agents"} and any(h["agents"] >= 1 for h in totals["hosts"].values())
    assert all(set(s) == {"apply_lag_s", "apply_lag_bytes"} for s in totals["stores"].values())
