"""The cluster-wide LLM limiter as plain classes (no Ray): caps hold, waiters are served, limits change live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from letta_ray.actors.directory import Directory
from letta_ray.actors.limits import LimitedLLM, LimitsView, LLMLimiter, parse_limits
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import LLMConfig, LLMLimit
from letta_ray.testing import FunctionLLM


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _burst(limiter: LLMLimiter, model: str, n: int, hold_s: float) -> int:
    """``n`` requests at once, each holding its slot ``hold_s``; returns the most seen in flight."""
    in_flight = peak = 0

    async def one() -> None:
        nonlocal in_flight, peak
        await limiter.acquire(model)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(hold_s)
        in_flight -= 1
        await limiter.release(model)

    await asyncio.gather(*(one() for _ in range(n)))
    return peak


async def test_max_concurrent_holds_under_a_burst_and_everyone_is_served() -> None:
    limiter = LLMLimiter({"m": LLMLimit(max_concurrent=3)})
    peak = await _burst(limiter, "m", 30, 0.005)
    assert peak == 3
    stats = limiter.stats()["m"]
    assert stats == {"in_flight": 0, "max_in_flight": 3, "started": 30, "waiting": 0}


async def test_the_default_limit_applies_per_model_and_named_models_override_it() -> None:
    limiter = LLMLimiter({"*": LLMLimit(max_concurrent=2), "big": LLMLimit(max_concurrent=5)})
    assert await _burst(limiter, "small", 12, 0.003) == 2
    assert await _burst(limiter, "big", 12, 0.003) == 5
    assert LLMLimiter().limit_of("anything") is None  # no limits: nothing waits
    assert await _burst(LLMLimiter(), "anything", 12, 0.001) == 12


async def test_requests_per_minute_waits_for_the_window_to_free_a_start() -> None:
    clock = _Clock()
    limiter = LLMLimiter({"m": LLMLimit(requests_per_minute=2)}, clock=clock)
    await limiter.acquire("m")
    await limiter.acquire("m")
    third = asyncio.ensure_future(limiter.acquire("m"))
    await asyncio.sleep(0.05)
    assert not third.done()  # two started in this minute already
    clock.now += 60.0  # the first start leaves the window
    await limiter.release("m")  # any release (or the timeout) re-checks the window
    await asyncio.wait_for(third, 1)
    assert limiter.stats()["m"]["started"] == 3


async def test_raising_a_limit_at_runtime_wakes_the_waiters() -> None:
    limiter = LLMLimiter({"m": LLMLimit(max_concurrent=1)})
    await limiter.acquire("m")
    waiter = asyncio.ensure_future(limiter.acquire("m"))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await limiter.configure({"m": LLMLimit(max_concurrent=2)})
    await asyncio.wait_for(waiter, 1)
    assert limiter.stats()["m"]["in_flight"] == 2


async def test_limited_llm_takes_a_slot_from_the_directory_around_each_request() -> None:
    directory = Directory(lambda host_id: None, llm_limits={"*": LLMLimit(max_concurrent=2)})
    in_flight = peak = 0

    async def slow(messages: list[dict[str, Any]], info: Any) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "ok"

    llm = LimitedLLM(FunctionLLM(slow), LimitsView(directory))
    config = LLMConfig(model="openai/x")
    results = await asyncio.gather(*(llm.complete([{"role": "user", "content": "hi"}], [], config)
                                     for _ in range(10)))
    assert [r.content for r in results] == ["ok"] * 10
    assert peak == 2
    assert (await directory.llm_stats())["openai/x"]["max_in_flight"] == 2
    # A failing request gives its slot back too.
    failing = LimitedLLM(FunctionLLM(lambda m, i: 1 / 0), LimitsView(directory))
    with pytest.raises(ZeroDivisionError):
        await failing.complete([], [], config)
    assert (await directory.llm_stats())["openai/x"]["in_flight"] == 0


def test_bad_limits_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidInputError, match="max_concurrent"):
        parse_limits({"*": {"max_concurrent": 0}})
    with pytest.raises(InvalidInputError, match="Extra inputs"):
        parse_limits({"*": {"max_in_flight": 3}})
