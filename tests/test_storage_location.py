"""Storage URIs, and snapshots of the metadata store with restore (to a local location here;
the object-store path is tested against an S3 server on loopback in test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from letta_ray.errors import ConflictError, InvalidInputError, StorageError
from letta_ray.messages import Message
from letta_ray.schemas import AgentState, Block, LLMConfig
from letta_ray.settings import Settings
from letta_ray.storage.metadata import MetadataStore
from letta_ray.storage.object_store import StorageLocation
from letta_ray.storage.snapshots import LATEST, Snapshots, restore_latest, take_snapshot


def test_a_storage_uri_names_an_object_store_or_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = StorageLocation("s3://bucket/some/prefix/")
    assert s3.remote and s3.child("archive") == "s3://bucket/some/prefix/archive"
    local = StorageLocation(str(tmp_path))
    assert not local.remote and local.child("archive") == str(tmp_path / "archive")
    assert StorageLocation(f"file://{tmp_path}").child("x") == str(tmp_path / "x")
    with pytest.raises(InvalidInputError, match="scheme must be one of"):
        StorageLocation("ftp://host/x")
    with pytest.raises(InvalidInputError, match="names no bucket"):
        StorageLocation("s3:///prefix")

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    options = StorageLocation("s3://b/p", {"timeout": "5s"}).lance_options()
    assert options["aws_endpoint"] == "http://127.0.0.1:9000" and options["allow_http"] == "true"
    assert options["aws_region"] == "eu-west-1"
    assert options["timeout"] == "5s"  # ours win over the defaults
    assert StorageLocation(str(tmp_path)).lance_options() == {}  # a folder needs none


def test_settings_put_the_archive_in_the_object_store_when_one_is_set(tmp_path: Path) -> None:
    plain = Settings(home=tmp_path)
    assert plain.archive_uri == str(tmp_path / "archive") and not plain.location.remote
    remote = Settings(home=tmp_path, storage="s3://bucket/letta")
    assert remote.archive_uri == "s3://bucket/letta/archive" and remote.location.remote
    assert remote.meta_path == tmp_path / "meta.duckdb"  # the metadata stays on the head's disk
    assert Settings(home=tmp_path).keeper_count() == 0  # embedded: one node, no keepers
    assert Settings(home=tmp_path, ray_address="auto").keeper_count() == 2
    assert Settings(home=tmp_path, ray_address="auto", journal_keepers=5).keeper_count() == 5


def filled_store(path: Path) -> tuple[MetadataStore, AgentState]:
    store = MetadataStore(path)
    state = AgentState(name="ada", system="s", blocks=[Block(label="human", value="likes tea")],
                       llm_config=LLMConfig(model="openai/gpt-4o-mini"))
    store.create_agents([state])
    store.commit_turn(state, [Message(agent_id=state.id, role="user", content="the lighthouse keeper"),
                              Message(agent_id=state.id, role="assistant", content="noted")])
    store.set_meta("schedules", '[{"id": "s1"}]')
    store.set_meta("host_journal:h-1-000000.log", "1234")  # this disk's: not in a snapshot
    return store, state


def test_a_snapshot_restores_into_an_empty_data_directory(tmp_path: Path) -> None:
    store, state = filled_store(tmp_path / "head" / "meta.duckdb")
    snapshots = Snapshots(StorageLocation(str(tmp_path / "bucket")))
    name, seconds, size = take_snapshot(store, snapshots, tmp_path / "head" / "scratch")
    store.close()
    assert size > 0 and seconds >= 0
    assert (tmp_path / "bucket" / "snapshots" / LATEST).read_text() == name
    assert not list((tmp_path / "head" / "scratch").iterdir())  # the local export is gone

    fresh = tmp_path / "new-head" / "meta.duckdb"
    assert restore_latest(fresh, snapshots) == name
    with MetadataStore(fresh) as restored:
        again = restored.get_agent(state.id)
        assert again.block("human").value == "likes tea"
        assert [m.content for m in restored.messages.list_messages(state.id)] == ["the lighthouse keeper", "noted"]
        assert [m.id for m in restored.messages.search_messages(state.id, "lighthouse")]  # text index rebuilt
        assert restored.get_meta("schedules") == '[{"id": "s1"}]'
        assert restored.get_meta("host_journal:h-1-000000.log") is None
        # new messages number on from the restored ones
        restored.commit_turn(again, [Message(agent_id=state.id, role="user", content="later")])
        assert len(restored.messages.list_messages(state.id)) == 3
    assert not list(fresh.parent.glob("restore-*")) and not fresh.with_name("meta.duckdb.restoring").exists()


def test_only_the_newest_snapshots_are_kept_and_latest_is_written_last(tmp_path: Path) -> None:
    store, _ = filled_store(tmp_path / "meta.duckdb")
    snapshots = Snapshots(StorageLocation(str(tmp_path / "bucket")), keep=2)
    names = [take_snapshot(store, snapshots, tmp_path / "scratch")[0] for _ in range(4)]
    store.close()
    kept = sorted(p.name for p in (tmp_path / "bucket" / "snapshots").iterdir() if p.is_dir())
    assert kept == names[-2:] and snapshots.latest() == names[-1]


def test_nothing_to_restore_and_no_restoring_over_data(tmp_path: Path) -> None:
    snapshots = Snapshots(StorageLocation(str(tmp_path / "empty-bucket")))
    assert restore_latest(tmp_path / "meta.duckdb", snapshots) is None
    assert not (tmp_path / "meta.duckdb").exists()
    store, _ = filled_store(tmp_path / "a.duckdb")
    folder = tmp_path / "export"
    store.export_parquet(folder, with_meta=True)
    with pytest.raises(ConflictError, match="not empty"):
        store.import_parquet(folder)
    store.close()


def test_a_broken_snapshot_leaves_no_half_restored_store(tmp_path: Path) -> None:
    store, _ = filled_store(tmp_path / "meta.duckdb")
    snapshots = Snapshots(StorageLocation(str(tmp_path / "bucket")))
    name = take_snapshot(store, snapshots, tmp_path / "scratch")[0]
    store.close()
    (tmp_path / "bucket" / "snapshots" / name / "messages.parquet").write_bytes(b"not parquet")
    fresh = tmp_path / "new" / "meta.duckdb"
    with pytest.raises(StorageError):
        restore_latest(fresh, snapshots)
    assert not fresh.exists()  # the next start tries again from scratch
