"""Timers: wake an agent every N seconds or at a given time, with a system message.

A plain class (unit-tested without Ray) that the directory actor hosts: schedules are
persisted through ``save`` on every change and reloaded through ``load`` when the
directory starts, so they survive a restart. A wake-up is delivered like any message
(the agent's turn waits for its mailbox), as a system message saying which schedule
fired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, model_validator

from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.messages import MessageCreate
from letta_ray.schemas import new_id, utcnow

log = logging.getLogger(__name__)


class Schedule(BaseModel):
    """A wake-up of one agent: every ``every_s`` seconds, or once at ``at``."""

    id: str = Field(default_factory=lambda: new_id("schedule"))
    agent_id: str
    message: str = "Scheduled wake-up: check whether anything needs doing."
    every_s: float | None = Field(default=None, gt=0)
    at: datetime | None = None
    next_at: datetime | None = None
    fired: int = 0

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.every_s is None) == (self.at is None):
            raise ValueError("give exactly one of every_s (a period) or at (a time)")
        if self.at is not None and self.at.tzinfo is None:
            self.at = self.at.replace(tzinfo=UTC)
        if self.next_at is None:
            self.next_at = self.at if self.at is not None else utcnow() + timedelta(seconds=self.every_s or 0)
        return self


Deliver = Callable[[str, MessageCreate], Awaitable[Any]]


class Scheduler:
    """Fires schedules on time; ``deliver(agent_id, message)`` sends the wake-up."""

    def __init__(self, deliver: Deliver, *, save: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._deliver = deliver
        self._save = save
        self._clock = clock
        self.schedules: dict[str, Schedule] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    def load(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            schedule = Schedule.model_validate(doc)
            self.schedules[schedule.id] = schedule

    async def add(self, agent_id: str, *, every_s: float | None = None, at: datetime | None = None,
                  message: str | None = None) -> Schedule:
        try:
            schedule = Schedule(agent_id=agent_id, every_s=every_s, at=at,
                                **({"message": message} if message else {}))
        except ValueError as exc:
            raise InvalidInputError(f"invalid schedule: {exc}") from exc
        self.schedules[schedule.id] = schedule
        await self._persist()
        self._wake()
        return schedule

    async def cancel(self, schedule_id: str) -> None:
        if self.schedules.pop(schedule_id, None) is None:
            raise NotFoundError("schedule", schedule_id)
        await self._persist()
        self._wake()

    async def cancel_agent(self, agent_id: str) -> None:
        for sid in [s.id for s in self.schedules.values() if s.agent_id == agent_id]:
            del self.schedules[sid]
        await self._persist()

    def list(self, agent_id: str | None = None) -> list[Schedule]:
        return sorted((s for s in self.schedules.values() if agent_id is None or s.agent_id == agent_id),
                      key=lambda s: s.next_at or utcnow())

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _persist(self) -> None:
        if self._save is not None:
            await self._save([s.model_dump(mode="json") for s in self.schedules.values()])

    def _wake(self) -> None:
        self._changed.set()
        self.start()

    async def _run(self) -> None:
        while self.schedules:
            now = self._clock()
            due = [s for s in self.schedules.values() if s.next_at is not None and s.next_at <= now]
            for schedule in due:
                self._fire(schedule, now)
            if due:
                await self._persist()
            upcoming = [s.next_at for s in self.schedules.values() if s.next_at is not None]
            if not upcoming:
                break
            wait = max(0.0, (min(upcoming) - self._clock()).total_seconds())
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
            except TimeoutError:
                pass

    def _fire(self, schedule: Schedule, now: datetime) -> None:
        schedule.fired += 1
        when = now.strftime("%Y-%m-%d %H:%M:%S UTC")
        text = f"[Scheduled wake-up {schedule.id} at {when}] {schedule.message}"
        task = asyncio.ensure_future(self._deliver(schedule.agent_id, MessageCreate(role="system", content=text)))
        self._inflight.add(task)
        task.add_done_callback(self._done)
        if schedule.every_s is not None:
            # the next slot after now: a slow wake-up never causes a burst of catch-ups
            next_at = schedule.next_at or now
            while next_at <= now:
                next_at += timedelta(seconds=schedule.every_s)
            schedule.next_at = next_at
        else:
            del self.schedules[schedule.id]

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a scheduled wake-up failed: %s", task.exception())
