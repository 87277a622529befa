"""Running a simulation: create the population, then rounds of turns, resumable at any point.

In round ``r`` every active agent gets one message — what its neighbours said in round
``r - 1`` (plus any events the environment hook injects) — and takes one turn. Turns
go to the hosts in batches (one Ray call per few hundred agents), run concurrently
across agents and hosts, and stay in order within an agent.

Everything a run needs to continue lives in its folder and in the stores:

- ``sim.json`` — the config and the run's id;
- ``agents.parquet`` — agent index, name and id (ids are derived from the run's id, so
  a crash while creating agents is repaired by creating the missing ones);
- ``rounds/outbox-NNNNNN.parquet`` — what each agent said in a round (the next round's inbox);
- ``metrics/round-NNNNNN.parquet`` — one row of metrics per round, and ``metrics.png``;
- ``progress.json`` — the last completed round.

Each turn carries the run id ``sim-<run>-r<round>-a<agent>``, stored with the turn's
messages in the same durable write as the turn itself. A resumed round asks the store
which turns already happened and runs only the others: no turn is lost or doubled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from letta_ray.errors import InvalidInputError
from letta_ray.messages import LettaResponse, Message, MessageCreate, StopReason, UsageStatistics, to_events
from letta_ray.schemas import AgentState, CreateBlock

from ._files import write_bytes, write_parquet
from .config import PROMPT_FIELDS, SimConfig
from .metrics import MetricsLog, RoundMetrics, TurnOutcome, plot, round_metrics
from .population import Profile, build_population, template_fields
from .topology import build_topology, in_neighbours

if TYPE_CHECKING:
    from letta_ray.actors.client import Client
    from letta_ray.actors.host import TurnResult

log = logging.getLogger(__name__)

REPLY_CHARS = 600  # what of a reply reaches the neighbours' inboxes
_ID_NAMESPACE = uuid.UUID("5f0e6b1e-51a4-4c8e-9a43-6d1f3e0a7c21")

Environment = Callable[[int, list[Profile], random.Random], dict[int, list[str]]]
OnTurns = Callable[[int, int], None]  # (round, turns finished in this chunk)


@dataclass
class RoundReport:
    round: int
    metrics: RoundMetrics
    recovered: int  # turns found already done in the store (a resumed round)


def run_id_prefix(sim_id: str, round_no: int | None = None) -> str:
    return f"sim-{sim_id}-" if round_no is None else f"sim-{sim_id}-r{round_no:06d}-"


def turn_run_id(sim_id: str, round_no: int, index: int) -> str:
    return f"{run_id_prefix(sim_id, round_no)}a{index:07d}"


def _index_of(run_id: str) -> int:
    return int(run_id.rsplit("-a", 1)[1])


class Simulation:
    """One run of a ``SimConfig`` in a folder; ``await sim.run()`` plays its rounds."""

    def __init__(self, config: SimConfig, client: Client, run_dir: str | Path, *, sim_id: str) -> None:
        self.config = config
        self.client = client
        self.run_dir = Path(run_dir)
        self.sim_id = sim_id
        self.profiles = build_population(config.population, config.seed)
        config.topology.check(len(self.profiles))
        names = [p.name for p in self.profiles]
        self.talks_to = build_topology(config.topology, names, config.seed)
        self.hears_from = in_neighbours(self.talks_to)
        self._check_prompts()
        self.environment = _load_environment(config.environment)
        self.metrics = MetricsLog(self.run_dir)
        self.agent_ids: list[str] = [self._agent_id(p.index) for p in self.profiles]
        self._index_by_id = {agent_id: i for i, agent_id in enumerate(self.agent_ids)}

    # ---------------------------------------------------------------- opening a run

    @classmethod
    async def open(cls, config: SimConfig, client: Client, run_dir: str | Path, *, resume: bool = False
                   ) -> Simulation:
        """A new run in an empty ``run_dir``, or (``resume``) the run already there."""
        run_dir = Path(run_dir)
        marker = run_dir / "sim.json"
        if resume:
            if not marker.exists():
                raise InvalidInputError(f"nothing to resume in {run_dir}: no sim.json (start it without --resume)")
            saved = json.loads(marker.read_text())
            _check_same_config(saved["config"], config)
            sim = cls(config, client, run_dir, sim_id=saved["sim_id"])
        else:
            if marker.exists():
                raise InvalidInputError(f"{run_dir} already holds a simulation; continue it with --resume, "
                                        "or choose another output folder")
            sim_id = f"{config.name}-{uuid.uuid4().hex[:8]}"
            sim = cls(config, client, run_dir, sim_id=sim_id)
            write_bytes(marker, json.dumps({"sim_id": sim_id, "config": config.model_dump(mode="json"),
                                              "created_at": time.time()}, indent=2).encode())
        await sim._create_agents()
        return sim

    def _agent_id(self, index: int) -> str:
        return f"agent-{uuid.uuid5(_ID_NAMESPACE, f'{self.sim_id}/{index}')}"

    def _state(self, profile: Profile) -> AgentState:
        agent = self.config.agent
        state = self.client.build_agent_state(
            profile.name,
            model=agent.model,
            model_endpoint=agent.model_endpoint,
            context_window=agent.context_window,
            agent_type=agent.agent_type,
            system=agent.system,
            memory_blocks=[CreateBlock(label="persona", value=profile.persona),
                           CreateBlock(label="human", value=profile.human)],
            tools=agent.tools,
            include_base_tools=agent.include_base_tools,
            tags=[f"sim:{self.sim_id}", *agent.tags],
            metadata={"sim_id": self.sim_id, "sim_index": profile.index, **profile.fields},
            max_steps=agent.max_steps,
        )
        return state.model_copy(update={"id": self.agent_ids[profile.index]})

    async def _create_agents(self, chunk: int = 2_000) -> None:
        """Create the agents not created yet (all of them, unless resuming)."""
        existing = set(await self.client.existing_agents_async(self.agent_ids))
        missing = [p for p in self.profiles if self.agent_ids[p.index] not in existing]
        for start in range(0, len(missing), chunk):
            # every block is the population's own, new (none shared with a stored agent): the
            # hosts journal the agents (one fsync) rather than wait for DuckDB's transaction
            await self.client.create_agents_async([self._state(p) for p in missing[start:start + chunk]],
                                                  new_blocks=True)
        table = pa.table({"index": [p.index for p in self.profiles], "name": [p.name for p in self.profiles],
                          "agent_id": self.agent_ids})
        write_parquet(self.run_dir / "agents.parquet", table)

    def _check_prompts(self) -> None:
        available = set(PROMPT_FIELDS) | (set(self.profiles[0].fields) if self.profiles else set())
        for label, template in (("prompt", self.config.prompt), ("first_prompt", self.config.first_prompt)):
            unknown = template_fields(template) - available
            if unknown:
                raise InvalidInputError(f"the {label} template uses {', '.join('{' + f + '}' for f in sorted(unknown))}"
                                        f", which is not a field; available: {', '.join(sorted(available))}")

    # ---------------------------------------------------------------- progress

    def completed_rounds(self) -> int:
        path = self.run_dir / "progress.json"
        return int(json.loads(path.read_text())["completed"]) if path.exists() else 0

    def _mark_completed(self, round_no: int) -> None:
        write_bytes(self.run_dir / "progress.json", json.dumps({"completed": round_no}).encode())

    def _outbox_path(self, round_no: int) -> Path:
        return self.run_dir / "rounds" / f"outbox-{round_no:06d}.parquet"

    def outbox(self, round_no: int) -> dict[int, str]:
        """What each agent said in ``round_no`` (agents that stayed silent are absent)."""
        path = self._outbox_path(round_no)
        if round_no < 1 or not path.exists():
            return {}
        table = pq.read_table(path)
        return dict(zip(table.column("index").to_pylist(), table.column("text").to_pylist(), strict=True))

    # ---------------------------------------------------------------- rounds

    def active(self, round_no: int) -> list[int]:
        """The agents taking a turn in ``round_no`` (all, or a seeded share of them)."""
        everyone = list(range(len(self.profiles)))
        if self.config.activity >= 1.0:
            return everyone
        rng = random.Random(f"{self.config.seed}/active/{round_no}")
        return sorted(rng.sample(everyone, max(1, round(self.config.activity * len(everyone)))))

    def message_for(self, round_no: int, index: int, said: dict[int, str], events: list[str]) -> str:
        profile = self.profiles[index]
        lines = [f"- {self.profiles[j].name}: {said[j]}" for j in self.hears_from[index] if said.get(j)]
        lines += [f"- (event) {text}" for text in events]
        fields = {**profile.fields, "round": round_no, "name": profile.name,
                  "inbox": "\n".join(lines) if lines else "(no messages this round)"}
        template = self.config.first_prompt if round_no == 1 and not lines else self.config.prompt
        return template.format(**fields)

    async def run(self, rounds: int | None = None, *, on_turns: OnTurns | None = None) -> list[RoundReport]:
        """Play the rounds after the last completed one, up to ``rounds`` (default: the config's)."""
        last = rounds or self.config.rounds
        before: dict[str, Any] | None = None
        if self.config.llm_limits:
            before = await self.client.set_llm_limits_async(dict(self.config.llm_limits))
        reports = []
        try:
            first = self.completed_rounds() + 1
            for round_no in range(first, last + 1):
                # Only the first round played here can have turns from an earlier, stopped run.
                reports.append(await self.play_round(round_no, on_turns=on_turns, recover=round_no == first))
        finally:
            if before is not None:
                await self.client.set_llm_limits_async(before)
        return reports

    async def play_round(self, round_no: int, *, on_turns: OnTurns | None = None, recover: bool = True
                         ) -> RoundReport:
        """One round; ``recover`` first asks the store which of its turns already happened."""
        started = time.perf_counter()
        said = self.outbox(round_no - 1)
        events: dict[int, list[str]] = {}
        if self.environment is not None:
            rng = random.Random(f"{self.config.seed}/environment/{round_no}")
            events = self.environment(round_no, self.profiles, rng) or {}
        active = self.active(round_no)
        outcomes: dict[int, TurnOutcome] = {}
        recovered = await self._recover(round_no, active, outcomes) if recover else 0
        if on_turns is not None and recovered:
            on_turns(round_no, recovered)
        todo = [i for i in active if i not in outcomes]
        for attempt in range(2):  # a second pass only for turns whose host died under them
            turns = [(self.agent_ids[i],
                      [MessageCreate(content=self.message_for(round_no, i, said, events.get(i, [])))],
                      turn_run_id(self.sim_id, round_no, i)) for i in todo]
            lost: list[int] = []
            async for results in self.client.send_many_async(turns, concurrency=self.config.concurrency,
                                                             chunk=self.config.batch):
                for result in results:
                    index = self._index_by_id[result.agent_id]
                    if result.error is not None and result.error.startswith("host died") and attempt == 0:
                        lost.append(index)
                        continue
                    outcomes[index] = _outcome(index, result)
                if on_turns is not None:
                    on_turns(round_no, len(results))
            if not lost:
                break
            log.warning("round %d: %d turns lost their host; checking the store and retrying", round_no, len(lost))
            await self._recover(round_no, lost, outcomes)
            todo = [i for i in lost if i not in outcomes]
        texts = {i: _reply_text(o.response) for i, o in sorted(outcomes.items()) if o.response is not None}
        texts = {i: t[:REPLY_CHARS] for i, t in texts.items() if t}
        write_parquet(self._outbox_path(round_no), pa.table({"index": pa.array(list(texts), pa.int64()),
                                                              "text": pa.array(list(texts.values()), pa.string())}))
        delivered = sum(1 for i in active for j in self.hears_from[i] if texts.get(j))
        metrics = round_metrics(round_no, [outcomes[i] for i in sorted(outcomes)], time.perf_counter() - started,
                                delivered)
        self.metrics.append(metrics)
        self._mark_completed(round_no)
        return RoundReport(round_no, metrics, recovered)

    async def _recover(self, round_no: int, indices: list[int], outcomes: dict[int, TurnOutcome]) -> int:
        """Outcomes of the turns of ``round_no`` the store already has (from before a crash)."""
        runs: dict[str, list[Message]] = await self.client.messages_of_runs_async(run_id_prefix(self.sim_id, round_no))
        wanted = set(indices)
        found = 0
        for run_id, messages in runs.items():
            index = _index_of(run_id)
            if index in wanted and index not in outcomes:
                outcomes[index] = TurnOutcome(index, 0.0, _stored_response(messages, self.config.agent.agent_type),
                                              recovered=True)
                found += 1
        return found

    # ---------------------------------------------------------------- results

    async def transcript(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Every turn of the run in (round, agent) order, as comparable records (no ids, no times)."""
        runs = await self.client.messages_of_runs_async(run_id_prefix(self.sim_id))
        return [(run_id.removeprefix(run_id_prefix(self.sim_id)), [_canonical(m) for m in runs[run_id]])
                for run_id in sorted(runs)]

    async def transcript_hash(self) -> str:
        """A digest of the transcript: equal for two runs that said and did the same things."""
        digest = hashlib.sha256()
        for key, records in await self.transcript():
            digest.update(json.dumps([key, records], sort_keys=True).encode())
        return digest.hexdigest()

    def plot(self) -> Path | None:
        table = self.metrics.table()
        return plot(table, self.run_dir / "metrics.png") if table.num_rows else None


# ---------------------------------------------------------------- helpers


def _load_environment(spec: str | None) -> Environment | None:
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"cannot load the environment hook {spec!r}: {exc}") from exc
    if not callable(function):
        raise InvalidInputError(f"the environment hook {spec!r} is not callable")
    return function


def _check_same_config(saved: dict[str, Any], config: SimConfig) -> None:
    now = config.model_dump(mode="json")
    changed = sorted(k for k in set(saved) | set(now) if k != "rounds" and saved.get(k) != now.get(k))
    if changed:
        raise InvalidInputError(f"the config differs from the run being resumed in: {', '.join(changed)} "
                                "(only 'rounds' may change on --resume)")


def _outcome(index: int, result: TurnResult) -> TurnOutcome:
    return TurnOutcome(index, result.latency_s, result.response, result.error)


def _reply_text(response: LettaResponse | None) -> str:
    return response.assistant_text().strip() if response is not None else ""


def _stored_response(messages: list[Message], agent_type: str) -> LettaResponse:
    """A recovered turn as a response (its usage and latency were not kept)."""
    events = [e for m in messages if m.role != "user" for e in to_events(
        m, uses_send_message=agent_type == "memgpt_v2_agent")]
    return LettaResponse(messages=events, stop_reason=StopReason(stop_reason="end_turn"), usage=UsageStatistics())


def _canonical(message: Message) -> dict[str, Any]:
    content = message.content
    if isinstance(content, str) and content.startswith("{"):
        try:
            packed = json.loads(content)
        except json.JSONDecodeError:
            packed = None
        if isinstance(packed, dict):
            packed.pop("time", None)
            content = json.dumps(packed, sort_keys=True)
    return {
        "role": message.role,
        "content": content,
        "tool_calls": [(c.name, c.arguments) for c in message.tool_calls or []],
        "name": message.name,
        "status": message.tool_status,
    }


def run(config: SimConfig, client: Client, out: str | Path | None = None, *, resume: bool = False,
        rounds: int | None = None, on_turns: OnTurns | None = None) -> Simulation:
    """Open (or ``resume``) a run of ``config`` in ``out`` (default ``<home>/sims/<name>``) and
    play its rounds; returns the ``Simulation`` (metrics, transcript, plot)."""
    run_dir = Path(out) if out is not None else client.settings.home / "sims" / config.name

    async def go() -> Simulation:
        sim = await Simulation.open(config, client, run_dir, resume=resume)
        await sim.run(rounds, on_turns=on_turns)
        return sim

    return client.run_sync(go())
