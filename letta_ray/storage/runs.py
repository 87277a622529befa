"""Runs and steps: what each turn did, in the metadata file beside its messages.

A run is one request's turn (or a background job such as a sleep-time run): its status,
stop reason, usage and timing, as a JSON doc. A step is one LLM call of a turn
(``StepRecord``). Turns write both in the transaction that appends their messages, so a
turn's run, steps and messages are stored together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb

from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.messages import StepRecord
from letta_ray.schemas import Cursor, Order
from letta_ray.storage._duckdb_file import DuckDBFile
from letta_ray.storage._duckdb_layout import (
    _RUNS,
    _STEPS,
    _date_clauses,
    _to_json,
    _utc,
    _utc_model,
)

# A turn's run doc is merged into what is stored (a background run's doc, written by the
# HTTP layer before the turn began, keeps its own fields); its created_at stays.
_MERGE_RUN = (
    "INSERT INTO runs (id, agent_id, status, created_at, doc) SELECT id, agent_id, status, created_at, doc::JSON "
    "FROM _incoming_runs ON CONFLICT (id) DO UPDATE SET agent_id = excluded.agent_id, status = excluded.status, "
    "doc = json_merge_patch(json_merge_patch(runs.doc, excluded.doc), "
    "json_object('created_at', runs.doc->'created_at'))"
)


def _created_at(doc: dict[str, Any]) -> datetime:
    created = doc.get("created_at")
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    if created is None:
        return datetime.now(UTC)
    if not isinstance(created, datetime):
        raise InvalidInputError(f"run created_at must be a datetime, got {created!r}")
    return _utc(created)


class RunStore:
    """The ``runs`` and ``steps`` tables of a ``DuckDBFile``."""

    def __init__(self, db: DuckDBFile) -> None:
        self._db = db

    # ------------------------------------------------------------------ runs

    def upsert_run(self, run_id: str, doc: dict[str, Any]) -> None:
        """Store a run doc (``agent_id``, ``status``, ``created_at``); created_at defaults to
        the stored one, else now."""
        with self._db.tx() as conn:
            if doc.get("created_at") is None:
                row = conn.execute("SELECT doc->>'created_at' FROM runs WHERE id = ?", [run_id]).fetchone()
                if row and row[0]:
                    doc = {**doc, "created_at": row[0]}
            created = _created_at(doc)
            conn.execute(_RUNS.upsert_sql(), [run_id, doc.get("agent_id"), doc.get("status"), created,
                                              _to_json({**doc, "id": run_id, "created_at": created})])

    def record_turns(self, conn: duckdb.DuckDBPyConnection, runs: Sequence[dict[str, Any]],
                     steps: Sequence[StepRecord]) -> None:
        """The runs and steps of journaled turns, inside the caller's transaction.

        A run doc is merged into the stored one (fields it lacks stay); of several docs of
        one run in a batch, later fields win."""
        merged: dict[str, dict[str, Any]] = {}
        for doc in runs:
            merged[doc["id"]] = {**merged.get(doc["id"], {}), **doc}
        if merged:
            rows = [[run_id, doc.get("agent_id"), doc.get("status"), _created_at(doc),
                     _to_json({**doc, "created_at": _created_at(doc)})] for run_id, doc in merged.items()]
            conn.register("_incoming_runs", _RUNS._arrow(rows))
            try:
                conn.execute(_MERGE_RUN)
            finally:
                conn.unregister("_incoming_runs")
        _STEPS.insert(conn, [_STEPS.row(_utc_model(s)) for s in steps])

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self._db.locked() as conn:
            row = conn.execute("SELECT doc FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFoundError("run", run_id)
        return json.loads(row[0])

    def list_runs(
        self,
        agent_ids: Sequence[str] | None = None,
        *,
        statuses: Sequence[str] | None = None,
        background: bool | None = None,
        stop_reason: str | None = None,
        conversation_id: str | None = None,
        after: Cursor | None = None,
        before: Cursor | None = None,
        limit: int | None = 50,
        order: Order = "desc",
    ) -> list[dict[str, Any]]:
        """Run docs by creation time (``order``), created after the run ``after`` and before the
        run ``before`` (ids; in time, whatever the order)."""
        clauses: list[str] = []
        params: list[Any] = []
        if agent_ids:
            clauses.append("list_contains(?::VARCHAR[], agent_id)")
            params.append(list(agent_ids))
        if statuses:
            clauses.append("list_contains(?::VARCHAR[], status)")
            params.append(list(statuses))
        if background is not None:
            clauses.append("coalesce(TRY_CAST(doc->>'background' AS BOOLEAN), false) = ?")
            params.append(background)
        if stop_reason is not None:
            clauses.append("(doc->>'stop_reason') = ?")
            params.append(stop_reason)
        if conversation_id is not None:
            clauses.append("(doc->>'conversation_id') = ?")
            params.append(conversation_id)
        docs = self._db.page_docs("runs", "run", clauses, params, after=after, before=before, limit=limit,
                                  order=order)
        return [json.loads(doc) for doc in docs]

    def delete_run(self, run_id: str) -> None:
        """Delete a run and its steps (its messages stay in the agent's history)."""
        with self._db.tx() as conn:
            self._db.require(conn, "runs", "run", run_id)
            conn.execute("DELETE FROM steps WHERE run_id = ?", [run_id])
            conn.execute("DELETE FROM runs WHERE id = ?", [run_id])

    def delete_agent_runs(self, agent_id: str) -> None:
        with self._db.tx() as conn:
            conn.execute("DELETE FROM steps WHERE agent_id = ?", [agent_id])
            conn.execute("DELETE FROM runs WHERE agent_id = ?", [agent_id])

    # ------------------------------------------------------------------ steps

    def get_step(self, step_id: str) -> StepRecord:
        return self._db.get_doc(StepRecord, "steps", "step", "id", step_id)

    def list_steps(
        self,
        *,
        agent_id: str | None = None,
        run_id: str | None = None,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        feedback: str | None = None,
        has_feedback: bool | None = None,
        tags: Sequence[str] | None = None,
        after: Cursor | None = None,
        before: Cursor | None = None,
        limit: int | None = 50,
        order: Order = "desc",
    ) -> list[StepRecord]:
        """Steps by start time (``order``), after the step ``after`` and before the step
        ``before`` (ids; in time, whatever the order); ``tags``: steps of agents with every
        one of these tags."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("agent_id", agent_id), ("run_id", run_id), ("model", model),
                              ("feedback", feedback)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        _date_clauses(clauses, params, start, end)
        if has_feedback is not None:
            clauses.append("feedback IS NOT NULL" if has_feedback else "feedback IS NULL")
        if tags:
            clauses.append("list_has_all(json_extract_string(doc, '$.tags[*]'), ?::VARCHAR[])")
            params.append(list(tags))
        docs = self._db.page_docs("steps", "step", clauses, params, after=after, before=before, limit=limit,
                                  order=order, column="step_start_ns")
        return [StepRecord.model_validate_json(doc) for doc in docs]

    def set_step_feedback(self, step_id: str, feedback: str | None, tags: Sequence[str] | None = None) -> StepRecord:
        """Record a user's verdict on a step ("positive" or "negative"), with optional tags."""
        if feedback not in (None, "positive", "negative"):
            raise InvalidInputError(f"feedback must be 'positive' or 'negative', got {feedback!r}")
        with self._db.tx() as conn:
            row = conn.execute("SELECT doc FROM steps WHERE id = ?", [step_id]).fetchone()
            if row is None:
                raise NotFoundError("step", step_id)
            step = StepRecord.model_validate_json(row[0])
            step = step.model_copy(update={"feedback": feedback, **({"tags": list(tags)} if tags is not None else {})})
            conn.execute(_STEPS.update_sql(), _STEPS.update_params(_STEPS.row(step)))
        return step
