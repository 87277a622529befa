"""Timers: periodic and one-shot wake-ups, persisted across a restart."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from letta_ray.actors.scheduler import Scheduler
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.messages import MessageCreate
from letta_ray.schemas import utcnow


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, MessageCreate, float]] = []

    async def deliver(self, agent_id: str, message: MessageCreate) -> None:
        self.got.append((agent_id, message, time.monotonic()))


async def test_a_periodic_schedule_fires_on_time_as_a_system_message() -> None:
    inbox = Inbox()
    scheduler = Scheduler(inbox.deliver)
    started = time.monotonic()
    schedule = await scheduler.add("agent-1", every_s=0.2, message="check the oven")
    await asyncio.sleep(0.7)
    fired = [t - started for _, _, t in inbox.got]
    assert len(fired) == 3 and all(abs(t - 0.2 * i) < 0.1 for i, t in enumerate(fired, start=1)), fired
    agent_id, message, _ = inbox.got[0]
    assert agent_id == "agent-1" and message.role == "system"
    assert schedule.id in message.text() and "check the oven" in message.text()
    await scheduler.cancel(schedule.id)
    await asyncio.sleep(0.3)
    assert len(inbox.got) == 3  # nothing after cancelling


async def test_a_one_shot_schedule_fires_once_and_is_gone() -> None:
    inbox = Inbox()
    scheduler = Scheduler(inbox.deliver)
    await scheduler.add("agent-2", at=utcnow() + timedelta(seconds=0.2))
    await asyncio.sleep(0.5)
    assert [a for a, _, _ in inbox.got] == ["agent-2"]
    assert scheduler.list() == []


async def test_schedules_survive_a_restart_and_bad_input_is_refused() -> None:
    saved: list[list[dict[str, Any]]] = []

    async def save(docs: list[dict[str, Any]]) -> None:
        saved.append(docs)

    first = Scheduler(Inbox().deliver, save=save)
    kept = await first.add("agent-3", every_s=3600)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        await first.add("agent-3")
    with pytest.raises(InvalidInputError):
        await first.add("agent-3", every_s=-1)
    with pytest.raises(NotFoundError):
        await first.cancel("schedule-nope")
    second = Scheduler(Inbox().deliver)
    second.load(saved[-1])
    [again] = second.list()
    assert again.id == kept.id and again.next_at == kept.next_at
