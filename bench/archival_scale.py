"""Archival memory at scale: 1,000,000 passages over 10,000 agents in one LanceDB table.

Prints, in one run on a temporary directory (the embedder is left out: vectors are
random unit vectors of the deployment's dimension, texts are drawn from a vocabulary so
full-text search has words to rank):
- batched inserts (``ArchivalStore.insert`` of ``--batch`` passages): passages/s, median
  over the batches, and for the whole load; building the ``Passage`` objects is timed apart;
- one agent's hybrid top-10 search (vector + full text, fused) once the load is in and
  the table optimized (indices cover every row), and the optimize itself;
- the same search while inserts go on beside it at ``--rate`` passages/s (a thread), with
  the table optimized behind every ``--optimize-rows`` new rows (another thread), as the
  archive actor does: p50/p99, the rate reached, the unindexed rows the searches saw;
- for scale, the same search on the first ``--baseline`` passages alone (a small archive),
  measured in the same run.

Targets (issue 17): inserts >= 5,000 passages/s; search p50 <= 20 ms while inserts continue.

Run: .venv/bin/python bench/archival_scale.py [--passages 1000000] [--agents 10000] [--rate 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile

from letta_ray.schemas import Passage
from letta_ray.storage.archive import ArchivalStore

WORDS = [f"{stem}{suffix}" for stem in ("river", "garden", "market", "letter", "harbor", "violin", "winter",
                                         "copper", "meadow", "lantern", "orchard", "signal", "pepper", "canyon",
                                         "thunder", "marble", "saddle", "cobalt", "juniper", "falcon")
         for suffix in ("", "s", "ing", "er", "ly", "ish", "ness", "ward", "ful", "less")]


def passages(rng: np.random.Generator, start: int, n: int, agents: int, dim: int) -> list[Passage]:
    """``n`` passages, the ``start``-th onwards, spread round the agents."""
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = rng.integers(0, len(WORDS), size=(n, 12))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [Passage(agent_id=f"agent-{(start + i) % agents:05d}", text=" ".join(WORDS[w] for w in words[i]),
                    tags=[f"t{(start + i) % 7}"], created_at=t0 + timedelta(seconds=start + i),
                    embedding=vectors[i].tolist()) for i in range(n)]


def search_once(store: ArchivalStore, rng: random.Random, agents: int, dim: int) -> float:
    agent = f"agent-{rng.randrange(agents):05d}"
    vector = np.asarray([rng.gauss(0, 1) for _ in range(dim)], dtype=np.float32)
    text = " ".join(rng.choice(WORDS) for _ in range(3))
    began = time.perf_counter()
    store.search(agent, query_text=text, query_vector=(vector / np.linalg.norm(vector)).tolist(), top_k=10)
    return time.perf_counter() - began


def searches(store: ArchivalStore, agents: int, dim: int, n: int) -> list[float]:
    rng = random.Random(7)
    return [search_once(store, rng, agents, dim) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=5_000, help="passages per insert while loading")
    parser.add_argument("--dim", type=int, default=384, help="the local embedder's dimension")
    parser.add_argument("--baseline", type=int, default=50_000, help="passages of the small archive compared")
    parser.add_argument("--rate", type=float, default=5_000, help="passages/s inserted while searching")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long searches run beside inserts")
    parser.add_argument("--optimize-rows", type=int, default=2_000,
                        help="optimize once this many rows are new (the archive actor's default)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)

    with tempfile.TemporaryDirectory() as folder:
        # the small archive first: the same searches on --baseline passages, optimized
        small = ArchivalStore(Path(folder) / "small", args.dim, optimize_every=None)
        for start in range(0, args.baseline, args.batch):
            small.insert(passages(rng, start, min(args.batch, args.baseline - start), args.agents, args.dim))
        small.optimize()
        small_lat = searches(small, args.agents, args.dim, 200)

        # the load, flat out: how fast batched inserts go
        store = ArchivalStore(Path(folder) / "big", args.dim, optimize_every=None)
        insert_rates, build_s, insert_s = [], 0.0, 0.0
        wall = time.perf_counter()
        for start in range(0, args.passages, args.batch):
            began = time.perf_counter()
            batch = passages(rng, start, min(args.batch, args.passages - start), args.agents, args.dim)
            built = time.perf_counter()
            store.insert(batch)
            done = time.perf_counter()
            build_s += built - began
            insert_s += done - built
            insert_rates.append(len(batch) / (done - built))
        wall = time.perf_counter() - wall
        began = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - began
        after = searches(store, args.agents, args.dim, 200)

        # searches while inserts go on at --rate, optimized behind as the archive actor does
        stop = threading.Event()
        inserted, optimizes, unindexed = [0], [0], []
        next_id = [args.passages]

        def inserter() -> None:
            step = max(1, int(args.rate / 10))  # ten batches a second
            began = time.perf_counter()
            while not stop.is_set():
                store.insert(passages(rng, next_id[0], step, args.agents, args.dim))
                next_id[0] += step
                inserted[0] += step
                pause = began + inserted[0] / args.rate - time.perf_counter()
                if pause > 0:
                    stop.wait(pause)

        def optimizer() -> None:
            done_at = 0
            while not stop.is_set():
                if inserted[0] - done_at >= args.optimize_rows:
                    done_at = inserted[0]
                    store.optimize()
                    optimizes[0] += 1
                else:
                    stop.wait(0.05)

        threads = [threading.Thread(target=inserter, daemon=True), threading.Thread(target=optimizer, daemon=True)]
        during: list[float] = []
        search_rng = random.Random(11)
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        while time.perf_counter() - began < args.seconds:
            during.append(search_once(store, search_rng, args.agents, args.dim))
            if len(during) % 20 == 0:
                unindexed.append(store.unindexed_rows())
        stop.set()
        for thread in threads:
            thread.join()
        concurrent_rate = inserted[0] / (time.perf_counter() - began)
        size = sum(f.stat().st_size for f in (Path(folder) / "big").rglob("*") if f.is_file())

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1000:7.2f} ms  p99 {percentile(values, 99) * 1000:7.2f} ms"

    print(f"\nletta_ray archival at scale — {os.cpu_count()} CPUs, {args.passages:,} passages over "
          f"{args.agents:,} agents, dim {args.dim}, loaded in batches of {args.batch:,}")
    print(f"  insert: {statistics.median(insert_rates):,.0f} passages/s per batch (median), "
          f"{args.passages / insert_s:,.0f}/s over the load in insert() (target >= 5,000); "
          f"building the Passage objects apart: {args.passages / build_s:,.0f}/s; whole load {wall:.0f} s")
    print(f"  hybrid top-10 search, the load optimized (in {optimize_s:.1f} s)   {ms(after)}")
    print(f"  the same while {concurrent_rate:,.0f} passages/s go in, optimized behind every "
          f"{args.optimize_rows:,} rows ({optimizes[0]} times; unindexed rows seen: median "
          f"{statistics.median(unindexed or [0]):,.0f}), {len(during)} searches   {ms(during)}  (target p50 <= 20 ms)")
    print(f"  the same on {args.baseline:,} passages                        {ms(small_lat)}")
    print(f"  table on disk: {size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
