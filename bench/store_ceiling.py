"""The single metadata writer's ceiling: how many journaled turns per second one store applies.

Every acknowledged turn of the whole cluster lands in one ``MetadataStoreActor``: hosts
(or, for hosts on other nodes, the journal keepers on the head) append it to a journal
file, and the store tails the files and applies them to DuckDB in one transaction per
pass. This bench runs that apply path as the store does (the actor's class, no Ray):
``--hosts`` journal files (20 = 10 nodes of 2 CPUs), ``--agents`` agents, turns of the
shape a simulation writes (user message, tool call, tool result, the agent's new state,
one LLM step and the run's doc), applied in passes of ``--batch`` turns (what one tail
pass sees at a given rate: ~1 s of turns). It prints, per batch size, the median seconds
per pass, turns/s and CPU per turn, and the share spent decoding the journal.

``--shards 1 2`` measures the store sharded by agent id (``store_shards``) as well: N
processes, each a shard with its share of the agents and of every pass's turns (the hosts
journal each turn to its agent's shard), started together; a pass's rate is all turns over
the slowest shard's time, reported with its ratio to one store measured in the same run.
Each shard is a process of its own, so N shards need N free cores to scale.

Run: .venv/bin/python bench/store_ceiling.py [--agents 10000] [--hosts 20] [--passes 5] [--shards 1 2]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import make_agent, turn_messages

from letta_ray.actors._journal import Journal, TurnRecord
from letta_ray.actors.metadata_store import MetadataStoreActor
from letta_ray.messages import StepRecord
from letta_ray.schemas import utcnow


def turn(state, n: int, seq: int) -> tuple[TurnRecord, object]:
    messages = turn_messages(state.id, n)
    state = state.model_copy(update={"message_ids": [*state.message_ids[-27:], *(m.id for m in messages)],
                                     "updated_at": utcnow()})
    run_id = f"run-{seq}"
    step = StepRecord(id=f"step-{seq}", created_at=utcnow(), agent_id=state.id, run_id=run_id,
                      model="openai/fake-model", prompt_tokens=900, completion_tokens=40, total_tokens=940)
    run = {"id": run_id, "agent_id": state.id, "status": "completed", "stop_reason": "end_turn",
           "created_at": utcnow().isoformat(), "completed_at": utcnow().isoformat()}
    return TurnRecord(seq=seq, state=state, messages=messages, edited_blocks=[], steps=[step], run=run), state


def measure(agents_n: int, hosts: int, batches: list[int], passes: int, first_agent: int = 0,
            start: object = None) -> dict[int, tuple[list[float], list[float], list[float], int]]:
    """Per batch size: the walls, CPU times and decode times of ``passes`` passes (after one
    warm-up) of one store applying ``batch`` turns of its ``agents_n`` agents, and its
    file size at the end. ``start``: a barrier the shards wait at before each pass."""
    results: dict[int, tuple[list[float], list[float], list[float], int]] = {}
    with tempfile.TemporaryDirectory() as home:
        store = MetadataStoreActor(Path(home) / "meta.duckdb", host_journals=Path(home) / "journal")
        agents = [make_agent(first_agent + i) for i in range(agents_n)]
        store.store.create_agents(agents)
        journals = [Journal(Path(home) / "journal" / f"host-{h}-000000.log") for h in range(hosts)]
        seq = n = 0
        for batch in batches:
            walls, cpus, decodes = [], [], []
            for _ in range(passes + 1):  # the first pass warms up
                by_host: list[list[TurnRecord]] = [[] for _ in journals]
                for _ in range(batch):
                    k = n % len(agents)
                    seq += 1
                    record, agents[k] = turn(agents[k], n, seq)
                    by_host[k % len(journals)].append(record)
                    n += 1
                for journal, records in zip(journals, by_host, strict=True):
                    journal.append(records)
                lines = [r.encode() for records in by_host for r in records]
                # The records were made here, next to 10,000 agents' states that the store's own
                # process does not hold: frozen, Python's collector does not walk them while
                # the store applies (as it would not in the store).
                gc.collect()
                gc.freeze()
                started = time.perf_counter()
                for line in lines:
                    TurnRecord.decode(line)
                decodes.append(time.perf_counter() - started)
                if start is not None:
                    start.wait()  # type: ignore[attr-defined]
                started_cpu, started = time.process_time(), time.perf_counter()
                applied, offsets = store._apply_host_journals()
                store._committed(applied, offsets)
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - started_cpu)
                gc.unfreeze()
                assert applied == batch, (applied, batch)
            results[batch] = (walls[1:], cpus[1:], decodes[1:], 0)
        size = sum(f.stat().st_size for f in Path(home).glob("meta.duckdb*"))
        results = {b: (w, c, d, size) for b, (w, c, d, _) in results.items()}
        for journal in journals:
            journal.close()
        store.store.close()
    return results


def _shard(args: tuple[int, int, int, list[int], int, object]) -> dict[int, tuple[list[float], list[float],
                                                                                   list[float], int]]:
    shard, agents_n, hosts, batches, passes, start = args
    return measure(agents_n, hosts, batches, passes, first_agent=shard * agents_n, start=start)


def sharded(shards: int, agents: int, hosts: int, batches: list[int], passes: int) -> dict[int, list[float]]:
    """Per batch size, the rate (turns/s) of each pass of ``shards`` stores applying together."""
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    start = manager.Barrier(shards)
    with context.Pool(shards) as pool:
        parts = pool.map(_shard, [(k, agents // shards, hosts, [b // shards for b in batches], passes, start)
                                  for k in range(shards)])
    manager.shutdown()
    rates: dict[int, list[float]] = {}
    for batch in batches:
        share = batch // shards
        walls = [max(part[share][0][i] for part in parts) for i in range(passes)]
        rates[batch] = [share * shards / wall for wall in walls]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--shards", type=int, nargs="+", default=[1],
                        help="shard counts to measure (1: one store, with the CPU and decode figures)")
    args = parser.parse_args()

    print(f"bench/store_ceiling.py: {args.agents:,} agents, {args.hosts} host journals, "
          f"{args.passes} passes per batch size (medians, unless said)")
    results = measure(args.agents, args.hosts, args.batches, args.passes)
    single: dict[int, float] = {}
    for batch, (walls, cpus, decodes, _) in results.items():
        wall, cpu, decode = (statistics.median(x) for x in (walls, cpus, decodes))
        single[batch] = batch / wall
        print(f"  passes of {batch:5,} turns: {wall * 1000:7.0f} ms each = {batch / wall:7,.0f} turns/s, "
              f"{cpu * 1000 / batch:.3f} ms of CPU per turn (decoding the journal {decode / wall * 100:.0f} % "
              f"of it); over every pass, DuckDB's checkpoints included, {sum(cpus) * 1000 / (batch * len(cpus)):.3f} "
              f"ms (mean)")
    size = next(iter(results.values()))[3]
    print(f"  meta.duckdb after {sum(b * (args.passes + 1) for b in args.batches):,} turns: {size / 2**20:.0f} MiB")
    for shards in (s for s in args.shards if s > 1):
        rates = sharded(shards, args.agents, args.hosts, args.batches, args.passes)
        print(f"  {shards} shards ({args.agents // shards:,} agents and 1/{shards} of each pass each, "
              f"{shards} processes):")
        for batch, per_pass in rates.items():
            rate = statistics.median(per_pass)
            print(f"    passes of {batch:5,} turns: {rate:7,.0f} turns/s = x{rate / single[batch]:.2f} one store")


if __name__ == "__main__":
    main()
