"""Simulations on the shared local Ray: determinism, resume after a kill, the LLM cap, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import letta_ray
from letta_ray.cli import app
from letta_ray.errors import InvalidInputError
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.messages import MessageCreate
from letta_ray.sim import Simulation, load_config, parse_config
from letta_ray.sim.fake import town_responder

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def town_llm():
    with FakeOpenAIServer(town_responder, latency_s=0.02) as server:
        yield server


def town(server: FakeOpenAIServer, **changes: Any) -> dict[str, Any]:
    raw = {
        "name": "town", "seed": 11, "rounds": 3,
        "population": {"count": 12},
        "topology": {"kind": "random", "degree": 3},
        "agent": {"model": f"openai/{server.model}", "model_endpoint": server.url, "max_steps": 4},
        "concurrency": 8, "batch": 5,
    }
    raw.update(changes)
    return raw


def play(client: Any, raw: dict[str, Any], run_dir: Path, *, resume: bool = False) -> Simulation:
    async def go() -> Simulation:
        sim = await Simulation.open(parse_config(raw), client, run_dir, resume=resume)
        sim.reports = await sim.run()
        return sim

    return client.run_sync(go())


def turns_per_round(client: Any, sim: Simulation) -> Counter[str]:
    """How many turns each (round, agent) has in the store: exactly one each, or something was lost or doubled."""
    transcript = client.run_sync(sim.transcript())
    per_turn = Counter(key for key, records in transcript for r in records if r["role"] == "user")
    assert all(n == 1 for n in per_turn.values()), [k for k, n in per_turn.items() if n != 1]
    return Counter(key.split("-")[0] for key in per_turn)


def test_same_config_and_seed_give_the_same_transcript(client: Any, town_llm: FakeOpenAIServer,
                                                       tmp_path: Path) -> None:
    raw = town(town_llm)
    first = play(client, raw, tmp_path / "a")
    second = play(client, raw, tmp_path / "b")
    assert first.sim_id != second.sim_id and first.agent_ids != second.agent_ids  # two separate populations
    assert client.run_sync(first.transcript_hash()) == client.run_sync(second.transcript_hash())
    assert turns_per_round(client, first) == {"r000001": 12, "r000002": 12, "r000003": 12}
    other = play(client, {**raw, "seed": 12}, tmp_path / "c")
    assert client.run_sync(other.transcript_hash()) != client.run_sync(first.transcript_hash())

    # Agents heard their neighbours: round 2's message lists exactly what the in-neighbours said in round 1.
    said = first.outbox(1)
    assert len(said) == 12 and all("news:" in text for text in said.values())
    agent = 5
    message = first.message_for(2, agent, said, [])
    for j in first.hears_from[agent]:
        assert f"- {first.profiles[j].name}: {said[j]}" in message
    assert len(first.hears_from[agent]) == 3
    # The metrics, per round, on disk; round 3 is when the fake model edits memory.
    rounds = first.metrics.rounds()
    assert [m.round for m in rounds] == [1, 2, 3]
    assert all(m.active_agents == 12 and m.errors == 0 for m in rounds)
    assert rounds[2].memory_edits == 12 and rounds[2].llm_calls == 24
    assert all(m.messages_delivered == 36 for m in rounds)
    human = client.get_agent(first.agent_ids[0]).blocks["human"].value
    assert "Round 3: heard from" in human
    assert first.plot().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_folder_is_not_reused_by_accident_and_resume_checks_the_config(
        client: Any, town_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    raw = town(town_llm, rounds=1, population={"count": 4}, topology={"kind": "all_to_all"})
    play(client, raw, tmp_path / "run")
    with pytest.raises(InvalidInputError, match="already holds a simulation"):
        play(client, raw, tmp_path / "run")
    with pytest.raises(InvalidInputError, match="differs from the run being resumed in: seed"):
        play(client, {**raw, "seed": 99}, tmp_path / "run", resume=True)
    with pytest.raises(InvalidInputError, match="nothing to resume"):
        play(client, raw, tmp_path / "empty", resume=True)
    more = play(client, {**raw, "rounds": 2}, tmp_path / "run", resume=True)  # extending is fine
    assert more.completed_rounds() == 2 and [r.round for r in more.reports] == [2]


def test_an_environment_hook_injects_events_and_activity_samples_agents(
        client: Any, town_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    raw = town(town_llm, rounds=2, activity=0.5, environment="sim_hooks:storm_in_round_2")
    sim = play(client, raw, tmp_path / "run")
    assert [r.metrics.active_agents for r in sim.reports] == [6, 6]
    assert sim.active(1) != sim.active(2)
    transcript = client.run_sync(sim.transcript())
    round_2 = [records[0]["content"] for key, records in transcript if key.startswith("r000002")]
    assert len(round_2) == 6
    assert all("- (event) A storm is coming" in text for text in round_2)


def test_the_llm_cap_holds_under_a_burst_and_429s_lose_no_turn(client: Any, tmp_path: Path) -> None:
    with FakeOpenAIServer(town_responder, latency_s=0.05) as server:
        handles = client.create_agents([
            client.build_agent_state(f"burst-{i}", model=f"openai/{server.model}", model_endpoint=server.url,
                                     agent_type="letta_v1_agent") for i in range(24)])
        before = client.set_llm_limits({"*": {"max_concurrent": 3}})
        try:
            turns = [(h.id, [MessageCreate(content=f"Round 1. hello {i}")], None) for i, h in enumerate(handles)]

            async def burst() -> list[Any]:
                return [r async for chunk in client.send_many_async(turns, concurrency=64) for r in chunk]

            results = client.run_sync(burst())
            assert server.max_in_flight == 3, server.max_in_flight  # the cap, reached and never passed
            assert all(r.error is None and r.response.stop_reason.stop_reason == "end_turn" for r in results)
            stats = client.llm_stats()[f"openai/{server.model}"]
            assert stats["max_in_flight"] == 3 and stats["in_flight"] == 0

            server.fail_next(4, 429)
            results = client.run_sync(burst())
            assert [r.response.stop_reason.stop_reason for r in results] == ["end_turn"] * 24
            assert len({r.agent_id for r in results}) == 24
        finally:
            client.set_llm_limits(before)
    assert client.llm_stats() is not None and client.set_llm_limits({}) == before


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of a session, and wait until they are gone."""
    deadline = time.monotonic() + 30
    while pids := _session_pids(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {pids} survive SIGKILL"
        time.sleep(0.05)


def journaled_turns(home: Path, round_no: int) -> set[str]:
    """Run ids of the turns of ``round_no`` the hosts have acknowledged (fsync'ed to their journals)."""
    found = set()
    for path in (home / "journal").glob("*.log"):
        found.update(re.findall(rf'"run_id":"(sim-[^"]*-r{round_no:06d}-a\d+)"', path.read_text(errors="replace")))
    return found


def test_a_run_killed_mid_round_resumes_with_no_turn_lost_or_doubled(
        client: Any, town_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    """The driver and its whole Ray are killed (SIGKILL) in the middle of round 2; --resume
    finishes the run, and the transcript equals an uninterrupted run's."""
    raw = town(town_llm, population={"count": 16}, concurrency=2, batch=2)
    config_path = tmp_path / "town.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    home, run_dir = tmp_path / "home", tmp_path / "home" / "run"
    env = {**os.environ, "LETTA_RAY_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "letta_ray.cli", "--address", "local", "sim", str(config_path), "--out", str(run_dir),
         "--no-progress"], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(journaled_turns(home, round_no=2)) < 3:  # some of round 2 acknowledged, not all
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the simulation did not get going"
            time.sleep(0.005)
    finally:
        kill_session(proc.pid)  # the driver, its Ray and every worker: as if the machine went down
        proc.wait()
    assert json.loads((run_dir / "progress.json").read_text())["completed"] == 1

    acknowledged = journaled_turns(home, round_no=2)

    # Resume on the test's Ray, against the killed run's data directory.
    with letta_ray.connect(home=str(home)) as again:
        resumed = play(again, raw, run_dir, resume=True)
        round_2 = resumed.reports[0]
        assert round_2.round == 2 and len(acknowledged) <= round_2.recovered < 16, round_2.recovered
        assert round_2.metrics.recovered == round_2.recovered and round_2.metrics.active_agents == 16
        assert turns_per_round(again, resumed) == {"r000001": 16, "r000002": 16, "r000003": 16}
        resumed_hash = again.run_sync(resumed.transcript_hash())
    uninterrupted = play(client, raw, tmp_path / "whole")
    assert resumed_hash == client.run_sync(uninterrupted.transcript_hash())


def test_the_sim_command_runs_a_config_and_prints_the_summary(
        client: Any, town_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    config_path = tmp_path / "town.yaml"
    config_path.write_text(yaml.safe_dump(town(town_llm, rounds=2, population={"count": 6},
                                               topology={"kind": "groups", "group_size": 3})))
    home = tmp_path / "home"  # its own data directory: the command stops its actors when it ends
    result = CliRunner().invoke(app, ["--home", str(home), "sim", str(config_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "6 agents ready" in result.output and "Transcript hash:" in result.output
    assert (tmp_path / "r" / "metrics.png").exists() and len(list((tmp_path / "r" / "metrics").iterdir())) == 2
    again = CliRunner().invoke(app, ["--home", str(home), "sim", str(config_path), "--out", str(tmp_path / "r")])
    assert again.exit_code == 1 and "--resume" in again.output


def test_bad_configs_fail_with_what_is_wrong(tmp_path: Path, town_llm: FakeOpenAIServer) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nrounds: 2\npopulation: {count: 7}\ntopology: {kind: random, degree: 3}\n")
    with pytest.raises(InvalidInputError, match="7 \\* 3 = 21"):
        load_config(path)
    path.write_text("name: t\nrounds: 0\npopulation: {count: 4}\n")
    with pytest.raises(InvalidInputError, match="rounds"):
        load_config(path)
    path.write_text("name: t\nrounds: 1\npopulation: {count: 4}\nroundz: 3\n")
    with pytest.raises(InvalidInputError, match="roundz"):
        load_config(path)
    path.write_text("name: [t\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(InvalidInputError, match="no simulation config"):
        load_config(tmp_path / "missing.yaml")
    config = parse_config({**town(town_llm), "prompt": "Round {round}: {gossip}"})
    with pytest.raises(InvalidInputError, match="uses \\{gossip\\}"):
        Simulation(config, None, tmp_path / "x", sim_id="t")  # type: ignore[arg-type]
