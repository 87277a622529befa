"""What a simulation is: the YAML file ``letta-ray sim`` reads, as a pydantic model.

A minimal config::

    name: town
    seed: 7
    rounds: 3
    population: {count: 50}
    topology: {kind: small_world, degree: 4}
    agent: {model: openai/gpt-4o-mini}

Relative paths inside it (profiles, edge lists) are taken relative to the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from letta_ray.errors import InvalidInputError
from letta_ray.schemas import LLMLimit

from .population import PopulationSpec
from .topology import TopologySpec

DEFAULT_PROMPT = (
    "Round {round} of the simulation.\n"
    "Messages your neighbours sent you:\n{inbox}\n\n"
    "Reply with one short message for your neighbours: your news, or what you make of theirs."
)
DEFAULT_FIRST_PROMPT = (
    "Round {round}: the simulation begins. Introduce yourself to your neighbours in one short message "
    "and share one piece of news from your life."
)
PROMPT_FIELDS = ("round", "inbox", "name")


class AgentTemplate(BaseModel):
    """How every agent of the population is made (its blocks come from the population)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="litellm model string; default: the client's default")
    model_endpoint: str | None = None
    context_window: int | None = Field(default=None, ge=1000)
    agent_type: Literal["memgpt_v2_agent", "letta_v1_agent"] = "letta_v1_agent"
    system: str | None = None
    tools: list[str] | None = Field(default=None, description="tools besides the base tools of the agent type")
    include_base_tools: bool = True
    max_steps: int = Field(default=6, ge=1, le=100)
    tags: list[str] = Field(default_factory=list)


class SimConfig(BaseModel):
    """A simulation: who (population, agent), who hears whom (topology), and for how long."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    rounds: int = Field(ge=1)
    population: PopulationSpec
    topology: TopologySpec = Field(default_factory=TopologySpec)
    agent: AgentTemplate = Field(default_factory=AgentTemplate)
    prompt: str = Field(default=DEFAULT_PROMPT, description="the message of each round; fields: "
                        "{round}, {inbox}, {name} and the agent's profile fields")
    first_prompt: str = Field(default=DEFAULT_FIRST_PROMPT, description="the message of round 1")
    activity: float = Field(default=1.0, gt=0, le=1, description="share of agents taking a turn each round "
                            "(drawn with the seed)")
    environment: str | None = Field(default=None, description="'module:function' called before each round "
                                    "as fn(round, profiles, rng) -> {agent index: [event text, ...]}")
    llm_limits: dict[str, LLMLimit] = Field(default_factory=dict, description="cluster-wide LLM caps while "
                                            "the simulation runs, per model ('*': any model)")
    concurrency: int = Field(default=256, ge=1, description="turns in flight per host")
    batch: int = Field(default=250, ge=1, description="turns per call to a host")

    @field_validator("environment")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and ":" not in value:
            raise ValueError(f"environment must be 'module:function', got {value!r}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> SimConfig:
        count = self.population.count
        if count is not None:
            self.topology.check(count)
        return self


def load_config(path: str | Path, **overrides: Any) -> SimConfig:
    """Read a YAML config; ``overrides`` replace top-level keys. Raises InvalidInputError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"no simulation config at {path}") from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path} must hold a mapping of settings, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    base = path.resolve().parent
    population, topology = raw.get("population"), raw.get("topology")
    if isinstance(population, dict) and isinstance(population.get("profiles"), str):
        population["profiles"] = str(base / population["profiles"])
    if isinstance(topology, dict) and isinstance(topology.get("edges"), str):
        topology["edges"] = str(base / topology["edges"])
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], *, source: str = "the simulation config") -> SimConfig:
    try:
        return SimConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'config'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInputError(f"{source}: {problems}") from exc
