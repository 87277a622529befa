"""Archival memory on a real LanceDB in a temp dir, embedded with the hashing embedder."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import lance
import pyarrow as pa
import pytest

import letta_ray.storage.archive as archive_module
from letta_ray.deps import Archive
from letta_ray.embeddings import HashEmbedder
from letta_ray.errors import InvalidInputError, NotFoundError, StorageError
from letta_ray.schemas import Passage
from letta_ray.storage.archive import ArchivalStore, EmbeddedArchive, passage_schema, reciprocal_rank_fusion

DIM = 384
EMBEDDER = HashEmbedder(DIM)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def passage(agent_id: str, text: str, tags: list[str] | None = None, created_at: datetime | None = None) -> Passage:
    [vector] = EMBEDDER.encode([text])
    return Passage(agent_id=agent_id, text=text, tags=tags or [], created_at=created_at or T0, embedding=vector)


def vec(text: str) -> list[float]:
    return EMBEDDER.encode([text])[0]


@pytest.fixture
def store(tmp_path) -> ArchivalStore:
    return ArchivalStore(tmp_path / "archive", DIM)


FACTS = [
    ("The user's favourite food is spicy ramen with extra chili.", ["food"]),
    ("The user has a golden retriever called Biscuit.", ["pets", "family"]),
    ("The user works as a nurse on night shifts at the county hospital.", ["work"]),
    ("The user's sister Marta lives in Lisbon and visits every summer.", ["family"]),
    ("The user is training for the Berlin marathon in September.", ["sport", "goals"]),
]


@pytest.fixture
def filled(store) -> ArchivalStore:
    store.insert(
        [
            passage("agent-a", text, tags, created_at=T0 + timedelta(days=i))
            for i, (text, tags) in enumerate(FACTS)
        ]
    )
    return store


def texts(passages: list[Passage]) -> list[str]:
    return [p.text for p in passages]


# --------------------------------------------------------------------------- layout


def test_schema_is_derived_from_the_passage_model():
    schema = passage_schema(DIM)
    assert schema.names == ["id", "agent_id", "text", "tags", "created_at", "vector"]
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("vector").type == pa.list_(pa.float32(), DIM)


def test_indices_on_agent_id_tags_and_text(filled):
    kinds = {tuple(ix.columns): ix.index_type for ix in filled._table().list_indices()}
    assert kinds == {("agent_id",): "BTree", ("id",): "BTree", ("tags",): "LabelList", ("text",): "FTS"}


def test_reopening_with_another_dim_is_refused(filled):
    with pytest.raises(InvalidInputError, match="384"):
        ArchivalStore(filled.path, 128).count("agent-a")
    assert ArchivalStore(filled.path, DIM).count("agent-a") == len(FACTS)


def test_an_archive_of_an_older_layout_is_refused_clearly(tmp_path):
    import lancedb

    old = pa.schema([("id", pa.string()), ("agent_id", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])
    lancedb.connect(tmp_path / "archive").create_table("passages", schema=old)
    with pytest.raises(StorageError, match="text, tags, created_at"):
        ArchivalStore(tmp_path / "archive", DIM).count("a")


# --------------------------------------------------------------------------- search


def test_vector_search_ranks_the_related_passage_first(filled):
    results = filled.search("agent-a", query_vector=vec("what food does the user like? ramen"), mode="vector")
    assert results[0].text == FACTS[0][0]
    assert results[0].score is not None and results[0].score > results[-1].score
    assert all(p.embedding is None for p in results)


def test_fts_finds_an_exact_rare_word(filled):
    results = filled.search("agent-a", query_text="Biscuit", mode="fts")
    assert texts(results) == [FACTS[1][0]]
    assert results[0].score and results[0].score > 0


def test_fts_query_text_is_never_parsed_as_query_syntax(filled):
    for query in ['"golden retriever', "Lisbon AND NOT", "marathon) OR (", "it's 'Biscuit'"]:
        assert filled.search("agent-a", query_text=query, mode="fts"), query


def test_hybrid_with_tag_filter_any_vs_all(filled):
    query = dict(query_text="Marta sister Lisbon", query_vector=vec("Marta sister Lisbon"), top_k=5)
    any_family = filled.search("agent-a", tags=["family", "sport"], tag_match_mode="any", **query)
    assert texts(any_family)[0] == FACTS[3][0]
    assert set(texts(any_family)) == {FACTS[1][0], FACTS[3][0], FACTS[4][0]}

    all_pets_family = filled.search("agent-a", tags=["family", "pets"], tag_match_mode="all", **query)
    assert texts(all_pets_family) == [FACTS[1][0]]


def test_hybrid_fuses_both_rankings(filled):
    results = filled.search("agent-a", query_text="marathon", query_vector=vec("training for a race"), top_k=5)
    assert results[0].text == FACTS[4][0]  # first by BM25, and near the top by vector
    assert [p.score for p in results] == sorted((p.score for p in results), reverse=True)


def test_date_range_filter(filled):
    results = filled.search(
        "agent-a",
        query_vector=vec("the user"),
        start=T0 + timedelta(days=1),
        end=T0 + timedelta(days=3),
        top_k=10,
    )
    assert set(texts(results)) == {FACTS[1][0], FACTS[2][0], FACTS[3][0]}
    # bounds are inclusive, to the microsecond, and a naive datetime means UTC
    naive_start = (T0 + timedelta(days=4)).replace(tzinfo=None)
    assert texts(filled.search("agent-a", start=naive_start)) == [FACTS[4][0]]
    # years before 1000 too (strftime's %Y writes 209, not 0209, which Lance refuses)
    assert texts(filled.search("agent-a", end=datetime(209, 11, 20, tzinfo=UTC))) == []
    assert len(filled.search("agent-a", start=datetime(9, 1, 1), top_k=10)) == len(FACTS)


def test_no_query_returns_newest_first(filled):
    newest = filled.search("agent-a", top_k=2)
    assert texts(newest) == [FACTS[4][0], FACTS[3][0]]
    assert filled.search("agent-a", query_text="   ", top_k=1)[0].text == FACTS[4][0]


def test_freshly_inserted_rows_are_found_by_fts_before_and_after_optimize(filled):
    filled.optimize()
    assert filled.unindexed_rows() == 0
    filled.insert([passage("agent-a", "The user adopted an axolotl named Quetzal.", ["pets"])])
    assert filled.unindexed_rows() == 1
    assert texts(filled.search("agent-a", query_text="Quetzal", mode="fts")) == [
        "The user adopted an axolotl named Quetzal."
    ]
    # tags live in an index too: the fresh row must pass the tag prefilter
    assert "The user adopted an axolotl named Quetzal." in texts(
        filled.search("agent-a", query_text="axolotl", tags=["pets"], mode="fts")
    )
    filled.optimize()
    assert filled.unindexed_rows() == 0
    assert texts(filled.search("agent-a", query_text="Quetzal", mode="fts")) == [
        "The user adopted an axolotl named Quetzal."
    ]


def test_the_store_optimizes_itself_after_enough_writes(tmp_path):
    store = ArchivalStore(tmp_path / "archive", DIM, optimize_every=3)
    store.insert([passage("a", "one")])
    store.insert([passage("a", "two")])
    assert store.unindexed_rows() == 2
    store.insert([passage("a", "three")])
    assert store.unindexed_rows() == 0
    assert texts(store.search("a", query_text="two", mode="fts")) == ["two"]


def test_inserts_go_on_while_the_store_optimizes(tmp_path, monkeypatch):
    store = ArchivalStore(tmp_path / "archive", DIM, optimize_every=None)
    store.insert([passage("a", f"note {i}") for i in range(20)])
    real_dataset, started, release = archive_module.lance.dataset, threading.Event(), threading.Event()

    def slow_dataset(*args, **kwargs):  # an optimize of a large table: seconds
        started.set()
        assert release.wait(10)
        return real_dataset(*args, **kwargs)

    monkeypatch.setattr(archive_module.lance, "dataset", slow_dataset)
    optimizing = threading.Thread(target=store.optimize)
    optimizing.start()
    assert started.wait(10)
    wrote = threading.Thread(target=lambda: store.insert([passage("a", "written during the optimize")]))
    wrote.start()
    wrote.join(5)
    assert not wrote.is_alive()  # the append did not wait for the optimize
    release.set()
    optimizing.join(10)
    assert store.count("a") == 21 and store.unindexed_rows() <= 1
    assert texts(store.search("a", query_text="during", mode="fts")) == ["written during the optimize"]


def test_an_optimize_touches_only_what_was_written_since_the_last(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "FRAGMENT_ROWS", 50)
    monkeypatch.setattr(archive_module, "COMPACT_AT", 4)
    monkeypatch.setattr(archive_module, "MERGE_DELTAS_AT", 3)
    store = ArchivalStore(tmp_path / "archive", DIM, optimize_every=None)
    store.insert([passage("a", f"old fact {i}") for i in range(60)])  # one fragment of 60 rows: a full one
    store.optimize()
    full_files: set[str] = set()  # the data files of every full fragment seen so far
    deltas_seen = []
    for round_no in range(12):
        for i in range(4):  # four small fragments: the compaction's threshold
            store.insert([passage("b", f"round {round_no} note {i} row {j}") for j in range(3)])
        store.optimize()
        fragments = lance.dataset(store._table().uri).get_fragments()
        files = {f.path for fragment in fragments for f in fragment.data_files()}
        assert full_files <= files  # a full fragment is never rewritten
        full_files |= {f.path for fragment in fragments if fragment.physical_rows >= 50 for f in fragment.data_files()}
        # the small ones are compacted after a merge of the deltas covering them: they stay few
        assert sum(1 for f in fragments if f.physical_rows < 50) <= 4 * 3 + 4
        deltas_seen.append(max(Counter(ix["name"] for ix in lance.dataset(store._table().uri).list_indices()).values()))
        assert store.unindexed_rows() == 0
    assert len(full_files) >= 2  # the old one, and a new full one made of the small
    assert 1 < max(deltas_seen) <= 3 + 2  # deltas made, and merged at the threshold (tiers of a few)
    assert store.count("a") == 60 and store.count("b") == 144
    assert texts(store.search("b", query_text="round 11 note 3 row 2", mode="fts", top_k=1)) == [
        "round 11 note 3 row 2"]
    assert texts(store.search("a", query_vector=vec("old fact 7"), mode="vector", top_k=1)) == ["old fact 7"]


def test_deltas_merge_in_size_tiers():
    assert archive_module.deltas_to_merge([1_000_000] + [2_000] * 6) == 0  # fewer than MERGE_DELTAS_AT
    assert archive_module.deltas_to_merge([1_000_000] + [2_000] * 7) == 7  # the big first one left alone
    assert archive_module.deltas_to_merge([1_000_000, 14_000] + [2_000] * 7) == 8  # a tier as big as the new
    assert archive_module.deltas_to_merge([1_000_000, 50_000] + [2_000] * 7) == 7
    assert archive_module.deltas_to_merge([9, 8, 7, 6, 5, 4, 3, 2]) == 0  # each older delta bigger than the newer


def test_an_optimize_failing_is_a_storage_error(tmp_path, monkeypatch):
    store = ArchivalStore(tmp_path / "archive", DIM, optimize_every=None)
    store.insert([passage("a", "kept")])

    def broken(*args, **kwargs):
        raise OSError("the object store is unreachable")

    monkeypatch.setattr(archive_module.lance, "dataset", broken)
    with pytest.raises(StorageError, match="cannot optimize the archive"):
        store.optimize()
    monkeypatch.undo()
    assert texts(store.search("a", query_text="kept", mode="fts")) == ["kept"]


def test_real_optimizes_beside_appends_lose_nothing(tmp_path):
    store = ArchivalStore(tmp_path / "archive", DIM, optimize_every=None)
    errors: list[BaseException] = []
    done = threading.Event()

    def optimizer() -> None:
        while not done.is_set():
            try:
                store.optimize()
            except BaseException as exc:  # a commit conflict would land here
                errors.append(exc)
                return

    thread = threading.Thread(target=optimizer)
    thread.start()
    for i in range(30):
        store.insert([passage("a", f"batch {i} row {j}") for j in range(5)])
    store.delete_agent("b")  # a delete takes both locks: waits for the optimize under way
    done.set()
    thread.join(30)
    assert errors == []
    store.optimize()
    assert store.count("a") == 150 and store.unindexed_rows() == 0
    assert texts(store.search("a", query_text="batch 29 row 4", mode="fts", top_k=1)) == ["batch 29 row 4"]


def test_search_argument_errors(filled):
    with pytest.raises(InvalidInputError):
        filled.search("agent-a", query_text="x", mode="vector")
    with pytest.raises(InvalidInputError):
        filled.search("agent-a", query_vector=vec("x"), mode="fts")
    with pytest.raises(InvalidInputError):
        filled.search("agent-a", query_vector=[0.1, 0.2])
    with pytest.raises(InvalidInputError):
        filled.search("agent-a", top_k=0)
    with pytest.raises(InvalidInputError):
        filled.search("agent-a", tags=["x"], tag_match_mode="some")  # type: ignore[arg-type]


def test_search_on_an_empty_archive(store):
    assert store.search("nobody", query_text="anything", query_vector=vec("anything")) == []
    assert store.count("nobody") == 0


def test_reciprocal_rank_fusion_prefers_passages_ranked_by_both():
    a, b, c = (Passage(id=i, agent_id="x", text=i) for i in "abc")
    fused = reciprocal_rank_fusion([[a, b, c], [b, c]], top_k=3)
    assert [p.id for p in fused] == ["b", "c", "a"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)


# --------------------------------------------------------------------------- isolation & CRUD


def test_agents_are_isolated(filled):
    filled.insert([passage("agent-b", "Agent B's user keeps a parrot called Biscuit too.")])
    assert texts(filled.search("agent-b", query_text="Biscuit", mode="fts")) == [
        "Agent B's user keeps a parrot called Biscuit too."
    ]
    assert all(p.agent_id == "agent-a" for p in filled.search("agent-a", query_text="Biscuit parrot"))
    assert filled.count("agent-a") == len(FACTS) and filled.count("agent-b") == 1
    assert filled.search("agent-c", query_vector=vec("Biscuit")) == []


def test_get_list_delete_and_count(filled):
    listed = filled.list("agent-a")
    assert texts(listed) == [text for text, _ in FACTS]
    first = filled.get(listed[0].id, with_embedding=True)
    assert first.embedding is not None and len(first.embedding) == DIM
    assert first.created_at == T0 and first.tags == ["food"]

    page = filled.list("agent-a", limit=2, after=listed[1].id)
    assert [p.id for p in page] == [listed[2].id, listed[3].id]
    assert [p.id for p in filled.list("agent-a", limit=2, offset=3)] == [listed[3].id, listed[4].id]
    assert [p.id for p in filled.list("agent-a", limit=2, ascending=False, after=listed[2].id)] == [
        listed[1].id,
        listed[0].id,
    ]

    with pytest.raises(NotFoundError):
        filled.delete(listed[0].id, agent_id="agent-b")  # not agent-b's to delete
    filled.delete(listed[0].id)
    with pytest.raises(NotFoundError):
        filled.get(listed[0].id)
    with pytest.raises(NotFoundError):
        filled.delete(listed[0].id)
    assert filled.count("agent-a") == len(FACTS) - 1
    assert FACTS[0][0] not in texts(filled.search("agent-a", query_text="ramen chili"))

    filled.insert([passage("agent-b", "something of agent b")])
    assert filled.delete_agent("agent-a") == len(FACTS) - 1
    assert filled.count("agent-a") == 0 and filled.count("agent-b") == 1


def test_insert_validates_embeddings(store):
    with pytest.raises(InvalidInputError, match="no embedding"):
        store.insert([Passage(agent_id="a", text="no vector")])
    with pytest.raises(InvalidInputError, match="3-dimensional"):
        store.insert([Passage(agent_id="a", text="short", embedding=[1.0, 0.0, 0.0])])
    with pytest.raises(InvalidInputError, match="finite"):
        store.insert([Passage(agent_id="a", text="nan", embedding=[float("nan")] * DIM)])
    store.insert([])
    assert store.count("a") == 0


def test_quotes_in_agent_ids_and_tags_do_not_break_queries(store):
    nasty = ["o'brien", "x' OR '1'='1", "back\\slash'", 'dq"agent', "semi;colon --"]
    store.insert([passage(agent, f"note for {agent} about kites", tags=[agent, "it's"]) for agent in nasty])
    store.insert([passage("victim", "secret note about kites", tags=["it's"])])
    for agent in nasty:
        assert store.count(agent) == 1
        for mode in ("vector", "fts", "hybrid"):
            found = store.search(
                agent,
                query_text="kites",
                query_vector=vec("kites"),
                tags=[agent, "it's"],
                tag_match_mode="all",
                mode=mode,  # type: ignore[arg-type]
            )
            assert [p.agent_id for p in found] == [agent], (agent, mode)
        assert store.list(agent)[0].tags == [agent, "it's"]
    assert store.delete_agent("x' OR '1'='1") == 1
    assert store.count("victim") == 1


def test_concurrent_inserts_and_searches_from_threads(store):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                store.insert([passage(f"agent-{n}", f"thread {n} note {i} about otters")])
                store.search(f"agent-{n}", query_text="otters", query_vector=vec("otters"))
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [store.count(f"agent-{n}") for n in range(4)] == [5, 5, 5, 5]


# --------------------------------------------------------------------------- Archive protocol


async def test_embedded_archive_implements_the_archive_protocol(tmp_path):
    archive = EmbeddedArchive(ArchivalStore(tmp_path / "archive", DIM), HashEmbedder(DIM))
    assert isinstance(archive, Archive)
    stored = await archive.insert("agent-a", "The user's cat is named Miso.", tags=["pets"])
    assert stored.embedding is None and stored.tags == ["pets"]
    await archive.insert("agent-a", "The user dislikes rainy Mondays.")
    await archive.insert("agent-b", "Agent b's cat is named Miso too.")

    results = await archive.search("agent-a", "what is the cat called", top_k=1)
    assert [p.id for p in results] == [stored.id]
    assert await archive.search("agent-a", "Miso", tags=["nope"]) == []
    assert len(await archive.search("agent-a", None)) == 2
    assert await archive.count("agent-a") == 2


def test_embedded_archive_refuses_a_mismatched_embedder(store):
    with pytest.raises(InvalidInputError):
        EmbeddedArchive(store, HashEmbedder(64))


def test_search_and_count_take_several_owners_or_everyone(filled: ArchivalStore) -> None:
    filled.insert([passage("archive-x", "The team handbook says stand-ups are at nine.", ["work"]),
                   passage("agent-b", "Agent b keeps its own notes about work.", ["work"])])
    assert filled.count(["agent-a", "archive-x"]) == 6 and filled.count([]) == 0
    both = filled.search(["agent-a", "archive-x"], query_text="work handbook", tags=["work"], top_k=5)
    assert {p.agent_id for p in both} == {"agent-a", "archive-x"}
    assert "Agent b keeps its own notes about work." not in texts(both)
    everyone = filled.search(None, query_text="work handbook", tags=["work"], top_k=10)
    assert {p.agent_id for p in everyone} == {"agent-a", "archive-x", "agent-b"}
    assert filled.search([], query_text="work", top_k=5) == []
