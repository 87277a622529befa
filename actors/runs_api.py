"""Runs, steps and the message history in the driver API: ``client.runs``, ``client.steps``
and ``client.messages`` (the shape of the Letta SDK's).

Every turn is a run (its id is in ``response.usage.run_ids`` and on each of its messages);
every LLM call of a turn is a step, with its model, tokens, timings and stop reason. Both
are stored with the turn. Each method has an ``*_async`` twin. Pages are cut by id in
time: ``after`` (later than that one) and ``before`` (earlier), whatever the ``order``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from letta_ray.messages import Message, Role, StepRecord
from letta_ray.schemas import Order

from .hosts import Connection

# A run that has not ended yet.
ACTIVE_STATUSES = ("created", "running")


class _API:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)


class RunsAPI(_API):
    """``client.runs``: list, retrieve, cancel and delete runs; a run's messages and steps."""

    async def list_async(self, *, agent_id: str | None = None, agent_ids: list[str] | None = None,
                         statuses: list[str] | None = None, active: bool = False, background: bool | None = None,
                         stop_reason: str | None = None, conversation_id: str | None = None, after: str | None = None,
                         before: str | None = None, limit: int | None = 50, order: Order = "desc"
                         ) -> list[dict[str, Any]]:
        agents = [*(agent_ids or []), *([agent_id] if agent_id else [])] or None
        if active:
            statuses = [s for s in statuses or ACTIVE_STATUSES if s in ACTIVE_STATUSES] or ["-"]
        return await self.store.list_runs(agents, statuses=statuses, background=background, stop_reason=stop_reason,
                                          conversation_id=conversation_id, after=after, before=before, limit=limit,
                                          order=order)

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        """Run docs, newest first: ``agent_id``/``agent_ids``, ``statuses``, ``active``,
        ``background``, ``stop_reason``; paged by run id (``after``/``before``, ``limit``, ``order``)."""
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, run_id: str) -> dict[str, Any]:
        return await self.store.get_run(run_id)

    def retrieve(self, run_id: str) -> dict[str, Any]:
        return self._run(self.retrieve_async(run_id))

    async def upsert_async(self, run_id: str, doc: dict[str, Any]) -> None:
        """Store a run doc (``agent_id``, ``status``, ...): a turn that runs in the background."""
        await self.store.upsert_run(run_id, doc)

    async def delete_async(self, run_id: str) -> None:
        await self.store.delete_run(run_id)

    def delete(self, run_id: str) -> None:
        """Delete a run and its steps (its messages stay in the agent's history)."""
        self._run(self.delete_async(run_id))

    async def cancel_async(self, run_id: str) -> bool:
        run = await self.store.get_run(run_id)
        if run.get("status") not in ACTIVE_STATUSES:
            return False
        from .handles import AgentHandle

        return bool(await AgentHandle(self.connection, run["agent_id"], "").cancel_async([run_id]))

    def cancel(self, run_id: str) -> bool:
        """Stop the run's turn if it is running now; False if it had ended."""
        return self._run(self.cancel_async(run_id))

    async def messages_async(self, run_id: str, *, after: str | None = None, before: str | None = None,
                             limit: int | None = 100, order: Order = "asc") -> list[Message]:
        run = await self.store.get_run(run_id)  # NotFoundError for an unknown run
        return await self.store.list_messages(run.get("agent_id"), run_id=run_id, limit=limit,
                                              after=after, before=before, order=order)

    def messages(self, run_id: str, **paging: Any) -> list[Message]:
        """The messages of a run's turn, in order."""
        return self._run(self.messages_async(run_id, **paging))

    async def steps_async(self, run_id: str, *, after: str | None = None, before: str | None = None,
                          limit: int | None = 100, order: Order = "asc") -> list[StepRecord]:
        await self.store.get_run(run_id)
        return await self.store.list_steps(run_id=run_id, after=after, before=before, limit=limit, order=order)

    def steps(self, run_id: str, **paging: Any) -> list[StepRecord]:
        """The LLM calls of a run's turn, in order."""
        return self._run(self.steps_async(run_id, **paging))


class StepsAPI(_API):
    """``client.steps``: every LLM call of every turn, with its tokens, timings and messages."""

    async def list_async(self, **filters: Any) -> list[StepRecord]:
        return await self.store.list_steps(**filters)

    def list(self, **filters: Any) -> list[StepRecord]:
        """Steps, newest first: ``agent_id``, ``run_id``, ``model``, ``start``/``end``,
        ``feedback``, ``has_feedback``, ``tags``; paged by step id (``after``/``before``,
        ``limit``, ``order``)."""
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, step_id: str) -> StepRecord:
        return await self.store.get_step(step_id)

    def retrieve(self, step_id: str) -> StepRecord:
        return self._run(self.retrieve_async(step_id))

    async def messages_async(self, step_id: str, *, after: str | None = None, before: str | None = None,
                             limit: int | None = 100, order: Order = "asc") -> list[Message]:
        step = await self.store.get_step(step_id)
        return await self.store.list_messages(step.agent_id, step_id=step_id, limit=limit,
                                              after=after, before=before, order=order)

    def messages(self, step_id: str, **paging: Any) -> list[Message]:
        """The messages one LLM call produced: the assistant message and its tools' returns."""
        return self._run(self.messages_async(step_id, **paging))

    async def feedback_async(self, step_id: str, feedback: str | None, tags: list[str] | None = None) -> StepRecord:
        return await self.store.set_step_feedback(step_id, feedback, tags)

    def feedback(self, step_id: str, feedback: str | None, tags: list[str] | None = None) -> StepRecord:
        """Rate a step "positive" or "negative" (None clears it), optionally with tags."""
        return self._run(self.feedback_async(step_id, feedback, tags))


class MessagesAPI(_API):
    """``client.messages``: the history of every agent, by id, page or search."""

    async def list_async(self, *, agent_id: str | None = None, after: str | None = None, before: str | None = None,
                         limit: int | None = 100, order: Order = "desc", start: datetime | None = None,
                         end: datetime | None = None) -> list[Message]:
        return await self.store.list_messages(agent_id, limit=limit, order=order, start=start, end=end,
                                              after=after, before=before)

    def list(self, **filters: Any) -> list[Message]:
        """Messages of all agents (or one: ``agent_id``), newest first; paged by message id."""
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, message_id: str) -> Message:
        [message] = await self.store.get_messages([message_id])
        return message

    def retrieve(self, message_id: str) -> Message:
        return self._run(self.retrieve_async(message_id))

    async def search_async(self, query: str | None, *, agent_id: str | None = None, roles: list[Role] | None = None,
                           start: datetime | None = None, end: datetime | None = None,
                           limit: int = 50) -> list[Message]:
        return await self.store.search_messages(agent_id, query, roles=roles, limit=limit, start=start, end=end)

    def search(self, query: str | None, **filters: Any) -> list[Message]:
        """Full-text search over the history (every agent's, or ``agent_id``'s), best first."""
        return self._run(self.search_async(query, **filters))
