"""The runs of ``letta-ray sim`` as their folders hold them, read without a runtime.

The web inspector lists the runs under ``<home>/sims`` and shows one: its config, its
progress, one row of metrics per round (``metrics/round-*.parquet``) and, for a round,
who talked to whom (the agents that spoke in it and the neighbours who heard them).
Everything comes from the run's own files (see ``sim/runner.py``), so a run still going
shows the rounds written so far.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from letta_ray.errors import InvalidInputError, NotFoundError

from .config import SimConfig
from .metrics import MetricsLog
from .topology import build_topology


@dataclass(frozen=True)
class SavedRun:
    """One run's folder (it holds ``sim.json``)."""

    dir: Path

    @classmethod
    def named(cls, sims_dir: Path, name: str) -> SavedRun:
        """The run in ``sims_dir/name``: NotFoundError if there is none (and for a name
        that would leave ``sims_dir``)."""
        folder = sims_dir / name
        if "/" in name or "\\" in name or name in ("", ".", "..") or not (folder / "sim.json").is_file():
            raise NotFoundError("simulation", name)
        return cls(folder)

    @cached_property
    def saved(self) -> dict[str, Any]:
        return json.loads((self.dir / "sim.json").read_text())

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> SimConfig:
        return SimConfig.model_validate(self.saved["config"])

    def completed_rounds(self) -> int:
        path = self.dir / "progress.json"
        return json.loads(path.read_text())["completed"] if path.exists() else 0

    def agents(self) -> list[dict[str, Any]]:
        """Index, name and id of each agent (none before the population is created)."""
        path = self.dir / "agents.parquet"
        return pq.read_table(path).to_pylist() if path.exists() else []

    def rounds(self) -> list[dict[str, Any]]:
        """One row of metrics per round written, in order; counts by tool and stop reason as dicts."""
        rows = MetricsLog(self.dir).table().to_pylist()
        for row in rows:
            row["tool_use"] = dict(row["tool_use"] or [])
            row["stop_reasons"] = dict(row["stop_reasons"] or [])
            for key, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    row[key] = None  # JSON has no NaN
        return rows

    def summary(self) -> dict[str, Any]:
        """What a list of runs shows of this one."""
        config = self.saved["config"]
        return {"name": self.name, "sim_id": self.saved["sim_id"], "created_at": self.saved.get("created_at"),
                "agents": config["population"].get("count"), "rounds": config.get("rounds"),
                "completed_rounds": self.completed_rounds(), "model": config.get("agent", {}).get("model")}

    def network(self, round_no: int) -> dict[str, Any]:
        """Who talked to whom in ``round_no``: every agent as a node (with whether it spoke),
        and an edge from each agent that said something to each neighbour who hears it."""
        if round_no < 1:
            raise InvalidInputError(f"rounds count from 1, got {round_no}")
        agents = self.agents()
        names = [a["name"] for a in sorted(agents, key=lambda a: a["index"])]
        if not names:
            return {"round": round_no, "nodes": [], "edges": []}
        config = self.config
        talks_to = build_topology(config.topology, names, config.seed)
        outbox = self.dir / "rounds" / f"outbox-{round_no:06d}.parquet"
        said: dict[int, str] = {}
        if outbox.exists():
            table = pq.read_table(outbox)
            said = {i: t for i, t in zip(table.column("index").to_pylist(), table.column("text").to_pylist(),
                                         strict=True) if t}
        nodes = [{"index": a["index"], "name": a["name"], "agent_id": a["agent_id"], "spoke": a["index"] in said,
                  "said": said.get(a["index"])} for a in sorted(agents, key=lambda a: a["index"])]
        edges = [[i, j] for i in sorted(said) for j in talks_to[i]]
        return {"round": round_no, "nodes": nodes, "edges": edges}


def saved_runs(sims_dir: Path) -> list[SavedRun]:
    """Every run in ``sims_dir``, newest first."""
    if not sims_dir.is_dir():
        return []
    runs = [SavedRun(p) for p in sims_dir.iterdir() if (p / "sim.json").is_file()]
    return sorted(runs, key=lambda r: r.saved.get("created_at") or 0, reverse=True)
