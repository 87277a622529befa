"""The garbage collector's thresholds for the processes that run many turns at once, and
the time it takes there.

A host has hundreds of turns in flight. Each is suspended mid-way (awaiting its LLM call)
holding its compiled context, request body and pydantic models, so Python's default
thresholds (a young collection every 700 allocations) find those temporaries alive and
promote them to the old generation, where they soon die. Promotions are what trigger a
full collection, and a full collection walks every object of every hosted agent.
Measured with the in-process host and an instant LLM (5,000 and 50,000 agents, 256 turns
in flight): the collector took 0.6-1.2 ms of a 1.6-2.4 ms turn, nearly all of it in
full collections of 0.3-1.2 s each (a stall of every turn on the host). With these
thresholds it takes 0.06-0.2 ms and full collections stop. A young collection then
pauses the host for ~50 ms there, and ~100 ms about once a second in a simulation round
(bench/sim.py, 5,000-50,000 agents per host). Cycles are still collected; they just wait
for ~50,000 allocations.
"""

from __future__ import annotations

import gc
import time
from typing import Any

THRESHOLDS = (50_000, 20, 10)

_collections = [0, 0, 0]
_seconds = [0.0, 0.0, 0.0]
_started = [0.0]


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        _collections[generation] += 1
        _seconds[generation] += time.perf_counter() - _started[0]


def tune() -> None:
    """Use THRESHOLDS in this process and time its collections (idempotent)."""
    if gc.get_threshold() != THRESHOLDS:
        gc.set_threshold(*THRESHOLDS)
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


def stats() -> dict[str, Any]:
    """This process's thresholds, and per generation the collections and the seconds they
    took since ``tune`` (zeros in a process that never called it)."""
    return {"thresholds": list(gc.get_threshold()), "collections": list(_collections),
            "seconds": [round(s, 6) for s in _seconds]}
