"""What the object store costs archival memory: S3 requests and latency per operation.

Runs the archive (``letta_ray.storage.archive.ArchivalStore``, LanceDB) on a local folder
and on an S3 server on 127.0.0.1 (moto, via ``letta_ray.local_cluster``) in one run, and
prints for each: the median latency of inserting one passage (what an agent's
``archival_memory_insert`` costs, since the archive actor writes each batch at once), of a
batch of 100, of a hybrid search while the table grows, and of the periodic ``optimize``,
with the S3 requests each made (the archive actor optimizes every 200 writes). Turns
themselves make no S3 request (``bench/sim.py --storage s3`` counts them): this is the
cost of the tools that touch archival memory.

Run: .venv/bin/python bench/object_store.py [--inserts 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from letta_ray.local_cluster import MotoServer, make_bucket, s3_env
from letta_ray.schemas import Passage
from letta_ray.storage.archive import ArchivalStore
from letta_ray.storage.object_store import StorageLocation

DIM = 384
BUCKET = "letta-ray-bench-archive"


def passages(n: int, start: int, rng: np.random.Generator) -> list[Passage]:
    return [Passage(agent_id=f"agent-{(start + i) % 50}", text=f"note {start + i}: the lighthouse keeper's log",
                    embedding=rng.standard_normal(DIM).astype(np.float32).tolist(), tags=["note"])
            for i in range(n)]


def measure(store: ArchivalStore, moto: MotoServer | None, inserts: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)

    def requests() -> int:
        return sum(moto.requests().values()) if moto is not None else 0

    out: dict[str, Any] = {}
    store.insert(passages(10, 0, rng))  # the table exists
    one, one_requests = [], []
    for i in range(inserts):
        before, started = requests(), time.perf_counter()
        store.insert(passages(1, 10 + i, rng))
        one.append(time.perf_counter() - started)
        one_requests.append(requests() - before)
    out["insert 1"] = (statistics.median(one), statistics.median(one_requests))
    batch, batch_requests = [], []
    for i in range(10):
        before, started = requests(), time.perf_counter()
        store.insert(passages(100, 10_000 + 100 * i, rng))
        batch.append(time.perf_counter() - started)
        batch_requests.append(requests() - before)
    out["insert 100"] = (statistics.median(batch), statistics.median(batch_requests))
    def searches() -> tuple[float, float]:
        search, search_requests = [], []
        for _ in range(30):
            query = rng.standard_normal(DIM).astype(np.float32)
            before, started = requests(), time.perf_counter()
            store.search("agent-7", query_text="lighthouse", query_vector=query.tolist(), top_k=10)
            search.append(time.perf_counter() - started)
            search_requests.append(requests() - before)
        return statistics.median(search), statistics.median(search_requests)

    out[f"search, {inserts + 11} fragments"] = searches()
    before, started = requests(), time.perf_counter()
    store.optimize()
    out["optimize"] = (time.perf_counter() - started, requests() - before)
    out["search, optimized"] = searches()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inserts", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        moto = MotoServer(Path(scratch) / "moto.log")
        try:
            make_bucket(moto.endpoint, BUCKET)
            os.environ.update(s3_env(moto.endpoint))
            location = StorageLocation(f"s3://{BUCKET}/bench")
            local = measure(ArchivalStore(Path(scratch) / "archive", DIM, optimize_every=None), None, args.inserts)
            remote = measure(ArchivalStore(location.child("archive"), DIM, optimize_every=None,
                                           storage_options=location.lance_options()), moto, args.inserts)
        finally:
            moto.stop()
    print(f"bench/object_store.py: LanceDB archive, {DIM}-d vectors, local folder vs S3 on 127.0.0.1 (moto); "
          f"medians ({args.inserts} single inserts, 10 batches, 30 searches)")
    for name in local:
        (l_s, _), (r_s, r_req) = local[name], remote[name]
        print(f"  {name:26s} local {l_s * 1000:7.1f} ms | S3 {r_s * 1000:7.1f} ms ({r_s / l_s:4.1f}x), "
              f"{r_req:.0f} S3 requests")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
