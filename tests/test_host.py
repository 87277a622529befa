"""AgentHost and the store actors as plain classes: no Ray, real DuckDB and LanceDB."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from letta_ray.actors.archive import ArchiveActor, ArchiveHandle
from letta_ray.actors.directory import Directory
from letta_ray.actors.embedder import EmbedderActor, EmbedderHandle
from letta_ray.actors.host import AgentHost
from letta_ray.actors.metadata_store import MetadataStoreActor, MetadataStoreHandle
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS
from letta_ray.errors import BlockLimitError, NotFoundError
from letta_ray.messages import Message, MessageCreate
from letta_ray.schemas import AgentState, Block, EmbeddingConfig, LLMConfig
from letta_ray.testing import FunctionLLM, last_user_text, send_message, tool_call


def agent_state(name: str = "sam") -> AgentState:
    return AgentState(
        name=name, system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"], tools=DEFAULT_TOOLS["memgpt_v2_agent"],
        blocks=[Block(label="human", value="Name: Ada", limit=100)],
        llm_config=LLMConfig(model="openai/fake"))


def remembering_llm(delay: float = 0.0) -> FunctionLLM:
    """Stores 'remember X' in the human block, answers everything else by echo."""

    async def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        if delay:
            await asyncio.sleep(delay)
        last = messages[-1]
        text = last_user_text(messages)
        if last["role"] == "user" and text.startswith("remember "):
            return tool_call("memory_insert", label="human", new_str=text.removeprefix("remember "),
                             request_heartbeat=True)
        return send_message(f"echo: {text}")

    return FunctionLLM(fn)


@pytest.fixture
async def stores(tmp_path: Path):
    meta = MetadataStoreActor(tmp_path / "meta.duckdb", batch_ms=1.0)
    embedder = EmbedderActor(EmbeddingConfig(embedding_model="hash", embedding_dim=64))
    archive = ArchiveActor(tmp_path / "archive", EmbedderHandle.local(embedder), dim=64)
    yield MetadataStoreHandle.local(meta), ArchiveHandle.local(archive), meta
    await meta.close()


async def test_turns_of_one_agent_run_one_after_another(stores: Any) -> None:
    store, archive, _ = stores
    host = AgentHost("h", store, archive, llm=remembering_llm(delay=0.02))
    state = agent_state()
    await host.create_agents([state])
    replies = await asyncio.gather(*(host.send(state.id, [MessageCreate(content=f"m{i}")]) for i in range(8)))

    assert [r.assistant_text() for r in replies] == [f"echo: m{i}" for i in range(8)]
    stored = await store.list_messages(state.id, limit=100)
    users = [m.content for m in stored if m.role == "user"]
    assert users == [f"m{i}" for i in range(8)]  # none lost, in arrival order
    # each turn saw the previous turns in its context
    assert len((await host.get_state(state.id)).message_ids) == 8 * 3  # user, assistant, tool return


async def test_different_agents_run_concurrently(stores: Any) -> None:
    store, archive, _ = stores
    together = asyncio.Barrier(5)  # opens only once all five turns are inside the LLM at once

    async def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        await together.wait()
        return send_message("done")

    host = AgentHost("h", store, archive, llm=FunctionLLM(fn))
    states = [agent_state(f"a{i}") for i in range(5)]
    await host.create_agents(states)
    turns = asyncio.gather(*(host.send(s.id, [MessageCreate(content="hi")]) for s in states))
    # one after another, the first turn would wait at the barrier for ever
    replies = await asyncio.wait_for(turns, timeout=30)
    assert [r.assistant_text() for r in replies] == ["done"] * 5


async def test_a_fresh_host_rehydrates_an_agent_from_the_stores(stores: Any) -> None:
    store, archive, _ = stores
    first = AgentHost("h1", store, archive, llm=remembering_llm())
    state = agent_state()
    await first.create_agents([state])
    await first.send(state.id, [MessageCreate(content="remember likes tea")])
    await archive.insert(state.id, "Ada visited Porto", ["travel"])

    second = AgentHost("h2", store, archive, llm=remembering_llm())
    loaded = await second.get_state(state.id)
    assert loaded.block("human").value == "Name: Ada\nlikes tea"
    context = await second.context(state.id)
    assert [m.content for m in context if m.role == "user"] == ["remember likes tea"]
    reply = await second.send(state.id, [MessageCreate(content="hello again")])
    assert reply.assistant_text() == "echo: hello again"
    prompt = second.llm.history[-1].messages[0]["content"]  # type: ignore[attr-defined]
    assert "1 passages are in archival memory" in prompt
    assert "likes tea" in prompt


async def test_unknown_agent_and_bad_block_edits_raise_typed_errors(stores: Any) -> None:
    store, archive, _ = stores
    host = AgentHost("h", store, archive, llm=remembering_llm())
    with pytest.raises(NotFoundError):
        await host.send("agent-missing", [MessageCreate(content="hi")])
    state = agent_state()
    await host.create_agents([state])
    with pytest.raises(BlockLimitError, match="over its limit of 100"):
        await host.update_block(state.id, "human", value="x" * 101)
    with pytest.raises(NotFoundError):
        await host.update_block(state.id, "nope", value="x")
    assert (await host.get_state(state.id)).block("human").value == "Name: Ada"
    updated = await host.update_block(state.id, "human", value="Name: Bo")
    assert updated.value == "Name: Bo"
    assert (await store.get_agent(state.id)).block("human").value == "Name: Bo"


async def test_group_commit_batches_concurrent_writes(stores: Any) -> None:
    store, _, _meta = stores
    states = [agent_state(f"g{i}") for i in range(50)]
    await asyncio.gather(*(store.upsert_agent(s) for s in states))
    assert await store.count_agents() == 50
    stats = await store.stats()
    assert stats["writes"] == 50 and stats["batches"] < 50


async def test_one_bad_write_in_a_batch_fails_alone(stores: Any) -> None:
    store, _, _ = stores
    good = [agent_state(f"ok{i}") for i in range(3)]
    results = await asyncio.gather(
        *(store.upsert_agent(s) for s in good),
        store.delete_agent("agent-missing"),  # raises inside the batch
        return_exceptions=True,
    )
    assert isinstance(results[-1], NotFoundError)
    assert results[:3] == [None, None, None]
    assert await store.count_agents() == 3


async def test_agents_are_created_in_bulk_with_their_first_messages(stores: Any) -> None:
    store, archive, _ = stores
    host = AgentHost("h", store, archive, llm=remembering_llm())
    states = [agent_state(f"b{i}") for i in range(3)]
    first = [[Message(agent_id=s.id, role="user", content=f"hello {s.name}")] for s in states]
    states = [s.model_copy(update={"message_ids": [m.id for m in batch]})
              for s, batch in zip(states, first, strict=True)]
    await host.create_agents(states, first)

    fresh = AgentHost("h2", store, archive, llm=remembering_llm())
    assert [m.content for m in await fresh.context(states[2].id)] == ["hello b2"]
    assert await store.count_agents() == 3


async def test_directory_packs_agents_and_replaces_a_dead_host() -> None:
    made: list[str] = []
    dead: set[str] = set()

    class FakeHost:
        def __init__(self, host_id: str) -> None:
            self.host_id = host_id

        async def ping(self) -> str:
            if self.host_id in dead:
                raise RuntimeError("gone")
            return self.host_id

    def make_host(host_id: str) -> FakeHost:
        made.append(host_id)
        return FakeHost(host_id)

    directory = Directory(make_host, placement="packed", agents_per_host=3, max_hosts=2)
    placed = await directory.place([f"a{i}" for i in range(6)])
    assert sorted({h for h, _ in placed}) == ["host-0", "host-1"]
    assert (await directory.describe())["hosts"] == {"host-0": 3, "host-1": 3}
    # full: the next agent opens a third host rather than overfilling
    [(third, _)] = await directory.place(["a6"])
    assert third == "host-2"
    victim = placed[0][0]
    dead.add(victim)
    new_host, _ = await directory.host_failed(victim, "a0")
    assert new_host != victim and victim not in await directory.all_hosts()
    dedicated = Directory(make_host, placement="dedicated")
    hosts = {h for h, _ in await dedicated.place(["x", "y", "z"])}
    assert len(hosts) == 3


async def test_reserved_ids_count_in_their_hosts_load_until_released() -> None:
    class FakeHost:
        async def ping(self) -> str:
            return "up"

    def directory() -> Directory:
        return Directory(lambda host_id: FakeHost(), placement="packed", agents_per_host=4, max_hosts=1)
    kept = directory()
    epoch, placed = await kept.reserve(["r0", "r1", "r2", "r3"])
    assert epoch == kept.epoch and [h for h, _ in placed] == ["host-0"] * 4
    [(host_id, _)] = await kept.place(["a"])
    assert host_id == "host-1"  # host-0 is full of reserved ids

    released = directory()
    await released.reserve(["r0", "r1", "r2", "r3"])
    await released.release(["r1", "r2", "r3", "never-reserved"])
    assert (await released.describe())["hosts"] == {"host-0": 1}
    [(host_id, _)] = await released.place(["a"])
    assert host_id == "host-0"  # room again on the first host


async def test_a_restarted_directory_takes_over_the_live_hosts_and_their_agents() -> None:
    """A directory restarted after a crash starts empty; the hosts of its predecessor still
    hold their agents. It takes them over: an agent stays on its host (never on two), a dead
    host is left out (its agents are placed again), and new hosts get fresh names."""

    class FakeHost:
        def __init__(self, host_id: str, agents: list[str], alive: bool = True) -> None:
            self.host_id, self.agents, self.alive = host_id, agents, alive
            self.epoch: str | None = None

        async def hosted(self, epoch: str | None = None) -> list[str]:
            if not self.alive:
                raise RuntimeError("gone")
            self.epoch = epoch
            return list(self.agents)

        async def ping(self) -> str:
            return self.host_id

        async def info(self) -> dict[str, Any]:
            return {"node_id": None}

    survivors = {"host-0": FakeHost("host-0", ["a", "b"]), "host-3": FakeHost("host-3", ["c"]),
                 "host-4": FakeHost("host-4", ["d"], alive=False)}
    made: list[str] = []

    class Maker:
        def __call__(self, host_id: str) -> FakeHost:
            made.append(host_id)
            return FakeHost(host_id, [])

        def existing(self) -> dict[str, FakeHost]:
            return survivors

    directory = Directory(Maker(), placement="packed", agents_per_host=2, max_hosts=8)
    located = await directory.locate_many(["a", "c", "d"])
    assert [h for h, _ in located[:2]] == ["host-0", "host-3"] and located[0][1] is survivors["host-0"]
    # the hosts taken over learn this directory's epoch: reservations of the old one are refused
    assert survivors["host-0"].epoch == survivors["host-3"].epoch == directory.epoch
    assert located[2][0] not in {"host-4", "host-0"}  # the dead host's agent went elsewhere
    assert made and all(int(h.removeprefix("host-")) > 4 for h in made)
    described = await directory.describe()
    assert described["hosts"]["host-0"] == 2 and "host-4" not in described["hosts"]


async def test_packed_placement_follows_the_clusters_nodes() -> None:
    """Hosts go one per CPU of each live node; a node that leaves takes its hosts off the
    map (their agents are placed again elsewhere); a node that joins gets a host, which new
    agents go to first. A host made for a node that was dying runs elsewhere (the affinity
    is soft): it answers, so it keeps its agents, with its node corrected."""
    nodes = {"head": 1, "worker": 1}
    made: list[tuple[str, str | None]] = []
    runs_on: dict[str, str] = {}  # where each fake host really runs

    class FakeHost:
        def __init__(self, host_id: str) -> None:
            self.host_id = host_id

        async def ping(self) -> str:
            return await self._answer()

        async def info(self) -> dict:
            await self._answer()
            return {"node_id": runs_on[self.host_id]}

        async def _answer(self) -> str:
            if runs_on[self.host_id] not in nodes:
                raise ConnectionError("its node is gone")
            return "ok"

    def make_host(host_id: str, node: str | None = None) -> FakeHost:
        made.append((host_id, node))
        runs_on[host_id] = node if node in nodes else "head"  # soft affinity: a dead node's host lands on the head
        return FakeHost(host_id)

    def slots() -> list[str]:
        return [node for node, cpus in sorted(nodes.items()) for _ in range(cpus)]

    directory = Directory(make_host, agents_per_host=100, slots=slots)
    directory.NODES_CHECK_S = 0.0
    placed = await directory.place([f"a{i}" for i in range(4)])
    assert sorted(node for _, node in made) == ["head", "worker"]
    node_of = dict(made)
    assert sorted(node_of[h] for h, _ in placed) == ["head", "head", "worker", "worker"]

    del nodes["worker"]  # the worker node is lost
    on_worker = next(f"a{i}" for i, (h, _) in enumerate(placed) if node_of[h] == "worker")
    [(host_id, _)] = await directory.locate_many([on_worker])
    assert node_of[host_id] == "head"
    described = await directory.describe()
    assert set(described["host_nodes"].values()) == {"head"} and described["agents"] == 3

    nodes["worker-2"] = 1  # a node joins: the next new agent goes there
    [(fresh, _)] = await directory.place(["new"])
    assert node_of.get(fresh) is None and dict(made)[fresh] == "worker-2"
    assert (await directory.describe())["hosts"][fresh] == 1

    # worker-2 is listed but dying: a host made for it runs on the head, and once worker-2
    # is off the list that host is kept (it answers), its node corrected, its agents with it.
    runs_on[fresh] = "worker-2"
    nodes["worker-3"] = 1
    nodes_before = dict(nodes)
    del nodes["worker-3"]  # gone before its host was made ...
    directory._slots = lambda: [n for n in sorted(nodes_before) for _ in range(nodes_before[n])]  # ... but still listed
    [(made_for_dying, _)] = await directory.place(["late"])
    assert dict(made)[made_for_dying] == "worker-3" and runs_on[made_for_dying] == "head"
    directory._slots = slots
    [(still, _)] = await directory.locate_many(["late"])
    assert still == made_for_dying
    assert (await directory.describe())["host_nodes"][made_for_dying] == "head"


async def test_a_node_whose_host_died_gets_no_new_host_while_ray_still_lists_it() -> None:
    """Ray calls a dead node dead only after a few missed health checks; until then the
    directory must not make hosts there (they could never start): the dead host's agents go
    to the live node's host."""
    made: list[tuple[str, str | None]] = []
    dead_nodes: set[str] = set()

    class FakeHost:
        def __init__(self, node: str | None) -> None:
            self.node = node

        async def ping(self) -> str:
            if self.node in dead_nodes:
                raise ConnectionError("gone")
            return "ok"

        async def info(self) -> dict:
            await self.ping()
            return {"node_id": self.node}

    def make_host(host_id: str, node: str | None = None) -> FakeHost:
        made.append((host_id, node))
        return FakeHost(node)

    directory = Directory(make_host, agents_per_host=100, slots=lambda: ["head", "worker"])
    directory.NODES_CHECK_S = 0.0
    placed = dict(zip(["a0", "a1", "a2", "a3"], [h for h, _ in await directory.place(["a0", "a1", "a2", "a3"])],
                      strict=True))
    node_of = dict(made)
    worker_host = next(h for h, n in node_of.items() if n == "worker")
    victim = next(a for a, h in placed.items() if h == worker_host)
    dead_nodes.add("worker")  # killed, but still listed by the cluster
    new_host, _ = await directory.host_failed(worker_host, victim)
    assert node_of.get(new_host, dict(made)[new_host]) == "head"
    assert [n for _, n in made].count("worker") == 1, made  # no second host made on the dead node


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than:UserWarning")  # LanceDB's, for a tiny age
async def test_the_archive_drops_table_versions_older_than_it_keeps(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write is a LanceDB version; kept for LanceDB's default 7 days they pile up
    (with the memory that tracks them) under steady writes. The archive's optimize drops
    those older than ``KEEP_VERSIONS``."""
    from datetime import timedelta

    embedder = EmbedderActor(EmbeddingConfig(embedding_model="hash", embedding_dim=64))
    archive = ArchiveActor(tmp_path / "archive", EmbedderHandle.local(embedder), dim=64)
    for i in range(12):
        await archive.insert("agent-1", f"passage {i}")
    versions = len(archive.store._table().list_versions())
    assert versions >= 12
    monkeypatch.setattr(ArchiveActor, "KEEP_VERSIONS", timedelta(microseconds=1))
    await archive.optimize()
    assert len(archive.store._table().list_versions()) < versions / 4
    assert len(await archive.search("agent-1", "passage", top_k=20)) == 12  # the data is all there
