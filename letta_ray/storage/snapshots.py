"""Snapshots of the metadata store in the object store, and restoring from the latest one.

The head node's disk holds ``meta.duckdb`` and the journals of acknowledged turns; the
object store holds, next to the archive, Parquet snapshots of every table, taken every
``snapshot_interval_s``: ``<storage>/snapshots/<name>/<table>.parquet``, then
``<storage>/snapshots/LATEST`` naming the newest complete one (written last, so a snapshot
cut short by a failure is never the one restored). A new head whose data directory is
empty restores the latest snapshot when its store starts. The copying is pyarrow's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from letta_ray.errors import StorageError
from letta_ray.storage.object_store import StorageLocation

log = logging.getLogger(__name__)

LATEST = "LATEST"


class Snapshots:
    """The ``snapshots/`` folder of a storage location."""

    def __init__(self, location: StorageLocation, keep: int = 3) -> None:
        self.location = location
        self.keep = keep
        self._fs: Any = None
        self._base = ""

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            fs, base = self.location.filesystem()
            self._fs, self._base = fs, f"{base}/snapshots"
        return self._fs, self._base

    def upload(self, local_dir: Path) -> str:
        """Copy a snapshot folder up, then point ``LATEST`` at it; returns its name."""
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        name = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        try:
            fs.create_dir(f"{base}/{name}", recursive=True)
            pafs.copy_files(str(local_dir), f"{base}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
            with fs.open_output_stream(f"{base}/{LATEST}") as out:
                out.write(name.encode())
        except Exception as exc:  # pyarrow's OSError, with the object store's reason
            raise StorageError(f"cannot write a snapshot to {self.location.uri}: {exc}") from exc
        self._prune(name)
        return name

    def latest(self) -> str | None:
        """The newest complete snapshot's name, or None if there is none."""
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        try:
            if fs.get_file_info(f"{base}/{LATEST}").type != pafs.FileType.File:
                return None
            with fs.open_input_stream(f"{base}/{LATEST}") as src:
                return src.read().decode().strip() or None
        except Exception as exc:
            raise StorageError(f"cannot read the snapshots in {self.location.uri}: {exc}") from exc

    def download(self, name: str, local_dir: Path) -> Path:
        """Copy snapshot ``name`` into ``local_dir`` (made if needed)."""
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            pafs.copy_files(f"{base}/{name}", str(local_dir), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        except Exception as exc:
            raise StorageError(f"cannot read snapshot {name} from {self.location.uri}: {exc}") from exc
        return local_dir

    def names(self) -> list[str]:
        """The snapshots there, oldest first (a folder being uploaded is listed too)."""
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        try:
            return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                          if info.type == pafs.FileType.Directory)
        except Exception as exc:
            raise StorageError(f"cannot list the snapshots in {self.location.uri}: {exc}") from exc

    def _prune(self, newest: str) -> None:
        """Delete all but the ``keep`` newest snapshots (best effort: the next upload retries)."""
        fs, base = self._filesystem()
        try:
            names = [name for name in self.names() if name <= newest]
            for name in names[: max(0, len(names) - self.keep)]:
                fs.delete_dir(f"{base}/{name}")
        except Exception:
            log.warning("could not prune old snapshots in %s", self.location.uri, exc_info=True)


def take_snapshot(store: Any, snapshots: Snapshots, scratch: Path) -> tuple[str, float, int]:
    """Export ``store`` (a ``MetadataStore``) into a scratch folder and upload it; returns the
    snapshot's name, the seconds it took and its size in bytes."""
    started = time.perf_counter()
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="snapshot-", dir=scratch))
    try:
        paths = store.export_parquet(folder, with_meta=True)
        size = sum(path.stat().st_size for path in paths.values())
        name = snapshots.upload(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return name, time.perf_counter() - started, size


def restore_latest(meta_path: Path, snapshots: Snapshots) -> str | None:
    """Before the store opens an absent ``meta_path``: fill it from the latest snapshot, if
    there is one. Returns the snapshot's name (None: nothing to restore)."""
    from letta_ray.storage.metadata import MetadataStore

    name = snapshots.latest()
    if name is None:
        return None
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="restore-", dir=meta_path.parent))
    partial = meta_path.with_name(meta_path.name + ".restoring")
    partial.unlink(missing_ok=True)
    try:
        snapshots.download(name, folder)
        with MetadataStore(partial) as store:
            agents = store.import_parquet(folder)
        partial.rename(meta_path)  # only a whole restore becomes the store
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        partial.unlink(missing_ok=True)
    log.warning("restored %s from snapshot %s in %s (%d agents)", meta_path, name, snapshots.location.uri, agents)
    return name
