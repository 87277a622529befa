"""Store actors: the one process that owns each store, batching writes.

DuckDB lets one process open a file read-write and no other process open it at all,
so ``MetadataStoreActor`` owns ``meta.duckdb`` and every reader and writer goes
through it. Writes arriving within a few milliseconds of each other commit in one
transaction (group commit); each caller is answered only after that commit, so an
acknowledged write is durable. ``ArchiveActor`` does the same for LanceDB appends and
optimises the table now and then; ``EmbedderActor`` loads the embedding model once and
batches concurrent requests.

Each is a plain class, unit-tested directly; ``ray.remote`` wraps it where it is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from letta_ray.deps import Embedder, TagMatchMode
from letta_ray.messages import Message, Role
from letta_ray.schemas import AgentState, Block, EmbeddingConfig, Passage

from ._journal import GroupCommit, Journal, TurnRecord, read_complete

if TYPE_CHECKING:
    from letta_ray.storage.archive import ArchivalStore
    from letta_ray.storage.metadata import MetadataStore

# The storage engines are imported inside the actors, not here: a driver that imports
# this module to create the actors must not load lancedb before Ray forks its processes.

log = logging.getLogger(__name__)
T = TypeVar("T")
_JOURNAL_MARK = "journal_applied_seq"


class _GroupCommitter:
    """Runs write callables in batches on one thread, one transaction per batch."""

    def __init__(self, run_batch: Callable[[list[Callable[[], Any]]], list[tuple[bool, Any]]],
                 window_s: float, max_batch: int = 512) -> None:
        self._run_batch = run_batch
        self._window_s = window_s
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.writes = 0

    async def submit(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # No fixed wait by default: writes that arrive while a batch is committing
            # form the next batch, so batching grows with load and adds no latency idle.
            if len(self._pending) < self._max_batch:
                await asyncio.sleep(self._window_s)
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [fn for fn, _ in batch])
            except BaseException as exc:  # the batch runner itself failed: fail everyone in it
                results = [(False, exc)] * len(batch)
            self.batches += 1
            self.writes += len(batch)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class MetadataStoreActor:
    """Owner of ``meta.duckdb``: reads in threads, writes group-committed.

    Agent turns (``commit_step``, the hot path) are acknowledged once journaled (see
    ``_journal``) and applied to DuckDB right behind; every other read and write first
    waits until all acknowledged turns are applied, so callers always read their writes.
    """

    def __init__(self, path: str | Path, batch_ms: float = 0.0, journal: bool = True,
                 host_journals: str | Path | None = None) -> None:
        """``host_journals`` is the folder where hosts journal their agents' turns themselves
        (see ``AgentHost``): the store tails those files and applies what they hold."""
        from letta_ray.storage.metadata import MetadataStore

        self.store: MetadataStore = MetadataStore(path)
        self._writes = _GroupCommitter(self._commit, batch_ms / 1000.0)
        self._journal: Journal | None = None
        self._seq = 0  # last turn record numbered
        self._journaled = 0  # last turn record acknowledged
        self._applied = 0  # last turn record applied to DuckDB
        self._to_apply: list[TurnRecord] = []
        self._apply_task: asyncio.Task[None] | None = None
        self._applied_changed = asyncio.Event()
        self._journal_broken = False
        self._writer = GroupCommit(self._current_journal, self._journaled_now)
        if journal and str(path) != ":memory:":
            self._journal = Journal(Path(path).with_suffix(".journal"))
            self._recover()
        self._host_journals = Path(host_journals) if host_journals is not None else None
        self._tail_offsets: dict[str, int] = {}  # may run ahead of DuckDB inside a transaction
        self._committed_offsets: dict[str, int] = {}  # what DuckDB holds for sure
        self._tailing: asyncio.Task[None] | None = None
        if self._host_journals is not None:
            self._host_journals.mkdir(parents=True, exist_ok=True)
            # what hosts acknowledged before a crash of this process
            self._committed(*self._apply_host_journals())
            self._drop_applied_journals()

    # ---------------------------------------------------------------- the turn journal

    def _recover(self) -> None:
        """Apply what the journal holds beyond DuckDB's mark (after a crash), then empty it."""
        assert self._journal is not None
        applied = int(self.store.get_meta(_JOURNAL_MARK) or 0)
        records = self._journal.read()
        pending = [r for r in records if r.seq > applied]
        if pending:
            log.warning("replaying %d journaled turns into %s", len(pending), self.store.path)
            self._apply(pending)
        last = max([applied, *(r.seq for r in records)])
        self._seq = self._journaled = self._applied = last
        self._journal.last_written = last
        self._journal.truncate_if_applied(last)

    def _apply(self, records: list[TurnRecord]) -> None:
        """Write journaled turns into DuckDB in one transaction, with the new mark."""
        with self.store.transaction():
            self._commit_turns(records)
            self.store.set_meta(_JOURNAL_MARK, str(records[-1].seq))

    def _commit_turns(self, records: list[TurnRecord]) -> None:
        """Apply journaled turns (inside the caller's transaction), one statement per table."""
        gone = self.store.commit_turns([(r.state, r.messages, r.edited_blocks) for r in records])
        for agent_id in gone:  # deleted after its turn was acknowledged
            log.info("dropping journaled turns of deleted agent %s", agent_id)

    def _current_journal(self) -> Journal:
        assert self._journal is not None
        return self._journal

    def _journaled_now(self, records: list[TurnRecord]) -> None:
        """Turns just made durable: acknowledged, and queued for DuckDB."""
        self._to_apply.extend(records)
        self._journaled = records[-1].seq
        if self._apply_task is None or self._apply_task.done():
            self._apply_task = asyncio.create_task(self._apply_loop())

    async def _apply_loop(self) -> None:
        while self._to_apply:
            batch, self._to_apply = self._to_apply[:500], self._to_apply[500:]
            try:
                await self._writes.submit(lambda batch=batch: self._apply(batch))
            except Exception:
                # The turns stay in the journal file and are replayed at the next start.
                log.exception("applying %d journaled turns failed", len(batch))
                self._journal_broken = True
            self._applied = batch[-1].seq
            self._applied_changed.set()
            self._applied_changed = asyncio.Event()
            if not self._to_apply and not self._writer.busy and not self._journal_broken:
                assert self._journal is not None
                await self._writer.run(self._journal.truncate_if_applied, self._applied)

    async def _barrier(self) -> None:
        """Wait until every acknowledged turn is in DuckDB."""
        target = self._journaled
        while self._applied < target:
            await self._applied_changed.wait()
        if self._host_journals is not None:
            await self.ingest_host_journals()

    # ---------------------------------------------------------------- hosts' own journals

    def _apply_host_journals(self) -> tuple[int, dict[str, int]]:
        """Apply what the hosts' journal files hold beyond what was applied (one transaction).

        The offset reached in each file is stored in the same transaction as the turns,
        so a turn is applied exactly once, whatever crashes when. Returns how many turns
        it applied and the offsets it reached, which hold once the transaction commits
        (``_committed``).
        """

        assert self._host_journals is not None
        pending: list[tuple[str, list[TurnRecord], int]] = []
        for path in sorted(self._host_journals.glob("*.log")):
            key = f"host_journal:{path.name}"
            offset = self._tail_offsets.get(key)
            if offset is None:  # first pass, or after a rollback: DuckDB's committed mark
                offset = int(self.store.get_meta(key) or 0)
                self._tail_offsets[key] = offset
                self._committed_offsets.setdefault(key, offset)
            if path.stat().st_size <= offset:
                continue
            records, new_offset = read_complete(path, offset)
            if new_offset > offset:
                pending.append((key, records, new_offset))
        if not pending:
            return 0, {}
        with self.store.transaction():  # every host's new turns in one statement per table
            self._commit_turns([record for _, records, _ in pending for record in records])
            for key, _, new_offset in pending:
                self.store.set_meta(key, str(new_offset))
        for key, _, new_offset in pending:
            self._tail_offsets[key] = new_offset
        return sum(len(r) for _, r, _ in pending), {key: new_offset for key, _, new_offset in pending}

    def _committed(self, applied: int, offsets: dict[str, int]) -> int:
        """The transaction of an ``_apply_host_journals`` committed: its offsets hold, and
        journal files applied in full may go."""
        for key, offset in offsets.items():
            self._committed_offsets[key] = max(offset, self._committed_offsets.get(key, 0))
        if offsets:
            self._drop_applied_journals()
        return applied

    def _drop_applied_journals(self) -> None:
        """Delete a host's journal files it has moved on from, once fully applied.

        By the offsets DuckDB holds for sure, never by ones a transaction still under
        way (or rolled back) reached: a rollback must find the turns again."""
        assert self._host_journals is not None
        parts: dict[str, list[Path]] = {}
        for path in self._host_journals.glob("*.log"):
            parts.setdefault(path.stem.rsplit("-", 1)[0], []).append(path)
        for files in parts.values():
            for path in sorted(files)[:-1]:  # never the newest: its host may still append
                key = f"host_journal:{path.name}"
                if self._committed_offsets.get(key, -1) >= path.stat().st_size:
                    path.unlink(missing_ok=True)

    async def ingest_host_journals(self) -> int:
        """Apply turns the hosts have journaled.

        Every read runs it first, so a caller reads every turn acknowledged to it; in
        between, ``_tail`` runs it on a timer, so DuckDB follows the journals closely
        without hosts paying for a Ray call per turn (~3 ms of their CPU each).
        """
        if self._host_journals is None:
            return 0
        self._start_tailing()
        return await self._apply_host_journals_committed()

    async def _apply_host_journals_committed(self) -> int:
        """``_apply_host_journals`` in a group-committed transaction, then ``_committed``."""
        applied, offsets = await self._writes.submit(self._apply_host_journals)
        return await asyncio.to_thread(self._committed, applied, offsets)

    TAIL_MIN_S = 1.0
    TAIL_MAX_S = 2.0

    def _start_tailing(self) -> None:
        if self._host_journals is not None and (self._tailing is None or self._tailing.done()):
            self._tailing = asyncio.ensure_future(self._tail())

    async def _tail(self) -> None:
        """Apply new journal records every second while turns arrive, backing off to 2 s when idle.

        Applying a batch costs the store ~20 ms whatever its size (on 2 cores), so turns
        are applied in large batches: at 0.2 s the store spent ~1.1 ms of CPU per turn at
        120 turns/s. A read applies what is pending first, so nobody sees the lag; the
        turns are durable in the hosts' journals either way."""
        interval = self.TAIL_MIN_S
        while True:
            await asyncio.sleep(interval)
            try:
                applied = await self._apply_host_journals_committed()
            except Exception:
                log.exception("applying the hosts' journals failed; retrying")
                applied = 0
            interval = self.TAIL_MIN_S if applied else min(self.TAIL_MAX_S, interval * 2)

    def _commit(self, fns: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        try:
            with self.store.transaction():
                return [(True, fn()) for fn in fns]
        except Exception as exc:
            self._rolled_back()
            if len(fns) == 1:
                return [(False, exc)]
            # Something in the batch failed and rolled the whole batch back: run each
            # write on its own so that one bad write fails alone.
        results: list[tuple[bool, Any]] = []
        for fn in fns:
            try:
                with self.store.transaction():
                    results.append((True, fn()))
            except Exception as exc:
                self._rolled_back()
                results.append((False, exc))
        return results

    def _rolled_back(self) -> None:
        """A transaction rolled back: forget how far the hosts' journals were applied.

        ``_apply_host_journals`` moves its offsets on inside the transaction (a second
        pass in the same batch must not apply the same turns again); after a rollback
        they are read again from DuckDB, where they were rolled back with the turns."""
        self._tail_offsets.clear()

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        await self._barrier()
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ---------------------------------------------------------------- writes

    async def commit_step(self, state: AgentState, messages: list[Message],
                          edited_blocks: list[Block] | None = None) -> None:
        """Persist one turn: the new messages, the agent state and the blocks it edited, together.

        Returns once the turn is durable (journaled); DuckDB has it before any later read.
        """
        if self._journal is None:
            await self._writes.submit(lambda: self.store.commit_turn(state, messages, edited_blocks or ()))
            return
        self._seq += 1
        await self._writer.write(TurnRecord(self._seq, state, messages, list(edited_blocks or [])))

    async def create_agents(self, states: list[AgentState],
                            initial_messages: list[list[Message]] | None = None) -> None:
        """Persist new agents and their first messages together, in bulk."""
        messages = [m for batch in initial_messages or () for m in batch]
        await self._barrier()

        def write() -> None:
            self.store.append_messages(messages)
            self.store.create_agents(states)
        await self._writes.submit(write)

    async def edit_block(self, block_id: str, op: str, args: dict[str, Any]) -> Block:
        """Apply an agent's memory edit to the stored block, atomically (shared blocks).

        Edits are applied one after another on the current value, so two agents editing
        one block at once both land. Mistakes come back as the model-worded ToolError.
        """
        from letta_ray.memory import apply_edit

        await self._barrier()

        def edit() -> Block:
            block = apply_edit(self.store.get_block(block_id), op, args)
            self.store.upsert_block(block)
            return block
        return await self._writes.submit(edit)

    async def get_blocks(self, block_ids: list[str]) -> list[Block]:
        return await self._read(lambda: [self.store.get_block(b) for b in block_ids])

    async def write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any MetadataStore write method, group-committed."""
        fn = getattr(self.store, method)
        await self._barrier()
        return await self._writes.submit(lambda: fn(*args, **kwargs))

    async def write_many(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Several writes committed together, answered once all are durable."""
        await self._barrier()

        def write() -> list[Any]:
            return [getattr(self.store, m)(*a, **k) for m, a, k in calls]
        return await self._writes.submit(write)

    # ---------------------------------------------------------------- reads

    async def read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any MetadataStore read method, run in a worker thread."""
        return await self._read(getattr(self.store, method), *args, **kwargs)

    async def get_agent(self, agent_id: str) -> AgentState:
        return await self._read(self.store.get_agent, agent_id)

    async def search_messages(self, agent_id: str, query: str | None, *, roles: list[Role] | None = None,
                              limit: int = 10, start: datetime | None = None,
                              end: datetime | None = None) -> list[Message]:
        return await self._read(self.store.search_messages, agent_id, query, roles=roles, limit=limit,
                                start=start, end=end)

    async def count_messages(self, agent_id: str) -> int:
        return await self._read(self.store.count_messages, agent_id)

    async def stats(self) -> dict[str, int]:
        return {"batches": self._writes.batches, "writes": self._writes.writes}

    async def ping(self) -> str:
        self._start_tailing()
        return "ok"

    async def close(self) -> None:
        await self._barrier()
        if self._tailing is not None:
            self._tailing.cancel()
        await self._writer.close()
        if self._apply_task is not None:
            await self._apply_task
        await asyncio.to_thread(self._writes.close)
        if self._journal is not None:
            self._journal.close()
        self.store.close()


class EmbedderActor:
    """Loads an embedding model once; concurrent requests are encoded in one batch."""

    def __init__(self, config: EmbeddingConfig, batch_ms: float = 2.0, max_batch: int = 256) -> None:
        from letta_ray.embeddings import make_embedder

        self.embedder: Embedder = make_embedder(config)
        self._window_s = batch_ms / 1000.0
        self._max_batch = max_batch
        self._pending: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, texts: list[str]) -> list[list[float]]:
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            if self._window_s > 0:
                await asyncio.sleep(self._window_s)
            batch: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max_batch):
                item = self._pending.pop(0)
                batch.append(item)
                size += len(item[0])
            texts = [t for chunk, _ in batch for t in chunk]
            try:
                vectors = await self.embedder.embed(texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for chunk, future in batch:
                if not future.done():
                    future.set_result(vectors[offset: offset + len(chunk)])
                offset += len(chunk)


class ArchiveActor:
    """Owner of the LanceDB archive: batched appends, searches, periodic optimize()."""

    def __init__(self, path: str | Path, embedder: Any, dim: int, batch_ms: float = 5.0,
                 optimize_every: int = 2_000) -> None:
        """``embedder`` is anything with ``await embedder.embed(texts)`` (a proxy to EmbedderActor)."""
        from letta_ray.storage.archive import ArchivalStore

        self.store: ArchivalStore = ArchivalStore(path, dim)
        self.embedder = embedder
        self._optimize_every = optimize_every
        self._since_optimize = 0
        self._optimizing: asyncio.Task[None] | None = None
        self._writes = _GroupCommitter(self._append, batch_ms / 1000.0)

    def _append(self, fns: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        passages: list[Passage] = []
        for fn in fns:
            passages.extend(fn())
        self.store.insert(passages)  # one LanceDB version for the whole batch
        return [(True, None)] * len(fns)

    async def insert(self, agent_id: str, text: str, tags: list[str] | None = None) -> Passage:
        [passage] = await self.insert_many(agent_id, [text], tags)
        return passage

    async def insert_many(self, agent_id: str, texts: list[str], tags: list[str] | None = None) -> list[Passage]:
        vectors = await self.embedder.embed(texts)
        passages = [Passage(agent_id=agent_id, text=t, tags=list(tags or []), embedding=v)
                    for t, v in zip(texts, vectors, strict=True)]
        await self._writes.submit(lambda: passages)
        self._since_optimize += len(passages)
        if self._since_optimize >= self._optimize_every and (self._optimizing is None or self._optimizing.done()):
            self._since_optimize = 0
            self._optimizing = asyncio.create_task(self._optimize())
        return [p.model_copy(update={"embedding": None}) for p in passages]

    async def _optimize(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.optimize)
        except Exception:  # optimisation is housekeeping; a failure must not fail writes
            log.exception("archive optimize failed")
        else:
            log.info("archive optimized in %.2fs", time.perf_counter() - started)

    async def optimize(self) -> None:
        await self._optimize()

    async def search(self, agent_id: str, query: str | None, *, tags: list[str] | None = None,
                     tag_match_mode: TagMatchMode = "any", top_k: int = 5, start: datetime | None = None,
                     end: datetime | None = None) -> list[Passage]:
        vector = None
        if query is not None and query.strip():
            [vector] = await self.embedder.embed([query])
        else:
            query = None
        return await asyncio.to_thread(self.store.search, agent_id, query_text=query, query_vector=vector,
                                       tags=tags, tag_match_mode=tag_match_mode, top_k=top_k, start=start, end=end)

    async def count(self, agent_id: str) -> int:
        return await asyncio.to_thread(self.store.count, agent_id)

    async def list(self, agent_id: str, *, limit: int = 100, after: str | None = None,
                   ascending: bool = True) -> list[Passage]:
        return await asyncio.to_thread(self.store.list, agent_id, limit=limit, after=after, ascending=ascending)

    async def get(self, passage_id: str, agent_id: str | None = None) -> Passage:
        return await asyncio.to_thread(self.store.get, passage_id, agent_id=agent_id)

    async def delete(self, passage_id: str, agent_id: str | None = None) -> None:
        await asyncio.to_thread(self.store.delete, passage_id, agent_id=agent_id)

    async def delete_agent(self, agent_id: str) -> int:
        return await asyncio.to_thread(self.store.delete_agent, agent_id)

    async def ping(self) -> str:
        return "ok"
