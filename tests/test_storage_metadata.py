"""MetadataStore against a real DuckDB file in a temp dir."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from letta_ray.errors import ConflictError, InvalidInputError, NotFoundError
from letta_ray.mcp import MCPServer, MCPToolInfo, StdioServerConfig, tool_of
from letta_ray.messages import Message, StepRecord, ToolCall
from letta_ray.schemas import AgentState, Archive, Block, ChildToolRule, FileMetadata, Folder, LLMConfig, Tool
from letta_ray.storage.metadata import MetadataStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(tmp_path / "meta.duckdb") as s:
        yield s


def make_agent(name: str = "ada", *, tags: list[str] | None = None, blocks: list[Block] | None = None,
               created_at: datetime | None = None) -> AgentState:
    return AgentState(
        name=name,
        system="You are a helpful agent.",
        blocks=blocks if blocks is not None else [Block(label="persona", value="I am " + name)],
        llm_config=LLMConfig(model="openai/gpt-4o-mini"),
        tags=tags or [],
        created_at=created_at or datetime.now(UTC),
    )


def make_messages(agent_id: str, texts: list[str], *, start: datetime = T0) -> list[Message]:
    return [
        Message(agent_id=agent_id, role="user" if i % 2 == 0 else "assistant", content=text,
                created_at=start + timedelta(seconds=i))
        for i, text in enumerate(texts)
    ]


# ---------------------------------------------------------------------- agents


def test_agent_round_trips_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.duckdb"
    agent = make_agent(tags=["a", "b"]).model_copy(update={
        "tools": ["send_message", "conversation_search"],
        "tool_rules": [ChildToolRule(tool_name="conversation_search", children=["send_message"])],
        "metadata": {"k": [1, 2, {"x": None}]},
        "message_ids": ["message-1", "message-2"],
        "summary": "they met",
        "blocks": [Block(label="persona", value="p"), Block(label="human", value="h", read_only=True)],
    })
    with MetadataStore(path) as store:
        store.upsert_agent(agent)
    with MetadataStore(path) as store:
        assert store.get_agent(agent.id) == agent
        assert store.get_agent_by_name("ada") == agent
        assert [b.label for b in store.get_agent(agent.id).blocks] == ["persona", "human"]
        assert store.count_agents() == 1


def test_timestamps_come_back_aware_utc(store: MetadataStore) -> None:
    plus_two = datetime(2025, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    agent = make_agent(created_at=plus_two)
    store.upsert_agent(agent)
    got = store.get_agent(agent.id).created_at
    assert got == plus_two and got.utcoffset() == timedelta(0)


def test_shared_block_edit_is_seen_by_every_attached_agent(store: MetadataStore) -> None:
    shared = Block(label="shared", value="v1")
    a = make_agent("a", blocks=[Block(label="persona", value="a"), shared])
    b = make_agent("b", blocks=[shared])
    store.upsert_agent(a)
    store.upsert_agent(b)
    assert store.agents_of_block(shared.id) == sorted([a.id, b.id])

    store.upsert_block(shared.with_value("v2"))
    assert store.get_agent(a.id).block("shared").value == "v2"  # type: ignore[union-attr]
    assert store.get_agent(b.id).block("shared").value == "v2"  # type: ignore[union-attr]

    # a still holds the v1 copy: writing its state back must not undo the newer edit
    store.upsert_agent(a.model_copy(update={"summary": "later"}))
    assert store.get_agent(b.id).block("shared").value == "v2"  # type: ignore[union-attr]
    assert store.get_agent(a.id).summary == "later"


def test_attach_and_detach_block(store: MetadataStore) -> None:
    agent = make_agent()
    store.upsert_agent(agent)
    extra = Block(label="notes", value="n")
    store.upsert_block(extra)
    store.attach_block(agent.id, extra.id)
    store.attach_block(agent.id, extra.id)  # idempotent
    assert [b.label for b in store.get_agent(agent.id).blocks] == ["persona", "notes"]

    clash = Block(label="notes", value="other")
    store.upsert_block(clash)
    with pytest.raises(ConflictError):
        store.attach_block(agent.id, clash.id)

    store.detach_block(agent.id, extra.id)
    assert [b.label for b in store.get_agent(agent.id).blocks] == ["persona"]
    assert store.get_block(extra.id) == extra  # detaching keeps the block
    assert {b.id for b in store.list_blocks(label="notes")} == {extra.id, clash.id}

    store.attach_block(agent.id, extra.id)
    store.delete_block(extra.id)
    assert [b.label for b in store.get_agent(agent.id).blocks] == ["persona"]


def test_list_agents_filters_by_tags_and_paginates(store: MetadataStore) -> None:
    agents = [
        make_agent(f"agent{i}", tags=tags, created_at=T0 + timedelta(minutes=i))
        for i, tags in enumerate([["x"], ["x", "y"], ["y"], [], ["x", "y", "z"]])
    ]
    for agent in reversed(agents):
        store.upsert_agent(agent)
    ids = [a.id for a in agents]

    assert [a.id for a in store.list_agents()] == ids
    assert [a.id for a in store.list_agents(tags=["x"])] == [ids[0], ids[1], ids[4]]
    assert [a.id for a in store.list_agents(tags=["x", "y"])] == [ids[0], ids[1], ids[2], ids[4]]
    assert [a.id for a in store.list_agents(tags=["x", "y"], match_all_tags=True)] == [ids[1], ids[4]]
    assert [a.id for a in store.list_agents(name="agent2")] == [ids[2]]

    page1 = store.list_agents(limit=2)
    page2 = store.list_agents(limit=2, after=page1[-1].id)
    page3 = store.list_agents(limit=2, after=page2[-1].id)
    assert [a.id for a in page1 + page2 + page3] == ids
    assert [a.id for a in store.list_agents(before=ids[3])] == ids[:3]
    assert [a.id for a in store.list_agents(after=ids[0], before=ids[3])] == ids[1:3]
    assert [a.id for a in store.list_agents(order="desc", limit=2)] == [ids[4], ids[3]]
    assert store.get_agent(ids[1]).blocks[0].value == "I am agent1"


def test_agent_rows_page_searches_and_counts_messages_of_the_page(store: MetadataStore) -> None:
    agents = [make_agent(f"person-{i:02d}", tags=["town"] if i % 3 == 0 else ["farm"],
                         created_at=T0 + timedelta(minutes=i)) for i in range(12)]
    store.create_agents(agents)
    store.messages.append_messages(make_messages(agents[11].id, ["hi", "hello", "bye"]))
    store.messages.append_messages(make_messages(agents[10].id, ["one"], start=T0 + timedelta(hours=1)))

    total, rows = store.agent_rows(limit=5)
    assert total == 12
    assert [r["name"] for r in rows] == ["person-11", "person-10", "person-09", "person-08", "person-07"]
    assert [r["message_count"] for r in rows] == [3, 1, 0, 0, 0]
    assert rows[0]["last_active"] == T0 + timedelta(seconds=2)
    assert rows[1]["last_active"] == T0 + timedelta(hours=1)
    assert rows[2]["last_active"] is None
    assert rows[0]["model"] == "openai/gpt-4o-mini"
    assert rows[0]["tags"] == ["farm"]

    total, rows = store.agent_rows(limit=5, offset=10)
    assert (total, [r["name"] for r in rows]) == (12, ["person-01", "person-00"])

    total, rows = store.agent_rows(query="TOWN", limit=50)  # a tag, any case
    assert total == 4 and {r["name"] for r in rows} == {"person-00", "person-03", "person-06", "person-09"}
    total, rows = store.agent_rows(query="on-0", limit=50)  # part of a name (ids hold no "on")
    assert total == 10
    total, rows = store.agent_rows(query="50%_", limit=50)  # LIKE's wildcards are literal
    assert (total, rows) == (0, [])
    with pytest.raises(InvalidInputError):
        store.agent_rows(offset=-1)


def test_delete_agent_removes_messages_and_unshared_blocks(store: MetadataStore) -> None:
    shared = Block(label="shared", value="s")
    own = Block(label="own", value="o")
    a = make_agent("a", blocks=[own, shared])
    b = make_agent("b", blocks=[shared])
    store.upsert_agent(a)
    store.upsert_agent(b)
    store.messages.append_messages(make_messages(a.id, ["hi", "hello"]))
    store.messages.append_messages(make_messages(b.id, ["yo"]))

    store.delete_agent(a.id)

    with pytest.raises(NotFoundError):
        store.get_agent(a.id)
    assert store.messages.count_messages(a.id) == 0
    assert store.messages.count_messages(b.id) == 1
    with pytest.raises(NotFoundError):
        store.get_block(own.id)
    assert store.get_block(shared.id) == shared
    assert store.agents_of_block(shared.id) == [b.id]
    assert store.get_agent(b.id).blocks == [shared]


def test_upsert_agent_rewrites_changed_attachments_and_refuses_a_label_clash(store: MetadataStore) -> None:
    persona, human, notes = Block(label="persona", value="p"), Block(label="human", value="h"), Block(
        label="notes", value="n")
    agent = make_agent(blocks=[persona, human])
    store.upsert_agent(agent)
    agent = agent.model_copy(update={"blocks": [notes, persona]})
    store.upsert_agent(agent)
    assert [b.label for b in store.get_agent(agent.id).blocks] == ["notes", "persona"]
    assert store.agents_of_block(human.id) == []

    other = make_agent("other", blocks=[Block(label="human", value="x"), notes])
    store.upsert_agent(other)
    renamed = notes.updated(label="persona")  # fine for `other`, a clash for `agent`
    with pytest.raises(ConflictError):
        store.upsert_agent(other.model_copy(update={"blocks": [other.blocks[0], renamed]}))
    assert store.get_block(notes.id) == notes


def test_create_agents_round_trips_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.duckdb"
    shared = Block(label="shared", value="s")
    with MetadataStore(path) as store:
        elder = make_agent("elder", blocks=[shared], created_at=T0)
        store.upsert_agent(elder)
        agents = [
            make_agent(f"agent{i}", tags=[f"t{i % 3}"], created_at=T0 + timedelta(minutes=i),
                       blocks=[Block(label="persona", value=f"p{i}"), shared])
            for i in range(1, 40)
        ]
        store.create_agents(agents)
    with MetadataStore(path) as store:
        assert store.count_agents() == 40
        assert [store.get_agent(a.id) for a in agents] == agents
        assert store.list_agents(limit=None) == [elder, *agents]
        assert len(store.agents_of_block(shared.id)) == 40
        assert len(store.list_blocks(limit=None)) == 40  # 39 personas and the shared block, stored once


def test_create_agents_with_a_taken_id_writes_nothing(store: MetadataStore) -> None:
    taken = make_agent("taken")
    store.create_agents([taken])
    fresh = [make_agent(f"new{i}") for i in range(20)]
    for batch in ([*fresh, taken], [*fresh, fresh[0]], [fresh[0], taken]):
        with pytest.raises(ConflictError):
            store.create_agents(batch)
    assert store.count_agents() == 1
    assert [b.id for b in store.list_blocks(limit=None)] == [taken.blocks[0].id]
    with pytest.raises(NotFoundError):
        store.get_agent(fresh[0].id)


def test_commit_turn_persists_messages_state_and_edited_blocks(store: MetadataStore) -> None:
    shared = Block(label="shared", value="v1")
    a = make_agent("a", blocks=[Block(label="persona", value="p"), shared])
    b = make_agent("b", blocks=[shared])
    store.create_agents([a, b])

    persona = a.blocks[0].with_value("p2")
    turn = make_messages(a.id, ["hi", "hello", "ok"])
    a = a.replace_block(persona).model_copy(update={"message_ids": [m.id for m in turn], "summary": "s1"})
    store.commit_turn(a, turn, [persona])
    assert store.get_agent(a.id) == a
    assert store.messages.list_messages(a.id) == turn

    # a edits its copy of the shared block, but b's newer edit lands first: b's edit stays
    stale = shared.with_value("a's edit")
    newer = shared.model_copy(update={"value": "b's edit", "updated_at": stale.updated_at + timedelta(seconds=1)})
    store.upsert_block(newer)
    a = a.replace_block(stale).model_copy(update={"summary": "s2"})
    store.commit_turn(a, make_messages(a.id, ["more"]), [stale])
    assert store.get_block(shared.id) == newer
    got = store.get_agent(a.id)
    assert got.summary == "s2" and got.block("shared") == newer and got.block("persona") == persona
    assert [x.label for x in got.blocks] == ["persona", "shared"]
    assert store.messages.count_messages(a.id) == 4


def test_commit_turn_of_an_unknown_agent_is_not_found(store: MetadataStore) -> None:
    ghost = make_agent("ghost")
    with pytest.raises(NotFoundError):
        store.commit_turn(ghost, make_messages(ghost.id, ["boo"]))
    assert store.messages.count_messages(ghost.id) == 0


def test_commit_turns_applies_a_batch_like_commit_turn_one_by_one(store: MetadataStore) -> None:
    agents = [make_agent(f"agent{i}", blocks=[Block(label="persona", value=f"p{i}")]) for i in range(12)]
    ghost = make_agent("ghost")
    store.create_agents(agents)
    turns, expected = [], {}
    for i, agent in enumerate(agents):
        messages = make_messages(agent.id, [f"hi {i}", f"hello {i}"])
        edited = [agent.blocks[0].with_value(f"edited {i}")] if i % 3 == 0 else []
        state = agent.model_copy(update={"message_ids": [m.id for m in messages], "summary": f"s{i}"})
        for block in edited:
            state = state.replace_block(block)
        turns.append((state, messages, edited))
        expected[agent.id] = state
    # A second turn of agent 0 in the same batch: its state wins, both turns' messages stay.
    later = make_messages(agents[0].id, ["again"], start=T0 + timedelta(minutes=5))
    second = expected[agents[0].id].model_copy(update={"summary": "second"})
    turns.append((second, later, []))
    expected[agents[0].id] = second
    turns.append((ghost, make_messages(ghost.id, ["boo"]), []))  # deleted meanwhile: skipped

    assert store.commit_turns(turns) == [ghost.id]
    for agent in agents:
        assert store.get_agent(agent.id) == expected[agent.id]
    assert store.messages.count_messages(agents[0].id) == 3 and store.messages.count_messages(agents[5].id) == 2
    assert store.get_agent(agents[3].id).block("persona").value == "edited 3"
    assert store.get_agent(agents[4].id).block("persona").value == "p4"
    assert store.messages.count_messages(ghost.id) == 0
    # a batch small enough for the VALUES insert (not Arrow) finds its ghost the same way
    small = expected[agents[1].id].model_copy(update={"summary": "small"})
    assert store.commit_turns([(small, make_messages(agents[1].id, ["small"]), []),
                               (ghost, make_messages(ghost.id, ["boo"]), [])]) == [ghost.id]
    assert store.get_agent(agents[1].id) == small and store.messages.count_messages(agents[1].id) == 3
    assert store.messages.count_messages(ghost.id) == 0
    stray = Block(label="other", value="x")
    with pytest.raises(InvalidInputError, match="not attached"):
        store.commit_turns([(agents[1], [], [stray])])


def test_1000_agents_are_created_in_one_call_with_their_blocks(store: MetadataStore) -> None:
    """(How fast: bench/store.py.)"""
    agents = [make_agent(f"agent{i}", blocks=[Block(label="persona", value="p"), Block(label="human", value=f"h{i}")])
              for i in range(1_000)]
    store.create_agents(agents)
    assert store.count_agents() == 1_000
    assert store.get_agent(agents[777].id).block("human").value == "h777"


def test_missing_pandas_fails_fast_but_probes_still_answer_none() -> None:
    if "pandas" in sys.modules or importlib.util.find_spec("pandas") is not None:
        pytest.skip("pandas is installed")
    with pytest.raises(ModuleNotFoundError):
        import pandas  # noqa: F401
    assert "pandas" not in sys.modules  # lancedb and scikit-learn take an entry here for pandas


def test_unknown_ids_raise_not_found(store: MetadataStore) -> None:
    for call in (
        lambda: store.get_agent("agent-nope"),
        lambda: store.get_agent_by_name("nobody"),
        lambda: store.delete_agent("agent-nope"),
        lambda: store.get_block("block-nope"),
        lambda: store.attach_block("agent-nope", "block-nope"),
        lambda: store.get_tool("tool-nope"),
        lambda: store.get_tool_by_name("nope"),
        lambda: store.get_group("group-nope"),
        lambda: store.runs.get_run("run-nope"),
        lambda: store.messages.get_messages(["message-nope"]),
        lambda: store.messages.list_messages("agent-x", after="message-nope"),
        lambda: store.list_agents(after="agent-nope"),
    ):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(NotFoundError) as info:
        store.get_agent("agent-nope")
    assert (info.value.kind, info.value.key) == ("agent", "agent-nope")


# ---------------------------------------------------------------------- messages


def test_messages_paginate_before_after_desc(store: MetadataStore) -> None:
    msgs = make_messages("agent-1", [f"m{i}" for i in range(10)])
    store.messages.append_messages(msgs[:4])
    store.messages.append_messages(msgs[4:])
    store.messages.append_messages(make_messages("agent-2", ["other"]))
    ids = [m.id for m in msgs]

    assert store.messages.list_messages("agent-1", limit=None) == msgs
    assert store.messages.count_messages("agent-1") == 10
    assert [m.id for m in store.messages.list_messages("agent-1", limit=3)] == ids[:3]
    assert [m.id for m in store.messages.list_messages("agent-1", limit=3, after=ids[2])] == ids[3:6]
    assert [m.id for m in store.messages.list_messages("agent-1", limit=3, order="desc")] == ids[:-4:-1]
    assert [m.id for m in store.messages.list_messages("agent-1", limit=3, order="desc", before=ids[5])] == [
        ids[4], ids[3], ids[2]
    ]
    assert [m.id for m in store.messages.list_messages("agent-1", after=ids[1], before=ids[4])] == ids[2:4]
    assert [m.id for m in store.messages.get_messages([ids[7], ids[1], ids[3]])] == [ids[7], ids[1], ids[3]]


def test_same_timestamp_keeps_insertion_order(store: MetadataStore) -> None:
    msgs = [Message(agent_id="agent-1", role="user", content=str(i), created_at=T0) for i in range(5)]
    store.messages.append_messages(msgs[:2])
    store.messages.append_messages(msgs[2:])
    assert store.messages.list_messages("agent-1") == msgs
    assert [m.id for m in store.messages.list_messages("agent-1", after=msgs[1].id)] == [m.id for m in msgs[2:]]


def test_duplicate_message_id_is_a_conflict(store: MetadataStore) -> None:
    msgs = make_messages("agent-1", ["a", "b"])
    store.messages.append_messages(msgs)
    with pytest.raises(ConflictError):
        store.messages.append_messages([*make_messages("agent-1", ["c"]), msgs[0]])
    assert store.messages.count_messages("agent-1") == 2  # the failed batch left nothing behind


def test_roles_and_dates_filter(store: MetadataStore) -> None:
    msgs = make_messages("agent-1", [f"apple {i}" for i in range(10)])
    store.messages.append_messages(msgs)

    users = store.messages.list_messages("agent-1", roles=["user"])
    assert [m.id for m in users] == [m.id for m in msgs[::2]]
    window = store.messages.list_messages("agent-1", start=T0 + timedelta(seconds=3), end=T0 + timedelta(seconds=5))
    assert [m.id for m in window] == [m.id for m in msgs[3:6]]

    for _ in range(2):  # once scanning the tail, once through the index
        found = store.messages.search_messages("agent-1", "apple", roles=["assistant"],
                                      start=T0 + timedelta(seconds=4), end=T0 + timedelta(seconds=8))
        assert {m.id for m in found} == {msgs[5].id, msgs[7].id}
        store.messages.rebuild_search_index()


def test_search_finds_a_word_from_500_messages_ago(tmp_path: Path) -> None:
    path = tmp_path / "meta.duckdb"
    texts = [f"filler message number {i} about the weather" for i in range(600)]
    texts[100] = "My cat is called Zanzibar and she likes tuna"  # 500 messages before the end
    texts[550] = "We booked the Quetzalcoatl tour for friday"
    msgs = make_messages("agent-1", texts)
    with MetadataStore(path, fts_rebuild_threshold=250) as store:
        for i in range(0, 400, 100):
            store.messages.append_messages(msgs[i : i + 100])
        store.messages.append_messages(make_messages("agent-2", ["Zanzibar is an island"]))
        assert store.messages.search_index_watermark == 0

        # the tail is over the threshold, so this search rebuilds the index first
        hits = store.messages.search_messages("agent-1", "zanzibar")
        assert [m.id for m in hits] == [msgs[100].id]
        indexed = store.messages.search_index_watermark
        assert indexed == 401

        for i in range(400, 600, 100):
            store.messages.append_messages(msgs[i : i + 100])
        hits = store.messages.search_messages("agent-1", "ZANZIBAR tour quetzalcoatl")
        assert store.messages.search_index_watermark == indexed  # 200 new rows: under the threshold
        assert [m.id for m in hits] == [msgs[100].id, msgs[550].id]  # indexed first, then tail

        # stemming comes from the index: "cats" finds "cat"
        assert [m.id for m in store.messages.search_messages("agent-1", "cats")] == [msgs[100].id]

    with MetadataStore(path, fts_rebuild_threshold=250) as store:  # the index survives reopening
        assert store.messages.search_index_watermark == indexed
        assert [m.id for m in store.messages.search_messages("agent-1", "zanzibar")] == [msgs[100].id]
        store.messages.rebuild_search_index()
        assert store.messages.search_index_watermark == 601
        assert [m.id for m in store.messages.search_messages("agent-1", "quetzalcoatl")] == [msgs[550].id]


def test_search_covers_tool_call_arguments_and_empty_query(store: MetadataStore) -> None:
    call = ToolCall(name="send_message", arguments='{"message": "Meet at the lighthouse"}')
    msgs = [
        *make_messages("agent-1", ["hello", "how are you"]),
        Message(agent_id="agent-1", role="assistant", tool_calls=[call], created_at=T0 + timedelta(minutes=1)),
        Message(agent_id="agent-1", role="tool", name="send_message", tool_call_id=call.id,
                content='{"status": "OK", "message": "None", "time": "now"}',
                created_at=T0 + timedelta(minutes=2)),
    ]
    store.messages.append_messages(msgs)
    for _ in range(2):  # once scanning the tail, once through the index
        assert [m.id for m in store.messages.search_messages("agent-1", "lighthouse")] == [msgs[2].id]
        assert store.messages.search_messages("agent-1", "status") == []  # JSON keys are not text
        store.messages.rebuild_search_index()
    assert [m.id for m in store.messages.search_messages("agent-1", None, limit=2)] == [msgs[3].id, msgs[2].id]
    assert [m.id for m in store.messages.search_messages("agent-1", "", roles=["user"])] == [msgs[0].id]


def test_a_bulk_insert_of_10k_messages_keeps_their_order(store: MetadataStore) -> None:
    """(How fast: bench/store.py.)"""
    msgs = make_messages("agent-1", [f"message {i} with some words in it" for i in range(10_000)])
    store.messages.append_messages(msgs)
    assert store.messages.count_messages("agent-1") == 10_000
    assert [m.id for m in store.messages.list_messages("agent-1", limit=None)] == [m.id for m in msgs]


def test_concurrent_appends_from_threads(store: MetadataStore) -> None:
    def worker(n: int) -> None:
        for k in range(10):
            store.messages.append_messages(make_messages(f"agent-{n}", [f"{n}-{k}-{j}" for j in range(20)]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [store.messages.count_messages(f"agent-{n}") for n in range(4)] == [200] * 4


def test_transaction_commits_together_or_not_at_all(store: MetadataStore) -> None:
    agent = make_agent()
    with pytest.raises(RuntimeError), store.transaction():
        store.upsert_agent(agent)
        store.messages.append_messages(make_messages(agent.id, ["x"]))
        raise RuntimeError("boom")
    assert store.count_agents() == 0 and store.messages.count_messages(agent.id) == 0

    with store.transaction():
        store.upsert_agent(agent)
        store.messages.append_messages(make_messages(agent.id, ["x"]))
    assert store.count_agents() == 1 and store.messages.count_messages(agent.id) == 1


# ---------------------------------------------------------------------- tools, groups, runs


def test_tools_are_unique_by_name(store: MetadataStore) -> None:
    schema = {"name": "roll", "parameters": {"type": "object", "properties": {}}}
    first = store.upsert_tool(Tool(name="roll", description="v1", json_schema=schema))
    second = store.upsert_tool(Tool(name="roll", description="v2", json_schema=schema))
    assert second.id == first.id
    assert store.get_tool_by_name("roll").description == "v2"
    assert store.get_tool(first.id) == second

    other = store.upsert_tool(Tool(name="flip", json_schema=schema))
    with pytest.raises(ConflictError):
        store.upsert_tool(other.model_copy(update={"name": "roll"}))
    assert [t.name for t in store.list_tools()] == ["flip", "roll"]
    assert [t.name for t in store.list_tools(after=other.id)] == ["roll"]
    store.delete_tool(other.id)
    assert [t.name for t in store.list_tools()] == ["roll"]


def test_groups_and_runs_as_docs(store: MetadataStore) -> None:
    store.upsert_group("group-1", {"manager_type": "round_robin", "agent_ids": ["a", "b"]})
    store.upsert_group("group-1", {"manager_type": "round_robin", "agent_ids": ["a"]})
    assert store.get_group("group-1") == {"manager_type": "round_robin", "agent_ids": ["a"], "id": "group-1"}
    assert [g["id"] for g in store.list_groups()] == ["group-1"]
    store.delete_group("group-1")
    assert store.list_groups() == []

    store.runs.upsert_run("run-1", {"agent_id": "a", "status": "running", "created_at": T0})
    store.runs.upsert_run("run-2", {"agent_id": "a", "status": "completed", "created_at": T0 + timedelta(1)})
    store.runs.upsert_run("run-3", {"agent_id": "b", "status": "running"})
    store.runs.upsert_run("run-1", {"agent_id": "a", "status": "completed"})  # keeps its created_at
    assert [r["id"] for r in store.runs.list_runs(["a"])] == ["run-2", "run-1"]
    assert [r["id"] for r in store.runs.list_runs(["a"], order="asc")] == ["run-1", "run-2"]
    assert [r["id"] for r in store.runs.list_runs(["a"], before="run-2")] == ["run-1"]
    assert store.runs.get_run("run-1")["status"] == "completed"
    assert datetime.fromisoformat(store.runs.get_run("run-1")["created_at"]) == T0
    assert [r["id"] for r in store.runs.list_runs(statuses=["running"])] == ["run-3"]
    store.runs.delete_run("run-3")
    with pytest.raises(NotFoundError):
        store.runs.get_run("run-3")


def _step(agent: AgentState, run_id: str, n: int, **fields: Any) -> StepRecord:
    return StepRecord(id=f"step-{run_id}-{n}", agent_id=agent.id, run_id=run_id, model="openai/gpt-4o-mini",
                      created_at=T0 + timedelta(seconds=n), step_start_ns=n, tags=list(agent.tags), **fields)


def test_a_turns_run_and_steps_commit_with_it_and_merge_into_a_background_runs_doc(store: MetadataStore) -> None:
    a, b, ghost = make_agent("a", tags=["blue"]), make_agent("b"), make_agent("ghost")
    store.create_agents([a, b])
    # A background run the HTTP layer wrote before its turn ran:
    store.runs.upsert_run("run-bg", {"agent_id": a.id, "status": "running", "background": True, "created_at": T0,
                                     "request_config": {"x": 1}})
    turns = [(a, make_messages(a.id, ["hi"]), []), (b, make_messages(b.id, ["yo"]), []),
             (ghost, make_messages(ghost.id, ["boo"]), [])]
    runs = [{"id": "run-bg", "agent_id": a.id, "status": "completed", "stop_reason": "end_turn",
             "created_at": (T0 + timedelta(minutes=1)).isoformat()},
            {"id": "run-b", "agent_id": b.id, "status": "cancelled", "stop_reason": "cancelled",
             "created_at": T0.isoformat()},
            {"id": "run-g", "agent_id": ghost.id, "status": "completed", "created_at": T0.isoformat()}]
    steps = [_step(a, "run-bg", 1, prompt_tokens=10), _step(a, "run-bg", 2, stop_reason="end_turn"),
             _step(b, "run-b", 3, status="cancelled"), _step(ghost, "run-g", 4)]

    assert store.commit_turns(turns, runs=runs, steps=steps) == [ghost.id]

    bg = store.runs.get_run("run-bg")
    assert bg["status"] == "completed" and bg["stop_reason"] == "end_turn"
    assert bg["background"] is True and bg["request_config"] == {"x": 1}  # the HTTP layer's fields stay
    assert datetime.fromisoformat(bg["created_at"]) == T0  # and so does its start
    with pytest.raises(NotFoundError):
        store.runs.get_run("run-g")  # the deleted agent's run went with its turn
    assert [s.id for s in store.runs.list_steps(run_id="run-bg", order="asc")] == ["step-run-bg-1", "step-run-bg-2"]
    assert [s.id for s in store.runs.list_steps()] == ["step-run-b-3", "step-run-bg-2", "step-run-bg-1"]
    assert [s.id for s in store.runs.list_steps(before="step-run-b-3", limit=1)] == ["step-run-bg-2"]
    assert [s.id for s in store.runs.list_steps(tags=["blue"])] == ["step-run-bg-2", "step-run-bg-1"]
    assert [s.id for s in store.runs.list_steps(start=T0 + timedelta(seconds=2), end=T0 + timedelta(seconds=3))] \
        == ["step-run-b-3", "step-run-bg-2"]
    assert store.runs.get_step("step-run-bg-1").prompt_tokens == 10
    assert [r["id"] for r in store.runs.list_runs(background=False)] == ["run-b"]
    assert [r["id"] for r in store.runs.list_runs(stop_reason="cancelled")] == ["run-b"]
    assert [r["id"] for r in store.runs.list_runs([a.id, b.id], stop_reason="cancelled")] == ["run-b"]

    rated = store.runs.set_step_feedback("step-run-bg-1", "positive", ["good"])
    assert rated.feedback == "positive" and store.runs.get_step("step-run-bg-1").tags == ["good"]
    assert [s.id for s in store.runs.list_steps(has_feedback=True)] == ["step-run-bg-1"]
    with pytest.raises(InvalidInputError, match="feedback"):
        store.runs.set_step_feedback("step-run-bg-1", "meh")

    store.runs.delete_run("run-bg")
    assert store.runs.list_steps(run_id="run-bg") == []
    assert store.messages.count_messages(a.id) == 1  # the history stays
    store.delete_agent(b.id)
    assert store.runs.list_runs([b.id]) == [] and store.runs.list_steps(agent_id=b.id) == []


# ---------------------------------------------------------------------- export


def test_export_parquet_writes_readable_files(store: MetadataStore, tmp_path: Path) -> None:
    agent = make_agent()
    store.upsert_agent(agent)
    store.messages.append_messages(make_messages(agent.id, ["a", "b", "c"]))
    store.upsert_tool(Tool(name="roll", json_schema={"name": "roll"}))
    store.runs.upsert_run("run-1", {"agent_id": agent.id, "status": "completed"})
    store.upsert_mcp_server(MCPServer(server_name="files", config=StdioServerConfig(command="serve-files")))

    paths = store.export_parquet(tmp_path / "export")

    counts = {name: pq.read_table(path).num_rows for name, path in paths.items()}
    assert counts == {"agents": 1, "blocks": 1, "agent_blocks": 1, "messages": 3, "tools": 1,
                      "mcp_servers": 1, "groups": 0, "runs": 1, "steps": 0, "archives": 0, "folders": 0,
                      "files": 0, "identities": 0, "conversations": 0}
    messages = pq.read_table(paths["messages"])
    assert messages.column("agent_id").to_pylist() == [agent.id] * 3
    doc = messages.column("doc").to_pylist()[0]
    assert Message.model_validate_json(doc).content == "a"


def test_an_mcp_servers_tools_sync_in_one_go_and_go_with_it(store: MetadataStore) -> None:
    server = store.upsert_mcp_server(MCPServer(server_name="files", config=StdioServerConfig(command="x")))
    with pytest.raises(ConflictError, match="exists already"):
        store.upsert_mcp_server(MCPServer(server_name="files", config=StdioServerConfig(command="y")))
    store.upsert_tool(Tool(name="mine", json_schema={"name": "mine"}))

    def info(name: str, description: str = "d") -> Any:
        return tool_of(server, MCPToolInfo(name=name, description=description))

    assert store.sync_mcp_tools(server.id, [info("read"), info("list"), info("mine")]) == {
        "added": ["read", "list"], "updated": [], "deleted": [], "skipped": ["mine"]}
    read_id = store.get_tool_by_name("read").id
    assert store.sync_mcp_tools(server.id, [info("read", "new words")]) == {
        "added": [], "updated": ["read"], "deleted": ["list"], "skipped": []}
    assert store.get_tool_by_name("read").id == read_id  # updated in place
    assert store.get_tool_by_name("read").description == "new words"
    assert [t.name for t in store.mcp_server_tools(server.id)] == ["read"]
    assert store.delete_mcp_server(server.id) == ["read"]
    assert [t.name for t in store.list_tools(limit=None)] == ["mine"]  # the custom tool stays
    with pytest.raises(NotFoundError):
        store.get_mcp_server(server.id)


def test_archives_are_stored_listed_and_found_by_their_agents(store: MetadataStore) -> None:
    first = store.upsert_archive(Archive(name="handbook", created_at=T0))
    second = store.upsert_archive(Archive(name="faq", description="answers", created_at=T0 + timedelta(1)))
    a = make_agent("a").model_copy(update={"archive_ids": [first.id]})
    b = make_agent("b").model_copy(update={"archive_ids": [first.id, second.id]})
    store.create_agents([a, b, make_agent("c")])

    assert store.get_archive(second.id).description == "answers"
    assert [x.id for x in store.list_archives()] == [first.id, second.id]
    assert [x.id for x in store.list_archives(order="desc", before=second.id)] == [first.id]
    assert [x.id for x in store.list_archives(name="faq")] == [second.id]
    assert [x.id for x in store.list_archives(ids=b.archive_ids)] == [first.id, second.id]
    assert store.agents_with_archive(first.id) == sorted([a.id, b.id])
    assert store.agents_with_archive(second.id) == [b.id]
    store.delete_archive(second.id)
    with pytest.raises(NotFoundError):
        store.get_archive(second.id)


def test_folders_and_files_keep_text_apart_from_metadata(store: MetadataStore) -> None:
    folder = store.upsert_folder(Folder(name="docs", created_at=T0))
    file = store.upsert_file(FileMetadata(folder_id=folder.id, file_name="a.txt", original_file_name="a.txt",
                                          file_type="text/plain", created_at=T0))
    later = store.upsert_file(FileMetadata(folder_id=folder.id, file_name="b.txt", original_file_name="b.txt",
                                           file_type="text/plain", created_at=T0 + timedelta(1)))
    store.set_file_content(file.id, "hello\nworld")
    store.upsert_file(file.model_copy(update={"processing_status": "completed"}))  # the text stays
    assert store.get_file_content(file.id) == "hello\nworld" and store.get_file_content(later.id) == ""
    assert store.get_file(file.id).processing_status == "completed"
    assert [f.id for f in store.list_files(folder.id, order="desc")] == [later.id, file.id]
    assert [f.id for f in store.list_files(folder.id, after=file.id)] == [later.id]
    with pytest.raises(NotFoundError):
        store.upsert_file(file.model_copy(update={"id": "file-x", "folder_id": "source-missing"}))
    agent = make_agent().model_copy(update={"folder_ids": [folder.id]})
    store.create_agents([agent])
    assert store.agents_with_folder(folder.id) == [agent.id]
    assert [f.name for f in store.list_folders(name="docs")] == ["docs"]
    store.delete_file(later.id)
    store.delete_folder(folder.id)
    with pytest.raises(NotFoundError):
        store.get_file(file.id)
