"""The pure parts of a simulation: topology, population and per-round metrics (no Ray)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from rich.console import Console

from letta_ray.messages import LettaResponse, Message, StopReason, ToolCall, UsageStatistics, to_events
from letta_ray.sim.metrics import (
    MetricsLog,
    RoundMetrics,
    TurnOutcome,
    plot,
    round_metrics,
    summary_table,
)
from letta_ray.sim.population import PopulationSpec, build_population
from letta_ray.sim.topology import TopologySpec, build_topology, degree_stats, in_neighbours

NAMES = [f"agent-{i}" for i in range(60)]


def _symmetric(neighbours: list[list[int]]) -> bool:
    return all(i in neighbours[j] for i, outs in enumerate(neighbours) for j in outs)


# --------------------------------------------------------------------------- topology


def test_random_topology_gives_every_agent_exactly_the_degree():
    neighbours = build_topology(TopologySpec(kind="random", degree=4), NAMES, seed=1)
    assert [len(outs) for outs in neighbours] == [4] * len(NAMES)
    assert _symmetric(neighbours)
    assert all(i not in outs and outs == sorted(set(outs)) for i, outs in enumerate(neighbours))


def test_dense_random_topology_is_regular_too():
    neighbours = build_topology(TopologySpec(kind="random", degree=50), NAMES, seed=1)
    assert degree_stats(neighbours) == {"min": 50, "max": 50, "mean": 50.0}
    assert all(i not in outs for i, outs in enumerate(neighbours))


def test_small_world_topology_has_mean_degree_exactly_k():
    neighbours = build_topology(TopologySpec(kind="small_world", degree=6, rewire=0.3), NAMES, seed=2)
    assert degree_stats(neighbours)["mean"] == 6.0
    assert _symmetric(neighbours)
    assert all(i not in outs for i, outs in enumerate(neighbours))
    unrewired = build_topology(TopologySpec(kind="small_world", degree=6, rewire=0.0), NAMES, seed=2)
    assert unrewired[0] == [1, 2, 3, 57, 58, 59]  # the ring lattice: 3 on each side
    assert neighbours != unrewired


def test_groups_topology_links_each_group_all_to_all():
    neighbours = build_topology(TopologySpec(kind="groups", group_size=7), NAMES[:30], seed=0)
    assert neighbours[0] == [1, 2, 3, 4, 5, 6]
    assert neighbours[9] == [7, 8, 10, 11, 12, 13]
    assert all(len(outs) == 6 for outs in neighbours[:28])
    assert neighbours[28:] == [[29], [28]]  # 30 = 4 * 7 + 2: the last group is smaller


def test_all_to_all_topology_links_everyone_but_oneself():
    neighbours = build_topology(TopologySpec(), NAMES[:5], seed=0)
    assert neighbours == [[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]]


def test_edge_list_inline_undirected_and_directed():
    edges = [("agent-0", "agent-1"), ("agent-2", "agent-0"), ("agent-1", "agent-0")]
    undirected = build_topology(TopologySpec(kind="edges", edges=edges), NAMES[:4], seed=0)
    assert undirected == [[1, 2], [0], [0], []]
    directed = build_topology(TopologySpec(kind="edges", edges=edges, directed=True), NAMES[:4], seed=0)
    assert directed == [[1], [0], [0], []]  # who each agent can message
    assert in_neighbours(directed) == [[1, 2], [0], [], []]  # who each agent hears from


def test_edge_list_from_csv_and_parquet_files(tmp_path: Path):
    csv = tmp_path / "edges.csv"
    csv.write_text("source,target\nagent-0,agent-3\nagent-3,agent-2\n")
    parquet = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"source": ["agent-0", "agent-3"], "target": ["agent-3", "agent-2"]}), parquet)
    for path in (csv, parquet):
        assert build_topology(TopologySpec(kind="edges", edges=str(path)), NAMES[:4], seed=0) == [
            [3],
            [],
            [3],
            [0, 2],
        ]
        directed = TopologySpec(kind="edges", edges=str(path), directed=True)
        assert build_topology(directed, NAMES[:4], seed=0) == [[3], [], [], [2]]


def test_edge_list_errors_name_the_unknown_agents_and_missing_columns(tmp_path: Path):
    spec = TopologySpec(kind="edges", edges=[("agent-0", "nobody"), ("ghost", "agent-1")])
    with pytest.raises(ValueError, match="not in the population: 'ghost', 'nobody'"):
        build_topology(spec, NAMES[:4], seed=0)
    with pytest.raises(ValueError, match="to themselves: 'agent-2'"):
        build_topology(TopologySpec(kind="edges", edges=[("agent-2", "agent-2")]), NAMES[:4], seed=0)
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\nagent-0,agent-1\n")
    with pytest.raises(ValueError, match="needs columns source,target; missing source, target"):
        build_topology(TopologySpec(kind="edges", edges=str(bad)), NAMES[:4], seed=0)
    with pytest.raises(ValueError, match="no such file"):
        build_topology(TopologySpec(kind="edges", edges=str(tmp_path / "none.csv")), NAMES[:4], seed=0)


@pytest.mark.parametrize("kind", ["random", "small_world"])
def test_topology_is_deterministic_per_seed(kind: str):
    spec = TopologySpec(kind=kind, degree=4)
    first = build_topology(spec, NAMES, seed=7)
    assert build_topology(spec, NAMES, seed=7) == first
    assert build_topology(spec, NAMES, seed=8) != first


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "random"}, "a random topology needs degree"),
        ({"kind": "groups"}, "a groups topology needs group_size"),
        ({"kind": "edges"}, "a edges topology needs edges"),
        ({"kind": "small_world", "degree": 5}, "small_world needs an even degree"),
        ({"kind": "groups", "group_size": 3, "degree": 2}, "degree is for random and small_world"),
        ({"kind": "random", "degree": 2, "directed": True}, "directed is for the edges topology"),
        ({"kind": "random", "degree": 2, "edges": [("a", "b")]}, "edges is for the edges topology"),
        ({"kind": "random", "degre": 2}, "degre"),  # a typo is caught, not ignored
        ({"kind": "groups", "group_size": 1}, "greater than or equal to 2"),
    ],
)
def test_bad_topology_specs_are_refused_with_a_clear_message(fields: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        TopologySpec(**fields)


def test_random_topology_checks_degree_against_the_population():
    with pytest.raises(ValueError, match=r"agents \* degree even, got 7 \* 3 = 21"):
        build_topology(TopologySpec(kind="random", degree=3), NAMES[:7], seed=0)
    with pytest.raises(ValueError, match="degree < agents, got degree 7 with 7 agents"):
        build_topology(TopologySpec(kind="random", degree=7), NAMES[:7], seed=0)
    with pytest.raises(ValueError, match="all_to_all over 3000 agents"):
        TopologySpec().check(3000)


def test_topology_for_ten_thousand_agents_has_the_degree_asked_for():
    """(How fast: bench/sim.py prints the time to build population and topology.)"""
    names = [f"a{i}" for i in range(10_000)]
    for spec in (TopologySpec(kind="random", degree=8), TopologySpec(kind="small_world", degree=8)):
        neighbours = build_topology(spec, names, seed=3)
        assert degree_stats(neighbours)["mean"] == 8.0


# --------------------------------------------------------------------------- population


def test_population_is_deterministic_per_seed_and_fills_the_templates():
    spec = PopulationSpec(
        count=50,
        persona="{name}, {age}, {occupation} from {town}; {trait}; votes {party}.",
        human="Neighbours of {first_name} {last_name}.",
        fields={"party": ["red", "blue"]},
    )
    first = build_population(spec, seed=1)
    assert build_population(spec, seed=1) == first
    assert [p.name for p in build_population(spec, seed=2)] != [p.name for p in first]
    agent = first[3]
    assert agent.index == 3
    f = agent.fields
    expected = f"{agent.name}, {f['age']}, {f['occupation']} from {f['town']}; {f['trait']}; votes {f['party']}."
    assert agent.persona == expected
    assert agent.human == f"Neighbours of {agent.name}."
    assert {p.fields["party"] for p in first} == {"red", "blue"}
    assert all(18 <= int(p.fields["age"]) <= 85 for p in first)


def test_ten_thousand_agents_get_distinct_names():
    population = build_population(PopulationSpec(count=10_000), seed=5)
    assert len({p.name for p in population}) == 10_000
    assert [p.index for p in population] == list(range(10_000))
    bigger = build_population(PopulationSpec(count=30_000), seed=5)  # more than the 25,600 name pairs
    assert len({p.name for p in bigger}) == 30_000


def test_name_prefix_numbers_the_agents():
    population = build_population(PopulationSpec(count=3, name_prefix="agent-", persona="I am {name}."), seed=0)
    assert [p.name for p in population] == ["agent-0", "agent-1", "agent-2"]
    assert population[2].persona == "I am agent-2."


def test_a_template_field_no_agent_has_is_named_with_the_available_ones():
    spec = PopulationSpec(count=2, persona="I am {name} and I love {hobby}.")
    with pytest.raises(ValueError, match=r"persona template uses \{hobby\}.*available fields: age, first_name"):
        build_population(spec, seed=0)
    with pytest.raises(ValidationError, match="named fields"):
        PopulationSpec(count=2, human="{0}")
    with pytest.raises(ValidationError, match="needs count or profiles"):
        PopulationSpec()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_population_from_a_profiles_file(tmp_path: Path, suffix: str):
    columns = {"name": ["Ann", "", "Bo"], "age": ["34", "51", "07"], "job": ["baker", "smith", "pupil"]}
    path = tmp_path / f"profiles.{suffix}"
    if suffix == "csv":
        path.write_text("name,age,job\nAnn,34,baker\n,51,smith\nBo,07,pupil\n")
    else:
        pq.write_table(pa.table(columns), path)
    spec = PopulationSpec(profiles=str(path), persona="{name} ({age}) is a {job}.", human="Hi {name}.")
    population = build_population(spec, seed=0)
    assert population[0].persona == "Ann (34) is a baker."
    assert population[2].persona == "Bo (07) is a pupil."  # text stays text: no number parsing
    assert population[1].name not in ("", "Ann", "Bo")  # an unnamed row gets a generated name
    assert population[1].persona == f"{population[1].name} (51) is a smith."
    assert [p.name for p in build_population(spec.model_copy(update={"count": 2}), seed=0)] == [
        "Ann",
        population[1].name,
    ]
    with pytest.raises(ValueError, match=r"\{occupation\}.*available fields: age, index, job, name"):
        build_population(spec.model_copy(update={"persona": "{occupation}"}), seed=0)


def test_profiles_with_duplicate_names_are_refused(tmp_path: Path):
    path = tmp_path / "profiles.csv"
    path.write_text("name\nAnn\nBo\nAnn\n")
    with pytest.raises(ValueError, match="names several agents the same: 'Ann'"):
        build_population(PopulationSpec(profiles=str(path), persona="{name}", human="{name}"), seed=0)


# --------------------------------------------------------------------------- metrics


def _response(*messages: Message, stop: str = "end_turn", steps: int = 1, prompt: int = 100) -> LettaResponse:
    events = [event for message in messages for event in to_events(message)]
    usage = UsageStatistics(step_count=steps)
    usage.add(prompt, 10 * steps)
    return LettaResponse(messages=events, stop_reason=StopReason(stop_reason=stop), usage=usage)


def _call(name: str, call_id: str, **args: str) -> Message:
    return Message(
        agent_id="agent-x",
        role="assistant",
        content="thinking",
        tool_calls=[ToolCall(id=call_id, name=name, arguments=json.dumps(args))],
    )


def _return(name: str, call_id: str, status: str = "success") -> Message:
    return Message(agent_id="agent-x", role="tool", name=name, tool_call_id=call_id, tool_status=status, content="{}")


def test_round_metrics_counts_tools_memory_edits_replies_and_errors():
    editing = _response(
        _call("core_memory_append", "c1", label="human", content="likes tea"),
        _return("core_memory_append", "c1"),
        _call("memory_replace", "c2", label="human", old_str="a", new_str="b"),
        _return("memory_replace", "c2", status="error"),  # failed: a tool error, not an edit
        _call("send_message", "c3", message="hello"),  # shows as an assistant message
        steps=3,
    )
    searching = _response(
        _call("archival_memory_search", "c4", query="news"),
        _return("archival_memory_search", "c4"),
        _call("memory_rethink", "c5", label="persona", new_memory="new"),
        _return("memory_rethink", "c5"),
        steps=2,
        stop="max_steps",
    )
    outcomes = [
        TurnOutcome(agent_index=0, latency_s=0.1, response=editing),
        TurnOutcome(agent_index=1, latency_s=0.3, response=searching),
        TurnOutcome(agent_index=2, latency_s=0.2, response=None, error="LLMError: 503"),
        TurnOutcome(agent_index=3, latency_s=0.4, response=_response(_call("send_message", "c6", message="hi"))),
    ]
    m = round_metrics(4, outcomes, duration_s=2.0, messages_delivered=9)
    assert (m.round, m.active_agents, m.messages_delivered, m.duration_s) == (4, 4, 9, 2.0)
    assert (m.steps, m.llm_calls) == (6, 6)
    assert (m.prompt_tokens, m.completion_tokens, m.total_tokens) == (300, 60, 360)
    assert m.tool_use == {
        "archival_memory_search": 1,
        "core_memory_append": 1,
        "memory_replace": 1,
        "memory_rethink": 1,
    }
    assert (m.tool_calls, m.tool_errors, m.replies) == (4, 1, 2)
    assert m.memory_edits == 2  # core_memory_append and memory_rethink; the failed memory_replace is not one
    assert m.errors == 2  # the turn that raised and the one that hit max_steps
    assert m.stop_reasons == {"end_turn": 2, "exception": 1, "max_steps": 1}
    assert m.turns_per_s == 2.0
    assert m.latency_max_ms == pytest.approx(400.0)
    assert m.latency_p50_ms == pytest.approx(250.0)
    assert m.latency_p90_ms == pytest.approx(370.0)


def test_memory_edits_are_found_by_call_id_when_a_return_has_no_name():
    response = _response(
        _call("core_memory_replace", "c1", label="human", old_content="a", new_content="b"),
        Message(agent_id="agent-x", role="tool", tool_call_id="c1", tool_status="success", content="{}"),
    )
    assert round_metrics(1, [TurnOutcome(0, 0.1, response)], 1.0, 0).memory_edits == 1


def test_recovered_turns_count_as_turns_but_not_in_latencies():
    reply = _response(_call("send_message", "c1", message="hi"))
    outcomes = [TurnOutcome(0, 0.2, reply), TurnOutcome(1, 0.4, reply), TurnOutcome(2, 0.0, reply, recovered=True)]
    metrics = round_metrics(2, outcomes, 1.0, 0)
    assert metrics.active_agents == 3 and metrics.recovered == 1
    assert metrics.latency_p50_ms == pytest.approx(300.0) and metrics.latency_max_ms == pytest.approx(400.0)


def test_round_metrics_of_an_empty_round_is_zeros():
    m = round_metrics(1, [], duration_s=0.0, messages_delivered=0)
    assert (m.active_agents, m.steps, m.latency_p99_ms, m.turns_per_s, m.errors) == (0, 0, 0.0, 0.0, 0)


def _metrics(round_index: int, errors: int = 0) -> RoundMetrics:
    reply = _response(_call("send_message", "c1", message="x"))
    outcomes = [TurnOutcome(i, 0.05 * (i + 1), reply) for i in range(3)]
    m = round_metrics(round_index, outcomes, duration_s=1.5, messages_delivered=round_index * 2)
    return dataclasses.replace(m, errors=errors, tool_use={"t": round_index})


def test_metrics_log_round_trips_rewrites_idempotently_and_knows_the_last_round(tmp_path: Path):
    log = MetricsLog(tmp_path)
    assert log.last_round() is None
    assert log.table().num_rows == 0
    for r in (2, 1, 3):
        log.append(_metrics(r))
    log.append(_metrics(2, errors=5))  # round 2 again, e.g. after a resume: replaced, not added
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == [
        "round-000001.parquet",
        "round-000002.parquet",
        "round-000003.parquet",
    ]
    table = log.table()
    assert table.column("round").to_pylist() == [1, 2, 3]
    assert table.column("errors").to_pylist() == [0, 5, 0]
    assert log.rounds() == [_metrics(1), _metrics(2, errors=5), _metrics(3)]
    assert log.rounds()[2].tool_use == {"t": 3}
    assert log.last_round() == 3


def test_summary_table_shows_totals_and_caps_the_rows(tmp_path: Path):
    log = MetricsLog(tmp_path)
    for r in range(1, 31):
        log.append(_metrics(r, errors=1))
    console = Console(record=True, width=200)
    console.print(summary_table(log.table(), max_rows=10))
    text = console.export_text()
    assert "Simulation: 30 rounds" in text
    assert "…" in text
    lines = [line for line in text.splitlines() if line.strip().startswith("│")]
    shown_rounds = [line.split("│")[1].strip() for line in lines]
    assert shown_rounds[:5] == ["1", "2", "3", "4", "5"]
    assert shown_rounds[6:11] == ["26", "27", "28", "29", "30"]
    total = next(line for line in lines if "total" in line)
    assert "90" in total  # 30 rounds x 3 agents
    assert total.split("│")[12].strip() == "30"  # errors summed


def test_plot_writes_a_png(tmp_path: Path):
    log = MetricsLog(tmp_path)
    for r in range(1, 4):
        log.append(_metrics(r))
    out = plot(log.table(), tmp_path / "plots" / "metrics.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000
    empty = plot(MetricsLog(tmp_path / "none").table(), tmp_path / "empty.png")
    assert empty.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
