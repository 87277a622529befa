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

Run: .venv/bin/python bench/store_ceiling.py [--agents 10000] [--hosts 20] [--passes 5]
"""

from __future__ import annotations

import argparse
import gc
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        store = MetadataStoreActor(Path(home) / "meta.duckdb", host_journals=Path(home) / "journal")
        agents = [make_agent(i) for i in range(args.agents)]
        store.store.create_agents(agents)
        journals = [Journal(Path(home) / "journal" / f"host-{h}-000000.log") for h in range(args.hosts)]
        seq = n = 0
        print(f"bench/store_ceiling.py: {args.agents:,} agents, {args.hosts} host journals, "
              f"{args.passes} passes per batch size (medians)")
        for batch in args.batches:
            walls, cpus, decodes = [], [], []
            for _ in range(args.passes + 1):  # the first pass warms up
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
                started_cpu, started = time.process_time(), time.perf_counter()
                applied, offsets = store._apply_host_journals()
                store._committed(applied, offsets)
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - started_cpu)
                gc.unfreeze()
                assert applied == batch, (applied, batch)
            wall, cpu, decode = (statistics.median(x[1:]) for x in (walls, cpus, decodes))
            print(f"  passes of {batch:5,} turns: {wall * 1000:7.0f} ms each = {batch / wall:7,.0f} turns/s, "
                  f"{cpu * 1000 / batch:.3f} ms of CPU per turn (decoding the journal {decode / wall * 100:.0f} % "
                  f"of it)")
        size = sum(f.stat().st_size for f in Path(home).glob("meta.duckdb*"))
        print(f"  meta.duckdb after {n:,} turns: {size / 2**20:.0f} MiB")
        for journal in journals:
            journal.close()
        store.store.close()


if __name__ == "__main__":
    main()
