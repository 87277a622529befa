"""The group schema: a stored group, shaped like Letta's, and its manager configs.

How a group runs is ``letta_ray.group_policies``; the supervisor's fan-out tool is
``letta_ray.group_tools``; on the runtime, ``letta_ray.actors.groups_api``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from letta_ray.errors import InvalidInputError, describe_validation_error
from letta_ray.schemas import new_id, utcnow

GROUP_TOOL = "send_message_to_all_agents_in_group"
DEFAULT_TERMINATION_TOKEN = "DONE"


def group_tag(group_id: str) -> str:
    """The tag every worker of a group carries; the supervisor's fan-out targets it."""
    return f"group:{group_id}"


# --------------------------------------------------------------------------- schema


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


ManagerType = Literal["round_robin", "supervisor", "dynamic", "sleeptime"]


class RoundRobinManager(_Model):
    manager_type: Literal["round_robin"] = "round_robin"
    max_turns: int | None = Field(default=None, ge=1, description="speaker turns per run; default: each agent once")


class SupervisorManager(_Model):
    manager_type: Literal["supervisor"] = "supervisor"
    manager_agent_id: str = Field(description="the agent that fans messages out to the workers and answers")


class DynamicManager(_Model):
    manager_type: Literal["dynamic"] = "dynamic"
    manager_agent_id: str = Field(description="the agent that picks each next speaker")
    termination_token: str = Field(default=DEFAULT_TERMINATION_TOKEN, min_length=1)
    max_turns: int | None = Field(default=None, ge=1, description="speaker turns per run; default: one per agent")


class SleeptimeManager(_Model):
    manager_type: Literal["sleeptime"] = "sleeptime"
    manager_agent_id: str = Field(description="the main agent whose turns wake the sleep-time agents")
    sleeptime_agent_frequency: int | None = Field(default=None, ge=1)


ManagerConfig = Annotated[
    RoundRobinManager | SupervisorManager | DynamicManager | SleeptimeManager,
    Field(discriminator="manager_type"),
]
MANAGER_CONFIG_ADAPTER: TypeAdapter[ManagerConfig] = TypeAdapter(ManagerConfig)


def parse_manager_config(value: ManagerConfig | dict[str, Any] | None) -> ManagerConfig:
    """A manager config from a model or a dict like ``{"manager_type": "dynamic", ...}``."""
    if value is None:
        return RoundRobinManager()
    if isinstance(value, RoundRobinManager | SupervisorManager | DynamicManager | SleeptimeManager):
        return value
    try:
        return MANAGER_CONFIG_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid manager_config {value!r}: {describe_validation_error(exc)}") from exc


class GroupCreate(_Model):
    """What a caller sends to create a group (Letta's ``GroupCreate``)."""

    agent_ids: list[str] = Field(min_length=1, description="the group's agents (at least one)")
    description: str = ""
    manager_config: ManagerConfig = Field(default_factory=RoundRobinManager)


class Group(_Model):
    """A stored group, flat like Letta's ``Group``; ``manager_config`` rebuilds the config."""

    id: str = Field(default_factory=lambda: new_id("group"))
    manager_type: ManagerType
    agent_ids: list[str]
    description: str = ""
    manager_agent_id: str | None = None
    termination_token: str | None = None
    max_turns: int | None = None
    sleeptime_agent_frequency: int | None = None
    shared_block_ids: list[str] = Field(default_factory=list)
    turns_counter: int | None = None
    last_processed_message_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        """Accept the create shape too: ``manager_config`` nested instead of flat fields."""
        if isinstance(data, dict) and "manager_type" not in data and isinstance(data.get("manager_config"), dict):
            return {**data, **data["manager_config"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Group:
        if not self.agent_ids:
            raise InvalidInputError("a group needs at least one agent in agent_ids")
        dupes = sorted({a for a in self.agent_ids if self.agent_ids.count(a) > 1})
        if dupes:
            raise InvalidInputError(f"agent_ids lists {', '.join(dupes)} more than once")
        if self.manager_type != "round_robin" and not self.manager_agent_id:
            raise InvalidInputError(f"a {self.manager_type} group needs a manager_agent_id")
        if self.manager_type in ("supervisor", "dynamic") and self.manager_agent_id in self.agent_ids:
            raise InvalidInputError(f"the manager {self.manager_agent_id} cannot also be one of the group's "
                                    "agent_ids; list only the workers there")
        return self

    @classmethod
    def create(cls, agent_ids: list[str], manager_config: ManagerConfig | dict[str, Any] | None = None,
               description: str = "") -> Group:
        """A new group from a manager config; raises InvalidInputError."""
        config = parse_manager_config(manager_config)
        try:
            return cls(agent_ids=list(agent_ids), description=description, **config.model_dump())
        except ValidationError as exc:
            raise InvalidInputError(f"invalid group: {describe_validation_error(exc)}") from exc

    @property
    def manager_config(self) -> ManagerConfig:
        fields = self.model_dump(include={"manager_type", "manager_agent_id", "termination_token", "max_turns",
                                          "sleeptime_agent_frequency"}, exclude_none=True)
        return MANAGER_CONFIG_ADAPTER.validate_python(fields)

    @property
    def turns(self) -> int:
        return self.max_turns or len(self.agent_ids)

    def to_doc(self) -> dict[str, Any]:
        """The stored JSON document: the flat fields and, for readers of the create shape, ``manager_config``."""
        return {**self.model_dump(mode="json"), "manager_config": self.manager_config.model_dump(mode="json")}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Group:
        return cls.model_validate(doc)
