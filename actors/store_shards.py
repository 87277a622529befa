"""The metadata store sharded by agent id: N store actors behind one handle.

One ``MetadataStoreActor`` applies every turn of the cluster, and its ceiling (a few
thousand turns/s, ``bench/store_ceiling.py``) is the first limit a large cluster meets.
With ``store_shards`` = N the metadata is split over N store actors, each with its own
DuckDB file and journal folder, and ``ShardedStore`` — a ``MetadataStoreHandle`` whose
callers do not know there are several — sends each call where its data is:

- **an agent's own data** (its row, its blocks' attachments, its messages, runs, steps and
  conversations) lives on the shard of its id (``shard_of``); an agent's turn is applied
  by that shard alone, in one transaction as before, and hosts journal each turn into the
  journal folder of its agent's shard (``journal_folder``).
- **global tables** (tools, MCP servers, groups, archives, folders and files, identities,
  the store's own bookkeeping) live on shard 0.
- **blocks** are kept where their agents are: a block attached to agents of several shards
  has a copy on each, kept alike — an edit runs on the first shard holding the block (so
  concurrent edits of one block are still applied one after another) and its result is
  written to the other copies, each only if at least as new (a stale copy cannot undo an
  edit). A block attached to no agent lives on the shard of its own id.
- **lists across agents** ask every shard and merge the pages in the list's order; a
  cursor (an id) is first turned into the values that order is by, so every shard starts
  its page at the same place. Lookups by an id that does not name its agent (a run, a
  step, a message, a conversation) ask every shard.

The mapping of agents to shards depends on N, so a data directory keeps the N it was made
with (``check_shard_count``).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.messages import Message, StepRecord
from letta_ray.schemas import AgentState, Block, Conversation, Cursor, Order

from .metadata_store import MetadataStoreHandle

T = TypeVar("T")

SHARD_COUNT_KEY = "store_shards"
_LAST = 2**62  # a tiebreak past every row's (message seq numbers are far below)


def shard_of(agent_id: str, shards: int) -> int:
    """The shard that holds agent ``agent_id``'s data (the same in every process and run)."""
    if shards <= 1:
        return 0
    return zlib.crc32(agent_id.encode()) % shards


def journal_folder(root: str | Path, shard: int) -> Path:
    """Where hosts journal the turns of shard ``shard``'s agents (shard 0: ``root`` itself,
    as with one store)."""
    return Path(root) if shard == 0 else Path(root) / f"shard-{shard}"


def meta_file(meta_path: str | Path, shard: int) -> Path:
    """Shard ``shard``'s DuckDB file (shard 0: the one store's own ``meta.duckdb``)."""
    path = Path(meta_path)
    return path if shard == 0 else path.with_name(f"{path.stem}-shard{shard}{path.suffix}")


async def check_shard_count(first: MetadataStoreHandle, shards: int) -> None:
    """Refuse to start with a shard count other than the one the data was written with
    (agents would be looked for on the wrong shard); record it on first start."""
    stored = await first.get_meta(SHARD_COUNT_KEY)
    if stored is None:
        if shards > 1 and await first.count_agents():
            raise InvalidInputError(
                f"this data directory was written by one metadata store; it cannot be opened with "
                f"store_shards={shards} (set LETTA_RAY_STORE_SHARDS=1)")
        await first.set_meta(SHARD_COUNT_KEY, str(shards))
    elif int(stored) != shards:
        raise InvalidInputError(
            f"this data directory was written with store_shards={stored}, not {shards}: set "
            f"LETTA_RAY_STORE_SHARDS={stored} (agents are placed on shards by id)")


def _merge(pages: Sequence[Sequence[T]], key: Callable[[T], Any], order: Order, limit: int | None) -> list[T]:
    """Merge pages, each already in ``order``, into one, cut at ``limit``. Ties of ``key`` go
    by shard, then by each page's own order (the global order of a sharded list)."""
    desc = order == "desc"
    decorated = [((key(item), shard, -pos if desc else pos), item)
                 for shard, page in enumerate(pages) for pos, item in enumerate(page)]
    decorated.sort(key=lambda pair: pair[0], reverse=desc)
    items = [item for _, item in decorated]
    return items if limit is None else items[:limit]


def _newest(parts: Iterable[Iterable[Block]]) -> dict[str, Block]:
    """The shards' copies of blocks, by id: the newest copy of each."""
    newest: dict[str, Block] = {}
    for part in parts:
        for block in part:
            held = newest.get(block.id)
            if held is None or block.updated_at > held.updated_at:
                newest[block.id] = block
    return newest


