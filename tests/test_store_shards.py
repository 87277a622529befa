"""The metadata store sharded by agent id: the same answers as one store, spread over N.

Most tests run one workload against one store and against three shards (plain store
actors in this process, no Ray) and compare what they answer.
"""

from __future__ import annotations

import asyncio
import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from letta_ray.actors.metadata_store import MetadataStoreActor, MetadataStoreHandle
from letta_ray.actors.store_shards import (
    ShardedStore,
    check_shard_count,
    journal_folder,
    meta_file,
    shard_of,
)
from letta_ray.errors import ConflictError, InvalidInputError, NotFoundError
from letta_ray.messages import Message, StepRecord
from letta_ray.schemas import AgentState, Block, Conversation, LLMConfig, utcnow

SHARDS = 3


def agent(name: str, *blocks: Block, tags: list[str] | None = None) -> AgentState:
    return AgentState(name=name, system="s", blocks=list(blocks) or [Block(label="human", value=name)],
                      llm_config=LLMConfig(model="openai/fake"), tags=tags or [])


def store_at(path: Path) -> MetadataStoreHandle:
    return MetadataStoreHandle.local(MetadataStoreActor(path, host_journals=path.parent / "journal"))


def sharded(home: Path, n: int = SHARDS) -> ShardedStore:
    return ShardedStore([MetadataStoreHandle.local(MetadataStoreActor(
        meta_file(home / "meta.duckdb", k), host_journals=journal_folder(home / "journal", k))) for k in range(n)])


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    """One store and three shards, to be given the same writes."""
    one, many = store_at(tmp_path / "one" / "meta.duckdb"), sharded(tmp_path / "many")
    yield one, many
    await one.close()
    await many.close()


def turn(state: AgentState, i: int, when: Any = None) -> tuple[AgentState, list[Message], dict[str, Any],
                                                              list[StepRecord]]:
    run_id = f"run-{state.name}-{i}"
    created = when or utcnow()
    messages = [Message(agent_id=state.id, role="user", content=f"{state.name} says {i}", run_id=run_id,
                        created_at=created),
                Message(agent_id=state.id, role="assistant", content=f"re {i}", run_id=run_id, created_at=created)]
    step = StepRecord(id=f"step-{state.name}-{i}", created_at=created, agent_id=state.id, run_id=run_id,
                      model="openai/fake", step_start_ns=int(created.timestamp() * 1e9) + i)
    run = {"id": run_id, "agent_id": state.id, "status": "completed", "created_at": created.isoformat()}
    state = state.model_copy(update={"message_ids": [*state.message_ids, *(m.id for m in messages)]})
    return state, messages, run, [step]


async def both(pair: Any, call: Any) -> tuple[Any, Any]:
    one, many = pair
    return await call(one), await call(many)


async def pages(list_page: Any, key: Any, limit: int, order: str = "asc", **kwargs: Any) -> list[Any]:
    """Every item of a list, page by page with its cursor (cursors are in time: a list
    newest first pages on with ``before``)."""
    items: list[Any] = []
    side = "after" if order == "asc" else "before"
    cursor: dict[str, Any] = {}
    while True:
        page = await list_page(limit=limit, order=order, **cursor, **kwargs)
        items.extend(page)
        if len(page) < limit:
            return items
        cursor = {side: key(page[-1])}


def test_every_store_method_is_routed() -> None:
    """A method added to the store's handle fails here until ShardedStore says where it goes."""
    methods = {name for name, _ in inspect.getmembers(MetadataStoreHandle, inspect.iscoroutinefunction)
               if not name.startswith("_")}
    unrouted = {name for name in methods
                if name not in ShardedStore._ON_FIRST and getattr(ShardedStore, name) is getattr(
                    MetadataStoreHandle, name)}
    assert not unrouted
    assert ShardedStore._ON_FIRST <= methods


def test_an_agent_has_one_shard_whatever_the_process() -> None:
    ids = [agent(f"a{i}").id for i in range(3000)]
    counts = [sum(shard_of(a, 4) == k for a in ids) for k in range(4)]
    assert min(counts) > 600  # spread (crc32, not Python's salted hash)
    # pinned: a different function would look for existing agents on the wrong shards
    assert shard_of("agent-00000000-0000-0000-0000-000000000000", 4) == 1
    assert all(shard_of(a, 1) == 0 for a in ids[:10])


