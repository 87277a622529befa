"""The turn journal: acknowledged turns survive a crash of the store process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from letta_ray.actors._journal import Journal, TurnRecord
from letta_ray.actors.host import AgentHost
from letta_ray.actors.journal_keeper import JournalKeeper, KeeperHandle, ShippedJournal
from letta_ray.actors.metadata_store import MetadataStoreActor, MetadataStoreHandle
from letta_ray.errors import StorageError
from letta_ray.messages import Message, MessageCreate
from letta_ray.schemas import AgentState, Block, LLMConfig
from letta_ray.testing import FunctionLLM, send_message


def agent() -> AgentState:
    return AgentState(name="j", system="s", blocks=[Block(label="human", value="Ada")],
                      llm_config=LLMConfig(model="openai/fake"))


def turn(state: AgentState, text: str) -> list[Message]:
    return [Message(agent_id=state.id, role="user", content=text),
            Message(agent_id=state.id, role="assistant", content=f"re: {text}")]


async def test_acknowledged_turns_are_read_back_at_once(tmp_path: Path) -> None:
    store = MetadataStoreActor(tmp_path / "meta.duckdb")
    state = agent()
    await store.create_agents([state])
    await asyncio.gather(*(store.commit_step(state, turn(state, f"t{i}")) for i in range(20)))
    # every read waits for acknowledged turns to reach DuckDB
    assert await store.count_messages(state.id) == 40
    assert (tmp_path / "meta.journal").exists()
    await store.close()


async def test_turns_journaled_but_not_applied_are_replayed_on_start(tmp_path: Path) -> None:
    store = MetadataStoreActor(tmp_path / "meta.duckdb")
    state = agent()
    await store.create_agents([state])
    await store.close()
    # A crash between the fsync of the journal and the DuckDB transaction: the records
    # are in the journal only (the state of a killed store process).
    edited = state.block("human").with_value("Ada, lives in Lisbon")
    later = state.replace_block(edited)
    journal = Journal(tmp_path / "meta.journal")
    journal.append([TurnRecord(1, state, turn(state, "first"), []),
                    TurnRecord(2, later, turn(state, "second"), [edited])])
    with open(tmp_path / "meta.journal", "ab") as torn:  # and a record cut off mid-write
        torn.write(b'{"seq":3,"state":{"id":')
    journal.close()

    again = MetadataStoreActor(tmp_path / "meta.duckdb")
    assert await again.count_messages(state.id) == 4
    stored = await again.get_agent(state.id)
    assert stored.block("human").value == "Ada, lives in Lisbon"
    assert (tmp_path / "meta.journal").stat().st_size == 0  # applied, then emptied
    # numbering continues after the replayed records
    await again.commit_step(later, turn(state, "third"))
    assert await again.count_messages(state.id) == 6
    await again.close()
    third = MetadataStoreActor(tmp_path / "meta.duckdb")  # nothing replayed twice
    assert await third.count_messages(state.id) == 6
    await third.close()


async def chat_through_a_journaling_host(tmp_path: Path, turns: int) -> tuple[MetadataStoreActor, AgentState]:
    """A store tailing the hosts' journals, a host journaling its turns, and ``turns`` turns."""
    journals = tmp_path / "journal"
    store = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    host = AgentHost("h", MetadataStoreHandle.local(store), None, llm=FunctionLLM(lambda m, i: send_message("ok")),
                     journal_dir=str(journals))
    state = agent().model_copy(update={"tools": ["send_message"]})
    await host.create_agents([state])
    for i in range(turns):
        await host.send(state.id, [MessageCreate(content=f"m{i}")])
    return store, state


async def test_hosts_journal_their_own_turns_and_the_store_applies_them(tmp_path: Path) -> None:
    journals = tmp_path / "journal"
    store, state = await chat_through_a_journaling_host(tmp_path, turns=5)
    # acknowledged = in the host's journal file; any read sees it at once
    assert sum(f.stat().st_size for f in journals.glob("*.log")) > 0
    assert await store.count_messages(state.id) == 5 * 3
    await store.close()

    # a store that restarts applies nothing twice, and picks up turns it never saw
    [log_file] = journals.glob("*.log")
    later = state.block("human").with_value("Ada, journaled")
    Journal(log_file).append([TurnRecord(99, state.replace_block(later), turn(state, "unseen"), [later])])
    again = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    assert await again.count_messages(state.id) == 5 * 3 + 2
    assert (await again.get_agent(state.id)).block("human").value == "Ada, journaled"
    await again.close()
    third = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    assert await third.count_messages(state.id) == 5 * 3 + 2
    await third.close()