def _run_key(doc: dict[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(doc["created_at"]), doc["id"]


class ShardedStore(MetadataStoreHandle):
    """The metadata store's handle over N shards (see the module's docstring). Each method
    is the one of ``MetadataStoreHandle`` of the same name, with the same meaning."""

    _ON_FIRST = frozenset({
        "get_tool", "get_tool_by_name", "list_tools", "upsert_tool", "delete_tool",
        "get_group", "list_groups", "upsert_group", "delete_group", "get_meta", "set_meta",
        "get_mcp_server", "list_mcp_servers", "mcp_server_tools", "upsert_mcp_server", "sync_mcp_tools",
        "delete_mcp_server", "upsert_archive", "get_archive", "list_archives", "delete_archive",
        "upsert_folder", "get_folder", "delete_folder", "upsert_file", "set_file_content", "get_file",
        "get_file_content", "delete_file", "list_folders", "list_files", "upsert_identity", "get_identity",
        "delete_identity", "list_identities", "node_id",
    })
    """The global tables' methods: shard 0 answers them."""

    def __init__(self, shards: Sequence[MetadataStoreHandle]) -> None:
        super().__init__(None)
        if not shards:
            raise ValueError("a sharded store needs at least one shard")
        self.shards = list(shards)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ShardedStore, (self.shards,))

    @property
    def actor(self) -> Any:
        return self.shards[0].actor

    async def _invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], packed: bool) -> Any:
        # ``packed``: the shard's own facade method packs the call as the store method says
        if method not in self._ON_FIRST:  # a new store method must say how it is routed
            raise NotImplementedError(f"ShardedStore does not route {method!r}")
        return await getattr(self.shards[0], method)(*args, **kwargs)

    def _invoke_blocking(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], packed: bool) -> Any:
        raise NotImplementedError(f"ShardedStore does not route a blocking {method!r}")  # none is declared yet

    # ------------------------------------------------------------------ routing

    def of(self, agent_id: str) -> MetadataStoreHandle:
        """The shard of agent ``agent_id``."""
        return self.shards[shard_of(agent_id, len(self.shards))]

    async def _all(self, call: Callable[[MetadataStoreHandle], Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(call(shard) for shard in self.shards)))

    async def _found(self, call: Callable[[MetadataStoreHandle], Awaitable[T]], kind: str, key: str) -> list[T]:
        """``call`` on every shard; the answers of those that have ``key`` (NotFoundError if
        none has)."""
        answers = await asyncio.gather(*(call(shard) for shard in self.shards), return_exceptions=True)
        found: list[T] = []
        for answer in answers:
            if isinstance(answer, NotFoundError):
                continue
            if isinstance(answer, BaseException):
                raise answer
            found.append(answer)
        if not found:
            raise NotFoundError(kind, key)
        return found

    async def _holder(self, kind: str, key: str) -> MetadataStoreHandle:
        """The shard holding the run, step or conversation ``key``."""
        keys = await self._all(lambda shard: shard.cursor_key(kind, key))
        for shard, found in zip(self.shards, keys, strict=True):
            if found is not None:
                return shard
        raise NotFoundError(kind, key)

    async def _key(self, kind: str, cursor: Cursor | None) -> Cursor | None:
        """A cursor id as the values its list is ordered by (found on whichever shard has it)."""
        if cursor is None or not isinstance(cursor, str):
            return cursor
        found = await self.cursor_key(kind, cursor)
        if found is None:
            raise NotFoundError(kind, cursor)
        return tuple(found)  # type: ignore[return-value]

    def _of_agents(self, agent_ids: Sequence[str] | None) -> list[MetadataStoreHandle]:
        """The shards of these agents (every shard for None or no agents)."""
        if not agent_ids:
            return self.shards
        return [self.shards[k] for k in sorted({shard_of(a, len(self.shards)) for a in agent_ids})]

    async def _page(self, kind: str, shards: Sequence[MetadataStoreHandle],
                    list_page: Callable[[MetadataStoreHandle, Cursor | None, Cursor | None], Awaitable[list[T]]],
                    key: Callable[[T], Any], *, after: Cursor | None, before: Cursor | None, limit: int | None,
                    order: Order) -> list[T]:
        """One page of a list of ``kind`` ordered by ``key``: the cursors turned into values,
        each shard's page between them (``list_page(shard, after, before)``), merged."""
        after, before = await self._key(kind, after), await self._key(kind, before)
        pages = await asyncio.gather(*(list_page(shard, after, before) for shard in shards))
        return _merge(pages, key, order, limit)

    async def _holders(self, block_ids: Sequence[str]) -> list[dict[str, int]]:
        """Per shard: the blocks of ``block_ids`` it holds, with their attachments there."""
        return await self._all(lambda shard: shard.attachment_counts(list(block_ids)))

    async def _holding(self, block_id: str) -> list[int]:
        """The shards with a copy of block ``block_id``, in order."""
        return [k for k, holds in enumerate(await self._holders([block_id])) if block_id in holds]

    # ------------------------------------------------------------------ agents

    async def commit_step(self, state: AgentState, messages: list[Message],
                          edited_blocks: list[Block] | None = None, steps: list[StepRecord] | None = None,
                          run: dict[str, Any] | None = None, conversation: Conversation | None = None) -> None:
        await self.of(state.id).commit_step(state, messages, edited_blocks, steps, run, conversation)

    async def create_agents(self, states: list[AgentState],
                            initial_messages: list[list[Message]] | None = None) -> None:
        """Each shard creates its agents in one transaction (a batch spread over shards is not
        one transaction: a shard refusing its part, e.g. for a label clash, leaves the others)."""
        groups: dict[int, tuple[list[AgentState], list[list[Message]]]] = {}
        for i, state in enumerate(states):
            part = groups.setdefault(shard_of(state.id, len(self.shards)), ([], []))
            part[0].append(state)
            part[1].append(initial_messages[i] if initial_messages else [])
        await asyncio.gather(*(self.shards[k].create_agents(part_states, part_messages)
                               for k, (part_states, part_messages) in groups.items()))
        await self._sync_copies([b for state in states for b in state.blocks], skip=set(groups))

    async def _sync_copies(self, blocks: list[Block], skip: Iterable[int] = ()) -> None:
        """Bring the other shards' copies of ``blocks`` up to them (where they are older)."""
        if not blocks:
            return
        skipped = set(skip)
        await asyncio.gather(*(shard.sync_blocks(blocks) for k, shard in enumerate(self.shards)
                               if k not in skipped))

    async def get_agent(self, agent_id: str) -> AgentState:
        return await self.of(agent_id).get_agent(agent_id)

    async def upsert_agent(self, state: AgentState) -> None:
        home = shard_of(state.id, len(self.shards))
        await self.shards[home].upsert_agent(state)
        await self._sync_copies(list(state.blocks), skip=[home])

    async def delete_agent(self, agent_id: str) -> None:
        """Delete the agent on its shard; a block it leaves attached to no agent anywhere goes
        from every shard (as with one store)."""
        state = await self.get_agent(agent_id)
        await self.of(agent_id).delete_agent(agent_id)
        block_ids = [block.id for block in state.blocks]
        held = await self._holders(block_ids)
        unused = [b for b in block_ids if sum(h.get(b, 0) for h in held) == 0]
        for shard, holds in zip(self.shards, held, strict=True):
            for block_id in unused:
                if block_id in holds:
                    await shard.delete_block(block_id)

    async def existing_agents(self, agent_ids: list[str]) -> list[str]:
        groups: dict[int, list[str]] = {}
        for agent_id in agent_ids:
            groups.setdefault(shard_of(agent_id, len(self.shards)), []).append(agent_id)
        found = await asyncio.gather(*(self.shards[k].existing_agents(ids) for k, ids in groups.items()))
        return sorted(agent_id for part in found for agent_id in part)

    async def get_agent_by_name(self, name: str) -> AgentState:
        found = await self._found(lambda shard: shard.get_agent_by_name(name), "agent", name)
        return min(found, key=lambda state: (state.created_at, state.id))

    async def list_agents(self, *, name: str | None = None, tags: list[str] | None = None,
                          match_all_tags: bool = False, limit: int | None = 50, after: Cursor | None = None,
                          before: Cursor | None = None, order: Order = "asc") -> list[AgentState]:
        return await self._page("agent", self.shards, lambda shard, a, b: shard.list_agents(
            name=name, tags=tags, match_all_tags=match_all_tags, limit=limit, after=a, before=b, order=order),
            lambda state: (state.created_at, state.id), after=after, before=before, limit=limit, order=order)

    async def list_tags(self, *, name: str | None = None, after: str | None = None, before: str | None = None,
                        limit: int | None = 50, order: Order = "asc") -> list[str]:
        pages = await self._all(lambda shard: shard.list_tags(name=name, after=after, before=before, limit=limit,
                                                              order=order))
        tags = sorted({tag for page in pages for tag in page}, reverse=order == "desc")
        return tags if limit is None else tags[:limit]

    async def count_agents(self) -> int:
        return sum(await self._all(lambda shard: shard.count_agents()))

    async def agent_rows(self, *, query: str | None = None, limit: int = 50, offset: int = 0
                         ) -> tuple[int, list[dict[str, Any]]]:
        """Each shard's first ``offset + limit`` rows, merged newest first, then the page."""
        parts = await self._all(lambda shard: shard.agent_rows(query=query, limit=offset + limit, offset=0))
        rows = sorted((row for _, page in parts for row in page), key=lambda r: (r["created_at"], r["id"]),
                      reverse=True)
        return sum(total for total, _ in parts), rows[offset:offset + limit]

    async def agents_with_archive(self, archive_id: str) -> list[str]:
        return sorted(a for part in await self._all(lambda s: s.agents_with_archive(archive_id)) for a in part)

    async def agents_with_folder(self, folder_id: str) -> list[str]:
        return sorted(a for part in await self._all(lambda s: s.agents_with_folder(folder_id)) for a in part)

    async def agents_with_identity(self, identity_id: str) -> list[str]:
        return sorted(a for part in await self._all(lambda s: s.agents_with_identity(identity_id)) for a in part)

    # ------------------------------------------------------------------ blocks

    async def get_blocks(self, block_ids: list[str], missing_ok: bool = False) -> list[Block]:
        newest = _newest(await self._all(lambda shard: shard.get_blocks(block_ids, True)))
        missing = next((b for b in block_ids if b not in newest), None)
        if missing is not None and not missing_ok:
            raise NotFoundError("block", missing)
        return [newest[b] for b in block_ids if b in newest]

    async def get_block(self, block_id: str) -> Block:
        [block] = await self.get_blocks([block_id])
        return block

    async def list_blocks(self, *, label: str | None = None, limit: int | None = 50,
                          after: str | None = None) -> list[Block]:
        newest = _newest(await self._all(lambda shard: shard.list_blocks(label=label, limit=limit, after=after)))
        blocks = [newest[b] for b in sorted(newest)]
        return blocks if limit is None else blocks[:limit]

    async def agents_of_block(self, block_id: str) -> list[str]:
        found = await self._found(lambda shard: shard.agents_of_block(block_id), "block", block_id)
        return sorted(a for part in found for a in part)

    async def attachment_counts(self, block_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for held in await self._holders(block_ids):
            for block_id, count in held.items():
                counts[block_id] = counts.get(block_id, 0) + count
        return counts

    async def shared_blocks(self, block_ids: list[str]) -> list[str]:
        counts = await self.attachment_counts(block_ids)
        return sorted(b for b, count in counts.items() if count > 1)

    async def sync_blocks(self, blocks: list[Block]) -> None:
        await self._sync_copies(blocks)

    async def edit_block(self, block_id: str, op: str, args: dict[str, Any]) -> Block:
        """The edit runs on the first shard holding the block (one after another with every
        other edit of it), then its result goes to the other copies."""
        holders = await self._holding(block_id)
        if not holders:
            raise NotFoundError("block", block_id)
        block = await self.shards[holders[0]].edit_block(block_id, op, args)
        await asyncio.gather(*(self.shards[k].sync_blocks([block]) for k in holders[1:]))
        return block

    async def upsert_block(self, block: Block) -> None:
        """Write every copy; if one shard refuses (a label clash with one of its agents), the
        copies already written are put back and the refusal raised."""
        holders = await self._holding(block.id) or [shard_of(block.id, len(self.shards))]
        before = {k: (await self.shards[k].get_blocks([block.id], True)) for k in holders}
        written: list[int] = []
        try:
            for k in holders:
                await self.shards[k].upsert_block(block)
                written.append(k)
        except Exception:
            for k in written:
                for old in before[k]:
                    await self.shards[k].upsert_block(old)
            raise

    async def delete_block(self, block_id: str) -> None:
        holders = await self._holding(block_id)
        if not holders:
            raise NotFoundError("block", block_id)
        await asyncio.gather(*(self.shards[k].delete_block(block_id) for k in holders))

    async def attach_block(self, agent_id: str, block_id: str) -> None:
        """A block from another shard is copied to the agent's shard first."""
        shard = self.of(agent_id)
        if not await shard.existing_agents([agent_id]):
            raise NotFoundError("agent", agent_id)
        copied = False
        if not await shard.get_blocks([block_id], True):
            await shard.upsert_block(await self.get_block(block_id))
            copied = True
        try:
            await shard.attach_block(agent_id, block_id)
        except Exception:
            if copied:
                await shard.delete_block(block_id)
            raise

    async def detach_block(self, agent_id: str, block_id: str) -> None:
        await self.of(agent_id).detach_block(agent_id, block_id)

    # ------------------------------------------------------------------ messages

    async def get_messages(self, ids: list[str], missing_ok: bool = False) -> list[Message]:
        found = {m.id: m for part in await self._all(lambda shard: shard.get_messages(ids, True)) for m in part}
        missing = next((i for i in ids if i not in found), None)
        if missing is not None and not missing_ok:
            raise NotFoundError("message", missing)
        return [found[i] for i in ids if i in found]

    async def count_messages(self, agent_id: str) -> int:
        return await self.of(agent_id).count_messages(agent_id)

    async def list_messages(self, agent_id: str | None, *, limit: int | None = 50, before: Cursor | None = None,
                            after: Cursor | None = None, order: Order = "asc", **filters: Any) -> list[Message]:
        if agent_id is not None:
            return await self.of(agent_id).list_messages(agent_id, limit=limit, before=before, after=after,
                                                         order=order, **filters)
        # Across agents the order is (created_at, shard, insertion): a cursor message of shard
        # k bounds shard j's page by its time alone, inclusively or not by which side of k j is.
        cursors: dict[str, tuple[int, tuple[Any, Any]] | None] = {}
        for name, cursor in (("after", after), ("before", before)):
            if isinstance(cursor, str):
                keys = await self._all(lambda shard, c=cursor: shard.cursor_key("message", c))
                home = next((k for k, key in enumerate(keys) if key is not None), None)
                if home is None:
                    raise NotFoundError("message", cursor)
                cursors[name] = (home, tuple(keys[home]))  # type: ignore[arg-type]
            else:
                cursors[name] = None

        def bound(j: int, name: str) -> Cursor | None:
            found = cursors[name]
            if found is None:
                return after if name == "after" else before
            home, (created_at, _) = found
            if j == home:
                return after if name == "after" else before
            return (created_at, _LAST if j < home else -1)

        pages = await asyncio.gather(*(
            shard.list_messages(None, limit=limit, before=bound(j, "before"), after=bound(j, "after"),
                                order=order, **filters)
            for j, shard in enumerate(self.shards)))
        return _merge(pages, lambda message: message.created_at, order, limit)

    async def search_messages(self, agent_id: str | None, query: str | None, *, limit: int = 10,
                              **filters: Any) -> list[Message]:
        """Across agents, the shards' best answers taken in turn (scores of different files
        are not comparable)."""
        if agent_id is not None:
            return await self.of(agent_id).search_messages(agent_id, query, limit=limit, **filters)
        pages = await self._all(lambda shard: shard.search_messages(None, query, limit=limit, **filters))
        interleaved = [page[i] for i in range(limit) for page in pages if i < len(page)]
        return interleaved[:limit]

    async def messages_of_runs(self, run_id_prefix: str) -> dict[str, list[Message]]:
        runs: dict[str, list[Message]] = {}
        for part in await self._all(lambda shard: shard.messages_of_runs(run_id_prefix)):
            runs.update(part)
        return dict(sorted(runs.items()))

    # ------------------------------------------------------------------ runs and steps

    async def upsert_run(self, run_id: str, doc: dict[str, Any]) -> None:
        agent_id = doc.get("agent_id")
        shard = self.of(agent_id) if isinstance(agent_id, str) else self.shards[0]
        await shard.upsert_run(run_id, doc)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return (await self._found(lambda shard: shard.get_run(run_id), "run", run_id))[0]

    async def delete_run(self, run_id: str) -> None:
        await (await self._holder("run", run_id)).delete_run(run_id)

    async def list_runs(self, agent_ids: list[str] | None = None, *, after: Cursor | None = None,
                        before: Cursor | None = None, limit: int | None = 50, order: Order = "desc",
                        **filters: Any) -> list[dict[str, Any]]:
        return await self._page("run", self._of_agents(agent_ids), lambda shard, a, b: shard.list_runs(
            agent_ids, after=a, before=b, limit=limit, order=order, **filters),
            _run_key, after=after, before=before, limit=limit, order=order)

    async def get_step(self, step_id: str) -> StepRecord:
        return (await self._found(lambda shard: shard.get_step(step_id), "step", step_id))[0]

    async def set_step_feedback(self, step_id: str, feedback: str | None,
                                tags: list[str] | None = None) -> StepRecord:
        return await (await self._holder("step", step_id)).set_step_feedback(step_id, feedback, tags)

    async def list_steps(self, *, agent_id: str | None = None, after: Cursor | None = None,
                         before: Cursor | None = None, limit: int | None = 50, order: Order = "desc",
                         **filters: Any) -> list[StepRecord]:
        shards = self._of_agents([agent_id] if agent_id is not None else None)
        return await self._page("step", shards, lambda shard, a, b: shard.list_steps(
            agent_id=agent_id, after=a, before=b, limit=limit, order=order, **filters),
            lambda step: (step.step_start_ns, step.id), after=after, before=before, limit=limit, order=order)

    # ------------------------------------------------------------------ conversations

    async def upsert_conversation(self, conversation: Conversation) -> Conversation:
        return await self.of(conversation.agent_id).upsert_conversation(conversation)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        found = await self._found(lambda shard: shard.get_conversation(conversation_id), "conversation",
                                  conversation_id)
        return found[0]

    async def delete_conversation(self, conversation_id: str) -> None:
        await (await self._holder("conversation", conversation_id)).delete_conversation(conversation_id)

    async def list_conversations(self, *, agent_id: str | None = None, after: Cursor | None = None,
                                 before: Cursor | None = None, limit: int | None = 50, order: Order = "desc",
                                 **filters: Any) -> list[Conversation]:
        shards = self._of_agents([agent_id] if agent_id is not None else None)
        return await self._page("conversation", shards, lambda shard, a, b: shard.list_conversations(
            agent_id=agent_id, after=a, before=b, limit=limit, order=order, **filters),
            lambda c: (c.created_at, c.id), after=after, before=before, limit=limit, order=order)

    async def cursor_key(self, kind: str, key: str) -> tuple[Any, Any] | None:
        for found in await self._all(lambda shard: shard.cursor_key(kind, key)):
            if found is not None:
                return found
        return None

    # ------------------------------------------------------------------ upkeep

    async def export_parquet(self, out_dir: str) -> dict[str, Path]:
        """Every shard's tables in one Parquet file per table (a block held by several shards
        once)."""
        from letta_ray.storage.metadata import merge_exports

        parts = await asyncio.gather(*(shard.export_parquet(str(Path(out_dir) / f".shard-{k}"))
                                       for k, shard in enumerate(self.shards)))
        return merge_exports(list(parts), Path(out_dir))

    async def ingest_host_journals(self) -> int:
        return sum(await self._all(lambda shard: shard.ingest_host_journals()))

    async def stats(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for part in await self._all(lambda shard: shard.stats()):
            for name, value in part.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    async def ping(self) -> str:
        await self._all(lambda shard: shard.ping())
        return "ok"

    async def snapshot(self) -> dict[str, Any]:
        """Every shard snapshots itself (to its own folder of the object store), at once."""
        parts = await self._all(lambda shard: shard.snapshot())
        return {"name": parts[0]["name"], "seconds": max(p["seconds"] for p in parts),
                "bytes": sum(p["bytes"] for p in parts), "shards": parts}

    async def status(self) -> dict[str, Any]:
        """The shards' states summed (the lag is the largest), and each shard's own."""
        parts = await self._all(lambda shard: shard.status())
        applied = [p["last_applied_at"] for p in parts if p["last_applied_at"] is not None]
        return {"journal_files": sum(p["journal_files"] for p in parts),
                "journal_backlog_bytes": sum(p["journal_backlog_bytes"] for p in parts),
                "apply_lag_s": max(p["apply_lag_s"] for p in parts),
                "turns_applied": sum(p["turns_applied"] for p in parts),
                "last_applied_at": max(applied) if applied else None,
                "snapshots": parts[0]["snapshots"], "snapshots_to": parts[0]["snapshots_to"],
                "shards": parts}

    async def close(self) -> None:
        await self._all(lambda shard: shard.close())