async def test_agents_spread_over_shards_and_list_as_one_store(pair: Any) -> None:
    one, many = pair
    states = [agent(f"a{i:02d}", tags=["even" if i % 2 == 0 else "odd", f"t{i % 3}"]) for i in range(40)]
    base = utcnow()
    states = [s.model_copy(update={"created_at": base + timedelta(seconds=i // 4)}) for i, s in enumerate(states)]
    for store in pair:
        await store.create_agents(states[:25])
        for state in states[25:]:
            await store.create_agents([state])
    counts = [await shard.count_agents() for shard in many.shards]
    assert sum(counts) == 40 and min(counts) > 0
    for k, shard in enumerate(many.shards):
        assert all(shard_of(s.id, SHARDS) == k for s in await shard.list_agents(limit=None))
    assert await many.count_agents() == 40

    for order in ("asc", "desc"):
        want = [s.id for s in await one.list_agents(limit=None, order=order)]
        got = await pages(many.list_agents, lambda s: s.id, 7, order)
        assert [s.id for s in got] == want
    a, b = await both(pair, lambda s: s.list_agents(tags=["odd", "t1"], match_all_tags=True, limit=None))
    assert [s.id for s in a] == [s.id for s in b] and b
    middle = states[20].id
    a, b = await both(pair, lambda s: s.list_agents(before=middle, order="desc", limit=5))
    assert [s.id for s in a] == [s.id for s in b]
    assert await one.list_tags(limit=None) == await many.list_tags(limit=None)
    assert await many.list_tags(limit=2, order="desc") == await one.list_tags(limit=2, order="desc")
    assert (await many.get_agent_by_name("a07")).id == states[7].id
    assert await many.existing_agents([states[3].id, "agent-nobody", states[30].id]) == sorted(
        [states[3].id, states[30].id])
    with pytest.raises(NotFoundError):
        await many.list_agents(after="agent-nobody")
    with pytest.raises(NotFoundError):
        await many.get_agent_by_name("nobody")


async def test_turns_runs_steps_and_messages_across_shards(pair: Any) -> None:
    one, many = pair
    states = [agent(f"m{i}") for i in range(6)]
    for store in pair:
        await store.create_agents(states)
    same_time = utcnow()
    turns = []
    current = list(states)
    for i in range(5):
        for k, state in enumerate(current):
            # many messages share a timestamp: the order must still be one order
            current[k], messages, run, steps = turn(state, i, same_time if i < 2 else None)
            turns.append((current[k], messages, run, steps))
    for store in pair:
        for state, messages, run, steps in turns:
            await store.commit_step(state, messages, [], steps, run)
    for order in ("asc", "desc"):
        want = await one.list_messages(None, limit=None, order=order)
        got = await pages(lambda **kw: many.list_messages(None, **kw), lambda m: m.id, 7, order)
        assert [m.id for m in got] == [m.id for m in want] or _same_order_by_time(got, want, order)
        assert len({m.id for m in got}) == len(want) == 60
    mine = states[2].id
    a, b = await both(pair, lambda s: s.list_messages(mine, limit=None))
    assert [m.id for m in a] == [m.id for m in b] and len(b) == 10
    assert await many.count_messages(mine) == 10
    ids = [m.id for m in a]
    assert [m.id for m in await many.get_messages(ids[::-1])] == ids[::-1]
    with pytest.raises(NotFoundError):
        await many.get_messages([ids[0], "message-nobody"])

    runs = await pages(many.list_runs, lambda r: r["id"], 4, "desc")
    assert sorted(r["id"] for r in runs) == sorted(r["id"] for r in await one.list_runs(limit=None))
    assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True)
    a, b = await both(pair, lambda s: s.list_runs([states[0].id, states[4].id], limit=None))
    assert sorted(r["id"] for r in a) == sorted(r["id"] for r in b) and len(b) == 10
    run_id = runs[3]["id"]
    assert (await many.get_run(run_id))["id"] == run_id
    steps = await pages(many.list_steps, lambda s: s.id, 4, "desc")
    assert [s.id for s in steps] == [s.id for s in await one.list_steps(limit=None)]
    step = await many.set_step_feedback(steps[5].id, "positive")
    assert step.feedback == "positive" and (await many.get_step(steps[5].id)).feedback == "positive"
    assert [s.id for s in await many.list_steps(agent_id=mine, limit=None)] == [
        s.id for s in await one.list_steps(agent_id=mine, limit=None)]
    of_runs = await many.messages_of_runs("run-m1-")
    assert of_runs == await one.messages_of_runs("run-m1-") and len(of_runs) == 5
    await many.delete_run(run_id)
    with pytest.raises(NotFoundError):
        await many.get_run(run_id)
    found = await many.search_messages(None, "says", limit=8)
    assert len(found) == 8 and len({m.agent_id for m in found}) > 1  # every shard's best, in turn


def _same_order_by_time(got: list[Message], want: list[Message], order: str) -> bool:
    """Messages of one timestamp from different agents may come in another order than one
    store's insertion order; by time, and per agent, it is the same order."""
    times = [m.created_at for m in got]
    if times != sorted(times, reverse=order == "desc"):
        return False
    for agent_id in {m.agent_id for m in want}:
        if [m.id for m in got if m.agent_id == agent_id] != [m.id for m in want if m.agent_id == agent_id]:
            return False
    return True


async def test_a_block_shared_across_shards_is_one_block(pair: Any) -> None:
    one, many = pair
    first = agent("first")
    other = next(a for a in (agent(f"o{i}") for i in range(50))
                 if shard_of(a.id, SHARDS) != shard_of(first.id, SHARDS))
    team = Block(label="team", value="we are", limit=5000)
    first = first.model_copy(update={"blocks": [*first.blocks, team]})
    other = other.model_copy(update={"blocks": [*other.blocks, team]})
    for store in pair:
        await store.create_agents([first])
        await store.create_agents([other])
    assert await many.shared_blocks([team.id, first.blocks[0].id]) == [team.id]
    assert await many.agents_of_block(team.id) == sorted([first.id, other.id])
    # concurrent edits from both agents all land, one after another
    for store in pair:
        await asyncio.gather(*(store.edit_block(team.id, "append", {"content": f"w{i}"})
                               for i in range(12)))
    value = (await one.get_block(team.id)).value
    assert sorted(value.split()) == sorted((await many.get_block(team.id)).value.split())
    for state in (first, other):  # both shards' copies
        assert [b.value for b in (await many.get_agent(state.id)).blocks if b.label == "team"] == [
            (await many.get_block(team.id)).value]
    assert [b.id for b in await many.list_blocks(label="team", limit=None)] == [team.id]
    assert [b.id for b in await many.list_blocks(limit=None)] == [b.id for b in await one.list_blocks(limit=None)]

    # an upsert that clashes on one shard changes no copy
    clash = Block(label="human", value="x")
    clashing = (await many.get_block(team.id)).model_copy(update={"label": "human", "updated_at": utcnow()})
    before = (await many.get_block(team.id)).value
    with pytest.raises(ConflictError):
        await many.upsert_block(clashing)
    for shard in many.shards:
        assert all(b.label == "team" for b in await shard.get_blocks([team.id], True))
    assert (await many.get_block(team.id)).value == before
    del clash

    await many.delete_agent(first.id)
    assert (await many.get_block(team.id)).value == before  # still other's
    await many.delete_agent(other.id)
    with pytest.raises(NotFoundError):
        await many.get_block(team.id)
    for shard in many.shards:
        assert await shard.get_blocks([team.id], True) == []


async def test_attaching_a_block_of_another_shard_copies_it(pair: Any) -> None:
    _, many = pair
    a = agent("att")
    loose = next(b for b in (Block(label="notes", value=f"n{i}") for i in range(60))
                 if shard_of(b.id, SHARDS) != shard_of(a.id, SHARDS))
    await many.create_agents([a])
    await many.upsert_block(loose)  # attached to no agent: on its own id's shard
    assert [b.id for b in await many.shards[shard_of(loose.id, SHARDS)].get_blocks([loose.id], True)] == [loose.id]
    await many.attach_block(a.id, loose.id)
    assert [b.label for b in (await many.get_agent(a.id)).blocks] == ["human", "notes"]
    edited = await many.edit_block(loose.id, "replace_unique", {"old": loose.value, "new": "changed"})
    for shard in many.shards:
        assert [b.value for b in await shard.get_blocks([loose.id], True)] in ([], [edited.value])
    clash = Block(label="human", value="second human")
    await many.upsert_block(clash)
    with pytest.raises(ConflictError):
        await many.attach_block(a.id, clash.id)
    assert await many.of(a.id).get_blocks([clash.id], True) == [] or shard_of(clash.id, SHARDS) == shard_of(
        a.id, SHARDS)  # the copy made for the attach went again
    with pytest.raises(NotFoundError):
        await many.attach_block("agent-nobody", loose.id)
    await many.detach_block(a.id, loose.id)
    assert [b.label for b in (await many.get_agent(a.id)).blocks] == ["human"]


async def test_conversations_and_global_tables(pair: Any) -> None:
    one, many = pair
    states = [agent(f"c{i}") for i in range(5)]
    for store in pair:
        await store.create_agents(states)
    conversations = [Conversation(agent_id=s.id, summary=f"c{i}") for i, s in enumerate(states) for _ in range(2)]
    for store in pair:
        for conversation in conversations:
            await store.upsert_conversation(conversation)
    got = await pages(many.list_conversations, lambda c: c.id, 3, "desc")
    assert [c.id for c in got] == [c.id for c in await one.list_conversations(limit=None)]
    assert (await many.get_conversation(conversations[3].id)).summary == "c1"
    assert len(await many.list_conversations(agent_id=states[4].id, limit=None)) == 2
    await many.delete_conversation(conversations[3].id)
    with pytest.raises(NotFoundError):
        await many.get_conversation(conversations[3].id)
    # the global tables are on shard 0 alone
    await many.set_meta("k", "v")
    assert await many.get_meta("k") == "v" and await many.shards[1].get_meta("k") is None


async def test_export_is_one_file_per_table(pair: Any, tmp_path: Path) -> None:
    _, many = pair
    shared = Block(label="team", value="t")
    states = [agent(f"e{i}", Block(label="human", value=f"h{i}"), shared) for i in range(8)]
    await many.create_agents(states)
    paths = await many.export_parquet(str(tmp_path / "export"))
    agents = pq.read_table(paths["agents"])
    blocks = pq.read_table(paths["blocks"]).column("id").to_pylist()
    assert agents.num_rows == 8 and len(blocks) == len(set(blocks)) == 9
    assert not list((tmp_path / "export").glob(".shard-*"))


async def test_a_data_directory_keeps_its_shard_count(tmp_path: Path) -> None:
    first = store_at(tmp_path / "meta.duckdb")
    await check_shard_count(first, 2)  # a new directory: recorded
    await check_shard_count(first, 2)
    with pytest.raises(InvalidInputError, match="store_shards=2"):
        await check_shard_count(first, 3)
    await first.close()
    single = store_at(tmp_path / "old" / "meta.duckdb")
    await single.create_agents([agent("old")])  # written before shards were recorded
    with pytest.raises(InvalidInputError, match="one metadata store"):
        await check_shard_count(single, 2)
    await check_shard_count(single, 1)
    await single.close()


@pytest.mark.parametrize("shipped", [False, True], ids=["own disk", "shipped to a keeper"])
async def test_the_hosts_journal_each_turn_to_its_agents_shard(tmp_path: Path, shipped: bool) -> None:
    from letta_ray.actors.host import AgentHost
    from letta_ray.actors.journal_keeper import JournalKeeper, KeeperHandle
    from letta_ray.messages import MessageCreate
    from letta_ray.testing import FunctionLLM, send_message

    many = sharded(tmp_path)
    keeper = KeeperHandle.local(JournalKeeper(tmp_path / "journal")) if shipped else None
    host = AgentHost("h", many, None, llm=FunctionLLM(lambda m, i: send_message("ok")),
                     journal_dir=str(tmp_path / "journal"), keeper=keeper,
                     store_node="another node" if shipped else None)
    states = [agent(f"h{i}").model_copy(update={"tools": ["send_message"]}) for i in range(12)]
    await host.create_agents(states)
    await host.send(states[0].id, [MessageCreate(content="alone")])  # written on the spot
    await asyncio.gather(*(host.send(s.id, [MessageCreate(content="hi")]) for s in states))  # batched
    used = {shard_of(s.id, SHARDS) for s in states}
    assert len(used) > 1
    for k in range(SHARDS):  # a shard no agent here belongs to may have an (empty) file: the host opens them
        files = list(journal_folder(tmp_path / "journal", k).glob("h-*.log"))
        assert len(files) <= 1 and (sum(f.stat().st_size for f in files) > 0) == (k in used), (k, used, files)
    await many.ingest_host_journals()
    per_turn = await many.count_messages(states[1].id)  # the user's, the call, its result
    assert per_turn >= 2
    for state in states:  # each shard applied its own agents' turns, and none of another's
        assert await many.of(state.id).count_messages(state.id) == per_turn * (2 if state is states[0] else 1)
        assert sum([await shard.count_messages(state.id) for shard in many.shards]) == await many.count_messages(
            state.id)
    await many.close()


# --------------------------------------------------------------------------- on Ray


def test_a_runtime_with_two_shards_keeps_everything_across_a_restart(ray_session: Any, fake_llm_server: Any,
                                                                    tmp_path: Path) -> None:
    import letta_ray

    home = tmp_path / "sharded_home"
    first = letta_ray.connect(home=str(home), store_shards=2)
    try:
        assert isinstance(first.runtime.store, ShardedStore)
        agents = [first.create_agent(f"s{i}", model="fake-model", model_endpoint=fake_llm_server.url,
                                     memory_blocks=[{"label": "human", "value": "Name: Ada"}],
                                     enable_sleeptime=i == 0)
                  for i in range(6)]
        for i, handle in enumerate(agents):
            assert handle.send(f"remember likes {i}").stop_reason.stop_reason == "end_turn"
        async def counts_per_shard() -> list[int]:
            return list(await asyncio.gather(*(s.count_agents() for s in first.runtime.store.shards)))
        counts = first.run_sync(counts_per_shard())
        # each agent in the shard of its id, the sleep-time agent too (random ids: all 7 in
        # one shard 1 time in 64, so not "both shards used", which another test shows)
        ids = [a.id for a in first.list_agents(limit=None)]
        assert len(ids) == 7 and counts == [sum(shard_of(i, 2) == k for i in ids) for k in range(2)]
        main = agents[0]
        sleeper = next(a for a in first.list_agents(limit=None) if a.name == "s0-sleeptime")
        shared = main.blocks["human"].id
        assert shared in {b.id for b in sleeper.blocks}
        # a user's edit of the shared block reaches both agents, whichever shards they are on
        main.blocks.update("human", "Name: Ada Lovelace")
        assert first.get_agent("s0-sleeptime").blocks["human"].value == "Name: Ada Lovelace"
        status = first.status()["store"]
        assert len(status["shards"]) == 2 and status["turns_applied"] >= 0
        before = {a.name: [m.id for m in a.messages(limit=None)] for a in agents}
    finally:
        first.close()

    with pytest.raises(InvalidInputError, match="store_shards=2"):
        letta_ray.connect(home=str(home))
    second = letta_ray.connect(home=str(home), store_shards=2)
    try:
        again = {name: second.get_agent(name) for name in before}
        assert {name: [m.id for m in a.messages(limit=None)] for name, a in again.items()} == before
        assert again["s3"].blocks["human"].value == "Name: Ada\nlikes 3"
        assert again["s0"].blocks["human"].value == "Name: Ada Lovelace"
        assert len(second.list_agents(limit=None)) == 7
        assert again["s4"].send("still there?").assistant_text() == "You said: still there?"
    finally:
        second.close()