async def test_a_host_journals_new_agents_and_they_survive_a_crash_of_the_store(tmp_path: Path) -> None:
    """Creating agents whose blocks are all new costs a journal write, not a DuckDB
    transaction; once acknowledged they survive a store that never applied them, their
    turns journaled after them are applied after them, and nothing is applied twice."""
    journals = tmp_path / "journal"
    store = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    host = AgentHost("h", MetadataStoreHandle.local(store), None, llm=FunctionLLM(lambda m, i: send_message("ok")),
                     journal_dir=str(journals))
    shared = Block(label="team", value="the same block for both")
    first = agent().model_copy(update={"tools": ["send_message"],
                                       "blocks": [Block(label="human", value="Ada"), shared]})
    second = agent().model_copy(update={"blocks": [Block(label="human", value="Bob"), shared]})
    hello = [Message(agent_id=first.id, role="user", content="hello")]
    first.message_ids = [hello[0].id]
    store._start_tailing = lambda: None  # type: ignore[method-assign]  # nothing applied behind our back
    await host.create_agents([first, second], [hello, []], new_blocks_shared=[shared.id])
    assert store.store.count_agents() == 0  # in the journal only: DuckDB has not seen them yet
    # the host knows the shared block is shared without asking the store
    assert host.agents[first.id].shared == {shared.id} == host.agents[second.id].shared
    [log_file] = journals.glob("*.log")
    Journal(log_file).append([TurnRecord(3, first, turn(first, "after the creation"), [])])  # as a turn would
    assert [TurnRecord.decode(line).created for line in log_file.read_bytes().splitlines()] == [True, True, False]
    store.store.close()  # the store "crashes" before applying anything: a new one starts on the same files

    again = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    assert {a.id for a in await again.list_agents()} == {first.id, second.id}
    assert await again.shared_blocks([shared.id]) == [shared.id]
    context = await again.get_messages((await again.get_agent(first.id)).message_ids)
    assert [m.content for m in context] == ["hello"]
    assert await again.count_messages(first.id) == 1 + 2  # its first message, then the turn's two
    await again.close()
    third = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    assert await third.count_agents() == 2 and await third.count_messages(first.id) == 3
    await third.close()


async def test_a_journaled_creation_of_a_stored_agent_is_skipped_not_stuck(tmp_path: Path) -> None:
    """A journal is applied once, but a record that cannot apply must not hold up the turns
    behind it: a creation of an agent already stored is left out, the next turn applied."""
    journals = tmp_path / "journal"
    store = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    state = agent()
    await store.create_agents([state])
    journals.mkdir(exist_ok=True)
    later = state.block("human").with_value("Ada, again")
    Journal(journals / "h-000000.log").append([
        TurnRecord(1, state.model_copy(update={"name": "a second creation"}), turn(state, "dup"), [], created=True),
        TurnRecord(2, state.replace_block(later), turn(state, "next"), [later])])
    applied = await store.get_agent(state.id)
    assert applied.name == "j" and applied.block("human").value == "Ada, again"
    assert await store.count_messages(state.id) == 2  # the turn's, not the duplicate creation's
    await store.close()


async def test_a_host_refuses_agents_reserved_by_a_directory_that_was_replaced(tmp_path: Path) -> None:
    from letta_ray.actors.host import StalePlacement

    store = MetadataStoreActor(tmp_path / "meta.duckdb")
    host = AgentHost("h", MetadataStoreHandle.local(store), None, llm=FunctionLLM(lambda m, i: send_message("ok")))
    await host.create_agents([agent()], epoch="old")  # a host learns its directory's epoch from its first
    await host.hosted("new")  # a restarted directory takes the host over
    refused = agent()
    with pytest.raises(StalePlacement):
        await host.create_agents([refused], epoch="old")
    assert refused.id not in await host.hosted() and refused.id not in await store.existing_agents([refused.id])
    await host.create_agents([refused], epoch="new")
    assert refused.id in await host.hosted()
    await store.close()


