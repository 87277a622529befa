"""Topology: who can message whom in a simulation.

A :class:`TopologySpec` names a kind of graph; :func:`build_topology` turns it into
``neighbours[i]``, the sorted indices of the agents agent ``i`` can message. In every
kind but a directed edge list the relation is symmetric, so they are also the agents
``i`` hears from; for a directed list, :func:`in_neighbours` gives the other side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from letta_ray.errors import InvalidInputError
from letta_ray.sim.population import read_table

TopologyKind = Literal["all_to_all", "groups", "random", "small_world", "edges"]

# all_to_all keeps n*(n-1) links in memory; past this many agents that is gigabytes.
MAX_ALL_TO_ALL = 2_000


class TopologySpec(BaseModel):
    """Which graph connects the agents; checked against the population size by :meth:`check`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TopologyKind = "all_to_all"
    degree: int | None = Field(
        default=None,
        ge=1,
        description="random: every agent's exact degree; small_world: the Watts-Strogatz k (even), the mean degree",
    )
    group_size: int | None = Field(default=None, ge=2, description="groups: consecutive agents per group")
    rewire: float = Field(default=0.1, ge=0.0, le=1.0, description="small_world: the rewiring probability p")
    edges: str | list[tuple[str, str]] | None = Field(
        default=None,
        description="edges: pairs of agent names, or a CSV/Parquet file with columns source,target",
    )
    directed: bool = Field(default=False, description="edges: a pair lets source message target only")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> TopologySpec:
        needs = {"random": "degree", "small_world": "degree", "groups": "group_size", "edges": "edges"}
        needed = needs.get(self.kind)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"a {self.kind} topology needs {needed}")
        if self.degree is not None and self.kind not in ("random", "small_world"):
            raise ValueError(f"degree is for random and small_world topologies, not {self.kind}")
        if self.group_size is not None and self.kind != "groups":
            raise ValueError(f"group_size is for the groups topology, not {self.kind}")
        if self.edges is not None and self.kind != "edges":
            raise ValueError(f"edges is for the edges topology, not {self.kind}")
        if self.directed and self.kind != "edges":
            raise ValueError(f"directed is for the edges topology; a {self.kind} topology is undirected")
        if self.kind == "small_world" and self.degree is not None and self.degree % 2:
            raise ValueError(
                f"small_world needs an even degree (each agent links to degree/2 on each side of a ring), "
                f"got {self.degree}"
            )
        return self

    def check(self, n: int) -> None:
        """Raise InvalidInputError if this topology cannot be built over ``n`` agents."""
        if n < 1:
            raise InvalidInputError(f"a topology needs at least one agent, got {n}")
        if self.kind == "all_to_all" and n > MAX_ALL_TO_ALL:
            raise InvalidInputError(
                f"all_to_all over {n} agents is {n * (n - 1)} links; above {MAX_ALL_TO_ALL} agents "
                "use groups, random or small_world"
            )
        if self.kind == "random":
            d = self.degree or 0
            if d >= n:
                raise InvalidInputError(f"a random topology needs degree < agents, got degree {d} with {n} agents")
            if (n * d) % 2:
                raise InvalidInputError(
                    f"a random topology needs agents * degree even, got {n} * {d} = {n * d}; "
                    "change the degree or the number of agents by one"
                )
        if self.kind == "small_world" and (self.degree or 0) >= n:
            raise InvalidInputError(
                f"a small_world topology needs degree < agents, got degree {self.degree} with {n} agents"
            )


def build_topology(spec: TopologySpec, names: Sequence[str], seed: int) -> list[list[int]]:
    """``neighbours[i]``: the sorted indices of the agents agent ``i`` can message.

    The same spec, names and seed give the same lists; no agent is its own neighbour.
    """
    n = len(names)
    spec.check(n)
    if spec.kind == "all_to_all":
        return [[j for j in range(n) if j != i] for i in range(n)]
    if spec.kind == "groups":
        return _groups(n, spec.group_size or n)
    if spec.kind == "random":
        return _adjacency(_random_regular(n, spec.degree or 0, seed))
    if spec.kind == "small_world":
        return _adjacency(nx.watts_strogatz_graph(n, spec.degree or 0, spec.rewire, seed=seed))
    return _from_edges(spec, names)


def in_neighbours(neighbours: Sequence[Sequence[int]]) -> list[list[int]]:
    """The other side of ``neighbours``: for each agent, the sorted agents that can message it."""
    inbound: list[list[int]] = [[] for _ in neighbours]
    for i, outs in enumerate(neighbours):
        for j in outs:
            inbound[j].append(i)  # i ascends, so each list comes out sorted
    return inbound


def degree_stats(neighbours: Sequence[Sequence[int]]) -> dict[str, float]:
    """The smallest, largest and mean number of neighbours (all 0 for no agents)."""
    if not neighbours:
        return {"min": 0, "max": 0, "mean": 0.0}
    degrees = [len(outs) for outs in neighbours]
    return {"min": min(degrees), "max": max(degrees), "mean": sum(degrees) / len(degrees)}


# --------------------------------------------------------------------------- generators


def _groups(n: int, size: int) -> list[list[int]]:
    neighbours = []
    for i in range(n):
        start = i - i % size
        neighbours.append([j for j in range(start, min(start + size, n)) if j != i])
    return neighbours


def _random_regular(n: int, d: int, seed: int) -> nx.Graph:
    # networkx's pairing method slows down badly as d nears n; a dense regular graph is
    # the complement of a sparse one (n*(n-1-d) has the parity of n*d, so it exists).
    if d > (n - 1) / 2:
        return nx.complement(nx.random_regular_graph(n - 1 - d, n, seed=seed))
    return nx.random_regular_graph(d, n, seed=seed)


def _adjacency(graph: nx.Graph) -> list[list[int]]:
    return [sorted(graph.adj[i]) for i in range(graph.number_of_nodes())]


def _from_edges(spec: TopologySpec, names: Sequence[str]) -> list[list[int]]:
    pairs = _read_edges(spec.edges) if isinstance(spec.edges, str) else list(spec.edges or [])
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for pair in pairs for name in pair if name not in index})
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise InvalidInputError(f"the edge list names agents not in the population: {shown}{more}")
    loops = sorted({s for s, t in pairs if s == t})
    if loops:
        raise InvalidInputError(f"the edge list links agents to themselves: {', '.join(map(repr, loops[:10]))}")
    links: list[set[int]] = [set() for _ in names]
    for source, target in pairs:
        s, t = index[source], index[target]
        links[s].add(t)
        if not spec.directed:
            links[t].add(s)
    return [sorted(outs) for outs in links]


def _read_edges(path: str) -> list[tuple[str, str]]:
    table = read_table(Path(path))
    missing = [c for c in ("source", "target") if c not in table.column_names]
    if missing:
        raise InvalidInputError(
            f"edge file {path} needs columns source,target; missing {', '.join(missing)} "
            f"(it has {', '.join(table.column_names)})"
        )
    return list(zip(table.column("source").to_pylist(), table.column("target").to_pylist(), strict=True))
