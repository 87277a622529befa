"""The metadata store actor: the one process that owns ``meta.duckdb``, and its handle.

DuckDB lets one process open a file read-write and no other process open it at all,
so ``MetadataStoreActor`` owns ``meta.duckdb`` and every reader and writer goes
through it (``MetadataStoreHandle``). Writes arriving within a few milliseconds of each
other commit in one transaction (group commit); each caller is answered only after that
commit, so an acknowledged write is durable. Agent turns take a faster path: journaled
(by the store, or by the hosts themselves), acknowledged, then applied to DuckDB behind.

A plain class, unit-tested directly; ``ray.remote`` wraps it where it is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from letta_ray import _collector
from letta_ray.errors import NotFoundError, StorageError
from letta_ray.mcp import MCPServer
from letta_ray.messages import Message, Role, StepRecord
from letta_ray.schemas import (
    AgentState,
    Archive,
    Block,
    Conversation,
    Cursor,
    FileMetadata,
    Folder,
    Identity,
    Order,
    Tool,
)

from ._facade import ActorFacade, remote_method
from ._group_commit import GroupCommitter
from ._journal import Journal, JournalWriter, TurnRecord, read_complete
from .metrics import store_gauges

if TYPE_CHECKING:
    from letta_ray.storage.metadata import MetadataStore
    from letta_ray.storage.object_store import StorageLocation

# The storage engine is imported inside the actor, not here: every process that holds a
# handle imports this module, and only the store's own process needs DuckDB.

log = logging.getLogger(__name__)
T = TypeVar("T")
_JOURNAL_MARK = "journal_applied_seq"


class MetadataStoreActor:
    """Owner of ``meta.duckdb``: reads in threads, writes group-committed.

    Agent turns (``commit_step``, the hot path) are acknowledged once journaled (see
    ``_journal``) and applied to DuckDB right behind; every other read and write first
    waits until all acknowledged turns are applied, so callers always read their writes.
    """

    def __init__(self, path: str | Path, batch_ms: float = 0.0, journal: bool = True,
                 host_journals: str | Path | None = None, snapshots: StorageLocation | None = None,
                 snapshot_interval_s: float = 0.0) -> None:
        """``host_journals`` is the folder where hosts journal their agents' turns themselves
        (see ``AgentHost``): the store tails those files and applies what they hold.

        With ``snapshots`` (an object store), the tables are snapshotted there as Parquet every
        ``snapshot_interval_s``, and a store whose file does not exist yet (a new head node)
        starts from the latest snapshot."""
        from letta_ray.storage.metadata import MetadataStore
        from letta_ray.storage.snapshots import Snapshots, restore_latest

        _collector.tune()
        self._snapshots = Snapshots(snapshots) if snapshots is not None else None
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshotting: asyncio.Task[None] | None = None
        self.snapshot_status: dict[str, Any] = {}
        if self._snapshots is not None and str(path) != ":memory:" and not Path(path).exists():
            restored = restore_latest(Path(path), self._snapshots)
            self.snapshot_status["restored_from"] = restored
        self.store: MetadataStore = MetadataStore(path)
        self._writes = GroupCommitter(self._commit, batch_ms / 1000.0)
        self._journal: Journal | None = None
        self._seq = 0  # last turn record numbered
        self._journaled = 0  # last turn record acknowledged
        self._applied = 0  # last turn record applied to DuckDB
        self._to_apply: list[TurnRecord] = []
        self._apply_task: asyncio.Task[None] | None = None
        self._applied_changed = asyncio.Event()
        self._journal_broken = False
        self._writer = JournalWriter(self._current_journal, self._journaled_now)
        if journal and str(path) != ":memory:":
            self._journal = Journal(Path(path).with_suffix(".journal"))
            self._recover()
        self._host_journals = Path(host_journals) if host_journals is not None else None
        self._tail_offsets: dict[str, int] = {}  # may run ahead of DuckDB inside a transaction
        self._committed_offsets: dict[str, int] = {}  # what DuckDB holds for sure
        self._tailing: asyncio.Task[None] | None = None
        self.turns_applied = 0  # from the hosts' journals, since this store started
        self.last_applied_at: float | None = None
        self._gauges = store_gauges(self._apply_lag)
        self._applied_through = time.time()  # DuckDB holds every turn journaled before this
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

    def _commit_turns(self, records: list[TurnRecord]) -> list[str]:
        """Apply journaled turns (inside the caller's transaction), one statement per table;
        returns the ids of agents that are no longer stored (their turns are dropped).

        Journaled creations go first: an agent's turns are journaled after its creation, by
        the same host, and may be in the same batch."""
        created = [r for r in records if r.created]
        if created:
            self.store.create_journaled_agents([(r.state, r.messages) for r in created])
            records = [r for r in records if not r.created]
        if not records:
            return []
        gone = self.store.commit_turns([(r.state, r.messages, r.edited_blocks) for r in records],
                                       runs=[r.run for r in records if r.run is not None],
                                       steps=[s for r in records for s in r.steps],
                                       conversations=[r.conversation for r in records if r.conversation is not None])
        for agent_id in gone:  # deleted after its turn was acknowledged
            log.info("dropping journaled turns of deleted agent %s", agent_id)
        return gone

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
        if applied:
            self.turns_applied += applied
            self.last_applied_at = time.time()
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
        scanned = time.time()  # the scan starts after: it reads every turn journaled before
        applied, offsets = await self._writes.submit(self._apply_host_journals)
        applied = await asyncio.to_thread(self._committed, applied, offsets)
        self._applied_through = max(self._applied_through, scanned)
        return applied

    TAIL_MIN_S = 1.0
    TAIL_MAX_S = 2.0

    def _start_tailing(self) -> None:
        self._gauges.start()
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

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        await self._barrier()
        return await self._writes.submit(lambda: fn(*args, **kwargs))

    # ---------------------------------------------------------------- writes

    async def commit_step(self, state: AgentState, messages: list[Message],
                          edited_blocks: list[Block] | None = None, steps: list[StepRecord] | None = None,
                          run: dict[str, Any] | None = None, conversation: Conversation | None = None) -> None:
        """Persist one turn: the new messages, the agent state, the blocks it edited, its steps
        and its run, together.

        Returns once the turn is durable (journaled); DuckDB has it before any later read.
        """
        self._seq += 1
        record = TurnRecord(self._seq, state, messages, list(edited_blocks or []), list(steps or []), run,
                            conversation)
        if self._journal is None:
            if await self._writes.submit(lambda: self._commit_turns([record])):
                raise NotFoundError("agent", state.id)
            return
        await self._writer.write(record)

    async def create_agents(self, states: list[AgentState],
                            initial_messages: list[list[Message]] | None = None) -> None:
        """Persist new agents and their first messages together, in bulk."""
        messages = [m for batch in initial_messages or () for m in batch]
        await self._barrier()

        def write() -> None:
            self.store.messages.append_messages(messages)
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

    # ---------------------------------------------------------------- reads
    # Each runs MetadataStore's (or its MessageStore's) method of the same name in a
    # worker thread, once every acknowledged turn is applied.

    async def get_agent(self, agent_id: str) -> AgentState:
        return await self._read(self.store.get_agent, agent_id)

    async def get_agent_by_name(self, name: str) -> AgentState:
        return await self._read(self.store.get_agent_by_name, name)

    async def existing_agents(self, agent_ids: list[str]) -> list[str]:
        return await self._read(self.store.existing_agents, agent_ids)

    async def list_agents(self, *, name: str | None = None, tags: list[str] | None = None,
                          match_all_tags: bool = False, limit: int | None = 50, after: Cursor | None = None,
                          before: Cursor | None = None, order: Order = "asc") -> list[AgentState]:
        return await self._read(self.store.list_agents, name=name, tags=tags, match_all_tags=match_all_tags,
                                limit=limit, after=after, before=before, order=order)

    async def list_tags(self, **filters: Any) -> list[str]:
        """See ``MetadataStore.list_tags``."""
        return await self._read(self.store.list_tags, **filters)

    async def count_agents(self) -> int:
        return await self._read(self.store.count_agents)

    async def agent_rows(self, *, query: str | None = None, limit: int = 50, offset: int = 0
                         ) -> tuple[int, list[dict[str, Any]]]:
        """See ``MetadataStore.agent_rows``."""
        return await self._read(self.store.agent_rows, query=query, limit=limit, offset=offset)

    async def get_block(self, block_id: str) -> Block:
        return await self._read(self.store.get_block, block_id)

    async def get_blocks(self, block_ids: list[str], missing_ok: bool = False) -> list[Block]:
        """The blocks, in the order of ``block_ids`` (with ``missing_ok``: those stored here)."""
        def read() -> list[Block]:
            if not missing_ok:
                return [self.store.get_block(b) for b in block_ids]
            held = self.store.attachment_counts(block_ids)
            return [self.store.get_block(b) for b in block_ids if b in held]
        return await self._read(read)

    async def list_blocks(self, *, label: str | None = None, limit: int | None = 50,
                          after: str | None = None) -> list[Block]:
        return await self._read(self.store.list_blocks, label=label, limit=limit, after=after)

    async def agents_of_block(self, block_id: str) -> list[str]:
        return await self._read(self.store.agents_of_block, block_id)

    async def shared_blocks(self, block_ids: list[str]) -> list[str]:
        return await self._read(self.store.shared_blocks, block_ids)

    async def attachment_counts(self, block_ids: list[str]) -> dict[str, int]:
        return await self._read(self.store.attachment_counts, block_ids)

    async def cursor_key(self, kind: str, key: str) -> tuple[Any, Any] | None:
        return await self._read(self.store.cursor_key, kind, key)

    async def get_tool(self, tool_id: str) -> Tool:
        return await self._read(self.store.get_tool, tool_id)

    async def get_tool_by_name(self, name: str) -> Tool:
        return await self._read(self.store.get_tool_by_name, name)

    async def list_tools(self, *, limit: int | None = 50, after: str | None = None) -> list[Tool]:
        return await self._read(self.store.list_tools, limit=limit, after=after)

    async def get_group(self, group_id: str) -> dict[str, Any]:
        return await self._read(self.store.get_group, group_id)

    async def list_groups(self, *, limit: int | None = 50, after: str | None = None) -> list[dict[str, Any]]:
        return await self._read(self.store.list_groups, limit=limit, after=after)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self._read(self.store.runs.get_run, run_id)

    async def list_runs(self, agent_ids: list[str] | None = None, **filters: Any) -> list[dict[str, Any]]:
        """See ``RunStore.list_runs``."""
        return await self._read(self.store.runs.list_runs, agent_ids, **filters)

    async def get_step(self, step_id: str) -> StepRecord:
        return await self._read(self.store.runs.get_step, step_id)

    async def list_steps(self, **filters: Any) -> list[StepRecord]:
        """See ``RunStore.list_steps``."""
        return await self._read(self.store.runs.list_steps, **filters)

    async def get_meta(self, key: str) -> str | None:
        return await self._read(self.store.get_meta, key)

    async def export_parquet(self, out_dir: str) -> dict[str, Path]:
        return await self._read(self.store.export_parquet, out_dir)

    # ---------------------------------------------------------------- the message history

    async def get_messages(self, ids: list[str], missing_ok: bool = False) -> list[Message]:
        return await self._read(self.store.messages.get_messages, ids, missing_ok=missing_ok)

    async def list_messages(self, agent_id: str | None, *, limit: int | None = 50, before: Cursor | None = None,
                            after: Cursor | None = None, order: Order = "asc", roles: list[Role] | None = None,
                            start: datetime | None = None, end: datetime | None = None,
                            run_id: str | None = None, step_id: str | None = None,
                            conversation_id: str | None = None) -> list[Message]:
        return await self._read(self.store.messages.list_messages, agent_id, limit=limit, before=before,
                                after=after, order=order, roles=roles, start=start, end=end, run_id=run_id,
                                step_id=step_id, conversation_id=conversation_id)

    async def count_messages(self, agent_id: str) -> int:
        return await self._read(self.store.messages.count_messages, agent_id)

    async def search_messages(self, agent_id: str | None, query: str | None, *, roles: list[Role] | None = None,
                              limit: int = 10, start: datetime | None = None,
                              end: datetime | None = None) -> list[Message]:
        return await self._read(self.store.messages.search_messages, agent_id, query, roles=roles, limit=limit,
                                start=start, end=end)

    async def messages_of_runs(self, run_id_prefix: str) -> dict[str, list[Message]]:
        return await self._read(self.store.messages.messages_of_runs, run_id_prefix)

    # ---------------------------------------------------------------- writes, group-committed

    async def upsert_agent(self, state: AgentState) -> None:
        await self._write(self.store.upsert_agent, state)

    async def delete_agent(self, agent_id: str) -> None:
        await self._write(self.store.delete_agent, agent_id)

    async def sync_blocks(self, blocks: list[Block]) -> None:
        await self._write(self.store.sync_blocks, blocks)

    async def upsert_block(self, block: Block) -> None:
        await self._write(self.store.upsert_block, block)

    async def delete_block(self, block_id: str) -> None:
        await self._write(self.store.delete_block, block_id)

    async def attach_block(self, agent_id: str, block_id: str) -> None:
        await self._write(self.store.attach_block, agent_id, block_id)

    async def detach_block(self, agent_id: str, block_id: str) -> None:
        await self._write(self.store.detach_block, agent_id, block_id)

    async def upsert_tool(self, tool: Tool) -> Tool:
        return await self._write(self.store.upsert_tool, tool)

    async def delete_tool(self, tool_id: str) -> None:
        await self._write(self.store.delete_tool, tool_id)

    async def get_mcp_server(self, server_id: str) -> MCPServer:
        return await self._read(self.store.get_mcp_server, server_id)

    async def list_mcp_servers(self) -> list[MCPServer]:
        return await self._read(self.store.list_mcp_servers)

    async def mcp_server_tools(self, server_id: str) -> list[Tool]:
        return await self._read(self.store.mcp_server_tools, server_id)

    async def upsert_mcp_server(self, server: MCPServer) -> MCPServer:
        return await self._write(self.store.upsert_mcp_server, server)

    async def sync_mcp_tools(self, server_id: str, tools: list[Tool]) -> dict[str, list[str]]:
        return await self._write(self.store.sync_mcp_tools, server_id, tools)

    async def delete_mcp_server(self, server_id: str) -> list[str]:
        return await self._write(self.store.delete_mcp_server, server_id)

    async def upsert_archive(self, archive: Archive) -> Archive:
        return await self._write(self.store.upsert_archive, archive)

    async def get_archive(self, archive_id: str) -> Archive:
        return await self._read(self.store.get_archive, archive_id)

    async def list_archives(self, **filters: Any) -> list[Archive]:
        """See ``MetadataStore.list_archives``."""
        return await self._read(self.store.list_archives, **filters)

    async def agents_with_archive(self, archive_id: str) -> list[str]:
        return await self._read(self.store.agents_with_archive, archive_id)

    async def delete_archive(self, archive_id: str) -> None:
        await self._write(self.store.delete_archive, archive_id)

    async def upsert_folder(self, folder: Folder) -> Folder:
        return await self._write(self.store.upsert_folder, folder)

    async def get_folder(self, folder_id: str) -> Folder:
        return await self._read(self.store.get_folder, folder_id)

    async def agents_with_folder(self, folder_id: str) -> list[str]:
        return await self._read(self.store.agents_with_folder, folder_id)

    async def delete_folder(self, folder_id: str) -> None:
        return await self._write(self.store.delete_folder, folder_id)

    async def upsert_file(self, file: FileMetadata) -> FileMetadata:
        return await self._write(self.store.upsert_file, file)

    async def set_file_content(self, file_id: str, text: str) -> None:
        return await self._write(self.store.set_file_content, file_id, text)

    async def get_file(self, file_id: str) -> FileMetadata:
        return await self._read(self.store.get_file, file_id)

    async def get_file_content(self, file_id: str) -> str:
        return await self._read(self.store.get_file_content, file_id)

    async def delete_file(self, file_id: str) -> None:
        return await self._write(self.store.delete_file, file_id)

    async def list_folders(self, **filters: Any) -> list[Folder]:
        """See ``MetadataStore.list_folders``."""
        return await self._read(self.store.list_folders, **filters)

    async def list_files(self, folder_id: str, **filters: Any) -> list[FileMetadata]:
        """See ``MetadataStore.list_files``."""
        return await self._read(self.store.list_files, folder_id, **filters)

    async def upsert_identity(self, identity: Identity) -> Identity:
        return await self._write(self.store.upsert_identity, identity)

    async def get_identity(self, identity_id: str) -> Identity:
        return await self._read(self.store.get_identity, identity_id)

    async def agents_with_identity(self, identity_id: str) -> list[str]:
        return await self._read(self.store.agents_with_identity, identity_id)

    async def delete_identity(self, identity_id: str) -> None:
        return await self._write(self.store.delete_identity, identity_id)

    async def list_identities(self, **filters: Any) -> list[Identity]:
        """See ``MetadataStore.list_identities``."""
        return await self._read(self.store.list_identities, **filters)

    async def upsert_conversation(self, conversation: Conversation) -> Conversation:
        return await self._write(self.store.upsert_conversation, conversation)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        return await self._read(self.store.get_conversation, conversation_id)

    async def delete_conversation(self, conversation_id: str) -> None:
        return await self._write(self.store.delete_conversation, conversation_id)

    async def list_conversations(self, **filters: Any) -> list[Conversation]:
        """See ``MetadataStore.list_conversations``."""
        return await self._read(self.store.list_conversations, **filters)

    async def upsert_group(self, group_id: str, doc: dict[str, Any]) -> None:
        await self._write(self.store.upsert_group, group_id, doc)

    async def delete_group(self, group_id: str) -> None:
        await self._write(self.store.delete_group, group_id)

    async def upsert_run(self, run_id: str, doc: dict[str, Any]) -> None:
        await self._write(self.store.runs.upsert_run, run_id, doc)

    async def delete_run(self, run_id: str) -> None:
        await self._write(self.store.runs.delete_run, run_id)

    async def set_step_feedback(self, step_id: str, feedback: str | None, tags: list[str] | None = None) -> StepRecord:
        return await self._write(self.store.runs.set_step_feedback, step_id, feedback, tags)

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(self.store.set_meta, key, value)

    # ---------------------------------------------------------------- upkeep

    async def stats(self) -> dict[str, int]:
        return {"batches": self._writes.batches, "writes": self._writes.writes}

    async def ping(self) -> str:
        self._start_tailing()
        if self._snapshots is not None and self._snapshot_interval_s > 0 and (
                self._snapshotting is None or self._snapshotting.done()):
            self._snapshotting = asyncio.ensure_future(self._snapshot_loop())
        return "ok"

    # ---------------------------------------------------------------- snapshots

    async def snapshot(self) -> dict[str, Any]:
        """Snapshot every table to the object store now (what every acknowledged write holds);
        returns the snapshot's name, seconds and bytes. A StorageError if it cannot be written."""
        from letta_ray.storage.snapshots import take_snapshot

        if self._snapshots is None:
            raise StorageError("no object store is configured (LETTA_RAY_STORAGE): nothing to snapshot to")
        await self._barrier()
        scratch = Path(self.store.path).parent / "snapshots"
        try:
            name, seconds, size = await asyncio.to_thread(take_snapshot, self.store, self._snapshots, scratch)
        except Exception as exc:
            self.snapshot_status.update(last_error=str(exc), last_error_at=time.time())
            raise
        self.snapshot_status.update(name=name, seconds=round(seconds, 3), bytes=size, at=time.time(),
                                    last_error=None)
        return {"name": name, "seconds": seconds, "bytes": size}

    def _journal_backlog(self) -> tuple[int, int]:
        """(journal files, their bytes not yet applied to DuckDB)."""
        backlog, files = 0, 0
        if self._host_journals is not None:
            for path in self._host_journals.glob("*.log"):
                files += 1
                backlog += max(0, path.stat().st_size - self._committed_offsets.get(f"host_journal:{path.name}", 0))
        return files, backlog

    def _apply_lag(self) -> tuple[float, int]:
        """The apply lag for the metrics: (seconds: DuckDB holds every turn journaled longer
        ago, 0 when none waits; bytes of the hosts' journals not yet applied)."""
        _, backlog = self._journal_backlog()
        if not backlog and not self._to_apply:
            return 0.0, 0
        return max(0.0, time.time() - self._applied_through), backlog

    async def status(self) -> dict[str, Any]:
        """How far DuckDB is behind the journals (the apply lag: journaled bytes not yet
        applied, the seconds of ``_apply_lag``, and when turns were last applied), and the
        snapshots' state."""
        files, backlog = self._journal_backlog()
        lag_s, _ = self._apply_lag()
        return {"journal_files": files, "journal_backlog_bytes": backlog, "apply_lag_s": lag_s,
                "turns_applied": self.turns_applied,
                "last_applied_at": self.last_applied_at, "snapshots": dict(self.snapshot_status),
                "snapshots_to": self._snapshots.location.uri if self._snapshots is not None else None}

    async def _snapshot_loop(self) -> None:
        """Every interval, a snapshot; a failure (the object store down) is logged and the next
        interval tries again: acknowledged turns never wait for the object store."""
        while True:
            await asyncio.sleep(self._snapshot_interval_s)
            try:
                await self.snapshot()
            except Exception:
                log.warning("snapshot of the metadata to the object store failed; retrying in %.0fs",
                            self._snapshot_interval_s, exc_info=True)

    async def node_id(self) -> str | None:
        """The Ray node this store runs on (hosts elsewhere ship their journals here)."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

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


class MetadataStoreHandle(ActorFacade):
    """The metadata store actor's methods, awaited (see ``MetadataStoreActor``)."""

    commit_step = remote_method(MetadataStoreActor.commit_step)
    create_agents = remote_method(MetadataStoreActor.create_agents)
    edit_block = remote_method(MetadataStoreActor.edit_block)
    get_blocks = remote_method(MetadataStoreActor.get_blocks)
    attachment_counts = remote_method(MetadataStoreActor.attachment_counts)
    cursor_key = remote_method(MetadataStoreActor.cursor_key)
    sync_blocks = remote_method(MetadataStoreActor.sync_blocks)

    get_agent = remote_method(MetadataStoreActor.get_agent)
    get_agent_by_name = remote_method(MetadataStoreActor.get_agent_by_name)
    existing_agents = remote_method(MetadataStoreActor.existing_agents)
    list_agents = remote_method(MetadataStoreActor.list_agents)
    count_agents = remote_method(MetadataStoreActor.count_agents)
    agent_rows = remote_method(MetadataStoreActor.agent_rows)
    list_tags = remote_method(MetadataStoreActor.list_tags)
    get_block = remote_method(MetadataStoreActor.get_block)
    list_blocks = remote_method(MetadataStoreActor.list_blocks)
    agents_of_block = remote_method(MetadataStoreActor.agents_of_block)
    shared_blocks = remote_method(MetadataStoreActor.shared_blocks)
    get_tool = remote_method(MetadataStoreActor.get_tool)
    get_tool_by_name = remote_method(MetadataStoreActor.get_tool_by_name)
    list_tools = remote_method(MetadataStoreActor.list_tools)
    get_group = remote_method(MetadataStoreActor.get_group)
    list_groups = remote_method(MetadataStoreActor.list_groups)
    get_run = remote_method(MetadataStoreActor.get_run)
    list_runs = remote_method(MetadataStoreActor.list_runs)
    get_step = remote_method(MetadataStoreActor.get_step)
    list_steps = remote_method(MetadataStoreActor.list_steps)
    get_meta = remote_method(MetadataStoreActor.get_meta)
    export_parquet = remote_method(MetadataStoreActor.export_parquet)

    get_messages = remote_method(MetadataStoreActor.get_messages)
    list_messages = remote_method(MetadataStoreActor.list_messages)
    count_messages = remote_method(MetadataStoreActor.count_messages)
    search_messages = remote_method(MetadataStoreActor.search_messages)
    messages_of_runs = remote_method(MetadataStoreActor.messages_of_runs)

    upsert_agent = remote_method(MetadataStoreActor.upsert_agent)
    delete_agent = remote_method(MetadataStoreActor.delete_agent)
    upsert_block = remote_method(MetadataStoreActor.upsert_block)
    delete_block = remote_method(MetadataStoreActor.delete_block)
    attach_block = remote_method(MetadataStoreActor.attach_block)
    detach_block = remote_method(MetadataStoreActor.detach_block)
    upsert_tool = remote_method(MetadataStoreActor.upsert_tool)
    delete_tool = remote_method(MetadataStoreActor.delete_tool)
    get_mcp_server = remote_method(MetadataStoreActor.get_mcp_server)
    list_mcp_servers = remote_method(MetadataStoreActor.list_mcp_servers)
    mcp_server_tools = remote_method(MetadataStoreActor.mcp_server_tools)
    upsert_mcp_server = remote_method(MetadataStoreActor.upsert_mcp_server)
    sync_mcp_tools = remote_method(MetadataStoreActor.sync_mcp_tools)
    delete_mcp_server = remote_method(MetadataStoreActor.delete_mcp_server)
    upsert_archive = remote_method(MetadataStoreActor.upsert_archive)
    get_archive = remote_method(MetadataStoreActor.get_archive)
    list_archives = remote_method(MetadataStoreActor.list_archives)
    agents_with_archive = remote_method(MetadataStoreActor.agents_with_archive)
    delete_archive = remote_method(MetadataStoreActor.delete_archive)
    upsert_folder = remote_method(MetadataStoreActor.upsert_folder)
    get_folder = remote_method(MetadataStoreActor.get_folder)
    agents_with_folder = remote_method(MetadataStoreActor.agents_with_folder)
    delete_folder = remote_method(MetadataStoreActor.delete_folder)
    upsert_file = remote_method(MetadataStoreActor.upsert_file)
    set_file_content = remote_method(MetadataStoreActor.set_file_content)
    get_file = remote_method(MetadataStoreActor.get_file)
    get_file_content = remote_method(MetadataStoreActor.get_file_content)
    delete_file = remote_method(MetadataStoreActor.delete_file)
    list_folders = remote_method(MetadataStoreActor.list_folders)
    list_files = remote_method(MetadataStoreActor.list_files)
    upsert_identity = remote_method(MetadataStoreActor.upsert_identity)
    get_identity = remote_method(MetadataStoreActor.get_identity)
    agents_with_identity = remote_method(MetadataStoreActor.agents_with_identity)
    delete_identity = remote_method(MetadataStoreActor.delete_identity)
    list_identities = remote_method(MetadataStoreActor.list_identities)
    upsert_conversation = remote_method(MetadataStoreActor.upsert_conversation)
    get_conversation = remote_method(MetadataStoreActor.get_conversation)
    delete_conversation = remote_method(MetadataStoreActor.delete_conversation)
    list_conversations = remote_method(MetadataStoreActor.list_conversations)
    upsert_group = remote_method(MetadataStoreActor.upsert_group)
    delete_group = remote_method(MetadataStoreActor.delete_group)
    upsert_run = remote_method(MetadataStoreActor.upsert_run)
    delete_run = remote_method(MetadataStoreActor.delete_run)
    set_step_feedback = remote_method(MetadataStoreActor.set_step_feedback)
    set_meta = remote_method(MetadataStoreActor.set_meta)

    ingest_host_journals = remote_method(MetadataStoreActor.ingest_host_journals)
    stats = remote_method(MetadataStoreActor.stats)
    ping = remote_method(MetadataStoreActor.ping)
    node_id = remote_method(MetadataStoreActor.node_id)
    snapshot = remote_method(MetadataStoreActor.snapshot)
    status = remote_method(MetadataStoreActor.status)
    close = remote_method(MetadataStoreActor.close)