async def test_a_hosts_journal_rotates_and_applied_files_are_deleted(tmp_path: Path, monkeypatch) -> None:
    import letta_ray.actors.host as host_module

    monkeypatch.setattr(host_module, "JOURNAL_ROTATE_BYTES", 2_000)  # a new file every turn or so
    store, state = await chat_through_a_journaling_host(tmp_path, turns=6)
    assert await store.count_messages(state.id) == 6 * 3  # reading applies everything...
    assert len(list((tmp_path / "journal").glob("*.log"))) == 1  # ...and only the file in use remains
    await store.close()


async def test_hosts_turns_survive_a_batch_that_rolls_back(tmp_path: Path, monkeypatch) -> None:
    """Applying the hosts' journals can share a DuckDB transaction with other writes. If
    one of those fails, the whole batch rolls back: the turns must be applied again (not
    skipped as done), and no journal file may be deleted on the strength of it."""
    import letta_ray.actors.host as host_module

    monkeypatch.setattr(host_module, "JOURNAL_ROTATE_BYTES", 2_000)  # several files, older ones deletable
    journals = tmp_path / "journal"
    store, state = await chat_through_a_journaling_host(tmp_path, turns=4)
    assert len(list(journals.glob("*.log"))) > 1

    def explode() -> None:
        raise ValueError("a write that fails inside the batch")

    batches = store._writes.batches
    # submitted in the same tick, so they are committed together
    ingested, failed = await asyncio.gather(store.ingest_host_journals(), store._writes.submit(explode),
                                            return_exceptions=True)
    assert isinstance(failed, ValueError)
    assert store._writes.batches == batches + 1  # they did share a batch
    assert ingested == 4
    assert await store.count_messages(state.id) == 4 * 3
    assert len(list(journals.glob("*.log"))) == 1  # applied files go once the turns are committed
    await store.close()
    again = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    assert await again.count_messages(state.id) == 4 * 3  # nothing lost, nothing twice
    await again.close()


# ---------------------------------------------------------------- journal keepers (hosts on other nodes)


async def chat_through_a_shipping_host(tmp_path: Path, turns: int, keeper: JournalKeeper,
                                       concurrent: int = 1) -> tuple[MetadataStoreActor, AgentHost, list[AgentState]]:
    """A host on "another node" (its store is on ``elsewhere``): its turns go to ``keeper``."""
    journals = tmp_path / "journal"
    store = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=journals)
    host = AgentHost("h", MetadataStoreHandle.local(store), None, llm=FunctionLLM(lambda m, i: send_message("ok")),
                     journal_dir=str(tmp_path / "this-nodes-disk"), keeper=KeeperHandle.local(keeper),
                     store_node="elsewhere")
    states = [agent().model_copy(update={"tools": ["send_message"]}) for _ in range(concurrent)]
    await host.create_agents(states)
    for i in range(turns):
        await asyncio.gather(*(host.send(s.id, [MessageCreate(content=f"m{i}")]) for s in states))
    return store, host, states


async def test_a_host_on_another_node_ships_its_turns_to_a_keeper_on_the_stores_disk(tmp_path: Path) -> None:
    keeper = JournalKeeper(tmp_path / "journal")
    store, _, states = await chat_through_a_shipping_host(tmp_path, turns=4, keeper=keeper, concurrent=3)
    assert not (tmp_path / "this-nodes-disk").exists()  # nothing on the host's own disk
    [log_file] = (tmp_path / "journal").glob("*.log")  # one file for the host, kept by the keeper
    assert log_file.name.startswith("h-")
    records = Journal(log_file).read()
    assert len(records) == 4 * 3 and {r.state.id for r in records} == {s.id for s in states}
    assert (await keeper.stats())["appends"] <= 4 * 3  # concurrent turns may share a call
    for state in states:  # the store applies them like a host's own journal
        assert await store.count_messages(state.id) == 4 * 3
    await store.close()
    # the store's node restarting (a new store over the same disk) loses nothing, repeats nothing
    again = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=tmp_path / "journal")
    assert [await again.count_messages(s.id) for s in states] == [12, 12, 12]
    await again.close()


async def test_a_keeper_cuts_off_a_torn_record_before_appending(tmp_path: Path) -> None:
    state = agent()
    first = TurnRecord(1, state, turn(state, "kept"), []).encode()
    (tmp_path / "h-1-000000.log").write_bytes(first + b'{"seq":2,"state":{"id":')  # died mid-write
    keeper = JournalKeeper(tmp_path)  # a restarted keeper
    size = await keeper.append("h-1-000000.log", TurnRecord(3, state, turn(state, "next"), []).encode())
    records = Journal(tmp_path / "h-1-000000.log").read()
    assert [r.seq for r in records] == [1, 3]  # the acknowledged next record is whole, not glued on
    assert size == (tmp_path / "h-1-000000.log").stat().st_size


async def test_a_keeper_refuses_what_is_not_a_journal_append(tmp_path: Path) -> None:
    keeper = JournalKeeper(tmp_path / "j")
    for name in ("../escape.log", "h.txt", ".hidden.log", "other/h.log", "shard-1/../../escape.log",
                 "shard-x/h.log", "/abs/h.log"):
        with pytest.raises(StorageError, match="not a journal file name"):
            await keeper.append(name, b"{}\n")
    with pytest.raises(StorageError, match="whole record"):
        await keeper.append("h-1.log", b'{"seq":1')
    assert not list((tmp_path / "j").iterdir())


async def test_a_keeper_that_cannot_be_reached_fails_the_turn_unacknowledged(tmp_path: Path) -> None:
    class Gone:
        async def append(self, name: str, payload: bytes) -> int:
            await asyncio.sleep(10)
            return 0

    store = MetadataStoreActor(tmp_path / "meta.duckdb", host_journals=tmp_path / "journal")
    host = AgentHost("h", MetadataStoreHandle.local(store), None, llm=FunctionLLM(lambda m, i: send_message("ok")),
                     journal_dir=str(tmp_path / "journal"), keeper=Gone(), store_node="elsewhere")  # type: ignore[arg-type]
    assert host._journals is not None and host._journals.remote
    host._journals.files[0] = ShippedJournal(Gone(), "h-x-000000.log", timeout_s=0.2)
    state = agent().model_copy(update={"tools": ["send_message"]})
    await host.create_agents([state])
    with pytest.raises(StorageError, match="did not confirm"):
        await host.send(state.id, [MessageCreate(content="hello?")])
    assert await store.count_messages(state.id) == 0  # not acknowledged, and not half there
    await store.close()


async def test_a_keeper_keeps_a_shards_journal_in_that_shards_folder(tmp_path: Path) -> None:
    from letta_ray.actors.store_shards import journal_folder

    keeper = JournalKeeper(tmp_path / "journal")
    state = agent()
    await keeper.append("shard-2/h-1-000000.log", TurnRecord(1, state, turn(state, "on shard 2"), []).encode())
    [record] = Journal(journal_folder(tmp_path / "journal", 2) / "h-1-000000.log").read()
    assert record.messages[0].content == "on shard 2"
    assert not list((tmp_path / "journal").glob("*.log"))  # not shard 0's



@pytest.mark.parametrize("fails_in", ["write", "fdatasync"])
def test_a_journal_write_cut_short_by_a_full_disk_leaves_nothing_behind(tmp_path: Path, fails_in: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed turn's bytes must neither glue onto the next record (which would then be
    unreadable and lost) nor sit in a buffer to be written later (a turn reported failed,
    retried by its client, and then there twice)."""
    import errno
    import os

    from letta_ray.actors._journal import read_complete

    state = agent()
    journal = Journal(tmp_path / "host.log")
    journal.append([TurnRecord(1, state, turn(state, "first"), [])])
    real = journal._file

    class FullDisk:  # writes a part of what it is given, then the disk is full
        def fileno(self) -> int:
            return real.fileno()

        def write(self, data: memoryview) -> int:
            if fails_in == "write" and len(data) > 10:
                return real.write(data[:10])
            if fails_in == "write":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real.write(data)

    journal._file = FullDisk()
    if fails_in == "fdatasync":
        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fdatasync", no_space)
    with pytest.raises(OSError, match="No space"):
        journal.append([TurnRecord(2, state, turn(state, "lost"), [])])
    monkeypatch.undo()
    journal._file = real
    journal.append([TurnRecord(3, state, turn(state, "third"), [])])
    records, _ = read_complete(tmp_path / "host.log", 0)
    assert [r.seq for r in records] == [1, 3]
    assert [r.messages[0].content for r in records] == ["first", "third"]
