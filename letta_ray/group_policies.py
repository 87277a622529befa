"""Group policies: several agents answering one message together, taking turns by a rule.

A group is persisted like an agent (``Group``, shaped like Letta's) and sent a message
like an agent; it answers with every participant's messages in order, one stop reason
and the summed usage. The policies are plain async functions over ``GroupMembers`` (a
``send(agent_id, messages)``), so they run the same against Ray hosts and in unit tests:

- ``round_robin``: the agents speak in turn, ``max_turns`` turns in all (default: each
  once); each speaker's input is what was said since it last spoke, prefixed by who said it.
- ``dynamic``: before each turn the manager agent is shown the participants and the
  transcript and names the next speaker; it ends the run by answering with the
  termination token (a participant saying the token ends it too), or ``max_turns`` does.
- ``supervisor``: the manager agent gets the message and fans it out to the workers with
  ``send_message_to_all_agents_in_group`` (``letta_ray.group_tools``); the response shows
  each worker's turn inside the manager's tool call.
- ``sleeptime``: stored here; run by the sleep-time machinery, not by ``run_group``.

What a participant has not yet seen when a run ends is returned as a backlog, so the
caller can keep it and hand it over on the next run (the conversation stays whole).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from letta_ray.errors import InvalidInputError
from letta_ray.group_schema import (
    DEFAULT_TERMINATION_TOKEN,
    GROUP_TOOL,
    MANAGER_CONFIG_ADAPTER,
    DynamicManager,
    Group,
    GroupCreate,
    ManagerConfig,
    ManagerType,
    RoundRobinManager,
    SleeptimeManager,
    SupervisorManager,
    group_tag,
    parse_manager_config,
)
from letta_ray.input_limits import InputLimits
from letta_ray.messages import (
    AssistantMessage,
    LettaMessage,
    LettaResponse,
    Message,
    MessageCreate,
    StopReason,
    SystemMessage,
    ToolCallMessage,
    ToolReturnMessage,
    UsageStatistics,
    UserMessage,
    to_events,
)
from letta_ray.messages import as_messages as to_messages

__all__ = [
    "DEFAULT_TERMINATION_TOKEN",
    "GROUP_TOOL",
    "MANAGER_CONFIG_ADAPTER",
    "Backlog",
    "DynamicManager",
    "Group",
    "GroupCreate",
    "GroupMembers",
    "GroupTurn",
    "ManagerConfig",
    "ManagerType",
    "Participant",
    "RoundRobinManager",
    "SleeptimeManager",
    "SupervisorManager",
    "TurnLog",
    "Utterance",
    "as_messages",
    "group_tag",
    "parse_manager_config",
    "pick_speaker",
    "run_dynamic",
    "run_group",
    "run_round_robin",
    "run_supervisor",
    "stored_events",
]

MAX_BACKLOG = 100
"""Most utterances kept per participant between runs (the oldest are dropped)."""

# A participant's turn that stopped for one of these reasons stops the whole run.
_FATAL = frozenset({"error", "llm_api_error", "invalid_tool_call", "context_window_overflow", "cancelled",
                    "requires_approval"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- the conversation


class Utterance(_Model):
    """One thing said in a group: by the user (``speaker_id`` None) or by a participant."""

    speaker_id: str | None = None
    name: str
    text: str
    original: MessageCreate | None = Field(default=None, description="the user's message, passed on as sent")

    def line(self) -> str:
        return f"{self.name}: {self.text}"

    def as_input(self) -> MessageCreate:
        """How another participant receives it: prefixed with who said it."""
        if self.original is not None:
            return self.original
        return MessageCreate(content=self.line(), name=self.name, sender_id=self.speaker_id)


Backlog = dict[str, list[Utterance]]


class _Conversation:
    """The transcript of one run, and how far each participant has read it."""

    def __init__(self, backlog: Backlog | None) -> None:
        self.log: list[Utterance] = []
        self.read: dict[str, int] = {}
        self.backlog = {k: list(v) for k, v in (backlog or {}).items()}

    def add(self, utterances: list[Utterance]) -> None:
        self.log.extend(utterances)

    def unseen(self, agent_id: str) -> list[Utterance]:
        return self.backlog.get(agent_id, []) + self.log[self.read.get(agent_id, 0):]

    def take_unseen(self, agent_id: str) -> list[Utterance]:
        """What ``agent_id`` missed; from now on it counts as read."""
        missed = self.unseen(agent_id)
        self.backlog.pop(agent_id, None)
        self.read[agent_id] = len(self.log)
        return missed

    def mark_read(self, agent_id: str) -> None:
        self.read[agent_id] = len(self.log)

    def leftover(self, agent_ids: list[str]) -> Backlog:
        out = {a: self.unseen(a)[-MAX_BACKLOG:] for a in agent_ids}
        return {a: items for a, items in out.items() if items}


def user_utterances(messages: list[MessageCreate]) -> list[Utterance]:
    return [Utterance(name=m.name or "user", text=m.text(), original=m) for m in messages]


def as_messages(message: str | MessageCreate | list[Any], *, limits: InputLimits | None = None
                ) -> list[MessageCreate]:
    """A group's input: text, a ``MessageCreate``, or a list of them (or of dicts), within ``limits``."""
    out = to_messages(message, to="a group", limits=limits)
    if not all(isinstance(m, MessageCreate) for m in out):
        raise InvalidInputError("a group is sent new messages (MessageCreate), not stored ones")
    if not any(m.text().strip() for m in out):
        raise InvalidInputError("no message to send to the group")
    return [m for m in out if isinstance(m, MessageCreate)]


# --------------------------------------------------------------------------- protocols and results


class GroupMembers(Protocol):
    """How a policy reaches the agents of a group."""

    async def send(self, agent_id: str, messages: list[MessageCreate]) -> LettaResponse: ...


class TurnLog(Protocol):
    """Reads what agents said after a point: how a supervisor's answer shows its workers' turns."""

    async def position(self, agent_id: str) -> str | None:
        """The id of the agent's newest stored message (None if it has none)."""
        ...

    async def events_after(self, agent_id: str, position: str | None) -> list[LettaMessage]:
        """The agent's events (not its inbound messages) stored after ``position``."""
        ...


@dataclass
class Participant:
    id: str
    name: str


@dataclass
class GroupTurn:
    """The result of one run: the group's response and what each participant has not seen."""

    response: LettaResponse
    backlog: Backlog = field(default_factory=dict)


class _Run:
    """Accumulates the response of one run: events in order, usage, stop reason."""

    def __init__(self) -> None:
        self.events: list[LettaMessage] = []
        self.usage = UsageStatistics()
        self.stop: StopReason | None = None

    def record(self, who: Participant, response: LettaResponse) -> bool:
        """Add one agent's turn; False when it failed and the run must stop.

        The turn's inbound messages are left out: the group response shows what the
        participants said and did, not what the policy relayed to them.
        """
        said = [m for m in response.messages if not isinstance(m, UserMessage | SystemMessage)]
        self.events.extend(attributed(said, who))
        self.add_usage(response.usage)
        reason = response.stop_reason
        if reason.stop_reason in _FATAL:
            detail = f"{who.name} ({who.id}) stopped with {reason.stop_reason}"
            self.stop = StopReason(stop_reason=reason.stop_reason,
                                   detail=f"{detail}: {reason.detail}" if reason.detail else detail)
            return False
        return True

    def add_usage(self, usage: UsageStatistics) -> None:
        self.usage.add(usage.prompt_tokens, usage.completion_tokens)
        self.usage.step_count += usage.step_count
        if usage.run_ids:
            self.usage.run_ids = [*(self.usage.run_ids or []), *usage.run_ids]

    def response(self, default: StopReason | None = None) -> LettaResponse:
        stop = self.stop or default or StopReason(stop_reason="end_turn")
        return LettaResponse(messages=self.events, stop_reason=stop, usage=self.usage)


def attributed(events: list[LettaMessage], who: Participant) -> list[LettaMessage]:
    """Mark events as ``who``'s: ``sender_id`` is its id and ``name`` its name, as Letta does.

    A tool return keeps its ``name``, which is the tool's.
    """
    out: list[LettaMessage] = []
    for event in events:
        update: dict[str, Any] = {"sender_id": who.id}
        if not isinstance(event, ToolReturnMessage):
            update["name"] = who.name
        out.append(event.model_copy(update=update))
    return out


def _said(response: LettaResponse, who: Participant) -> list[Utterance]:
    return [Utterance(speaker_id=who.id, name=who.name, text=m.content)
            for m in response.messages if isinstance(m, AssistantMessage)]


def _nothing_new(name: str) -> MessageCreate:
    return MessageCreate(content=f"[group] It is your turn again, {name}; nobody has spoken since your last turn.")


# --------------------------------------------------------------------------- policies


async def _speak(members: GroupMembers, who: Participant, conversation: _Conversation, run: _Run) -> list[Utterance]:
    """One speaker turn: send the speaker what it missed, record what it said."""
    missed = conversation.take_unseen(who.id)
    inputs = [u.as_input() for u in missed] or [_nothing_new(who.name)]
    response = await members.send(who.id, inputs)
    said = _said(response, who)
    conversation.add(said)
    conversation.mark_read(who.id)
    return said if run.record(who, response) else []


async def run_round_robin(group: Group, messages: list[MessageCreate], members: GroupMembers,
                          participants: list[Participant], backlog: Backlog | None = None) -> GroupTurn:
    """The agents speak in ``agent_ids`` order, ``max_turns`` speaker turns in all."""
    conversation = _Conversation(backlog)
    conversation.add(user_utterances(messages))
    run = _Run()
    for turn in range(group.turns):
        await _speak(members, participants[turn % len(participants)], conversation, run)
        if run.stop is not None:
            break
    return GroupTurn(run.response(), conversation.leftover([p.id for p in participants]))


def choose_speaker_prompt(group: Group, participants: list[Participant], transcript: list[Utterance]) -> str:
    """What the dynamic manager is asked before each speaker turn."""
    roster = "\n".join(f"- {p.name} (id {p.id})" for p in participants)
    lines = "\n".join(u.line() for u in transcript) or "(nothing yet)"
    about = f"The group: {group.description}\n" if group.description else ""
    return (
        "[group manager] You choose who speaks next in a group chat. Do not answer the messages "
        f"yourself.\n{about}Participants:\n{roster}\nTranscript so far:\n{lines}\n\n"
        "Reply with only the name or id of the participant who should speak next. If the "
        f"conversation has reached its goal, reply with only {group.termination_token}."
    )


def pick_speaker(text: str, participants: list[Participant], termination_token: str) -> Participant | str | None:
    """The participant the manager named, the termination token, or None if it named neither.

    The token wins; an id wins over a name; among names the first mentioned wins.
    """
    if termination_token in text:
        return termination_token
    for p in participants:
        if p.id in text:
            return p
    found: list[tuple[int, Participant]] = []
    for p in participants:
        match = re.search(rf"(?<![\w-]){re.escape(p.name)}(?![\w-])", text, flags=re.IGNORECASE)
        if match:
            found.append((match.start(), p))
    return min(found, key=lambda hit: hit[0])[1] if found else None


async def run_dynamic(group: Group, messages: list[MessageCreate], members: GroupMembers, manager: Participant,
                      participants: list[Participant], backlog: Backlog | None = None) -> GroupTurn:
    """The manager names each next speaker until it answers with the termination token."""
    token = group.termination_token or DEFAULT_TERMINATION_TOKEN
    conversation = _Conversation(backlog)
    conversation.add(user_utterances(messages))
    run = _Run()
    ended = False
    for _ in range(group.turns):
        ask = MessageCreate(content=choose_speaker_prompt(group, participants, conversation.log))
        choice: Participant | str | None = None
        for attempt in range(2):  # one correction if the manager named nobody
            response = await members.send(manager.id, [ask])
            if not run.record(manager, response):
                return GroupTurn(run.response(), conversation.leftover([p.id for p in participants]))
            answer = response.assistant_text()
            choice = pick_speaker(answer, participants, token)
            if choice is not None or attempt == 1:
                break
            names = ", ".join(p.name for p in participants)
            ask = MessageCreate(content=f"[group manager] {answer!r} names no participant. Reply with exactly one "
                                        f"of: {names}, or {token} to end the conversation.")
        if choice is None:
            run.stop = StopReason(stop_reason="error", detail=f"the manager {manager.name} named no participant: "
                                                              f"{response.assistant_text()!r}")
            break
        if choice == token:
            ended = True
            break
        assert isinstance(choice, Participant)
        said = await _speak(members, choice, conversation, run)
        if run.stop is not None:
            break
        if any(token in u.text for u in said):  # a participant may close the conversation too
            ended = True
            break
    leftover = conversation.leftover([p.id for p in participants])
    if ended or run.stop is not None:
        return GroupTurn(run.response(), leftover)
    limit = StopReason(stop_reason="max_steps",
                       detail=f"the group reached max_turns={group.turns} before the manager said {token}")
    return GroupTurn(run.response(limit), leftover)


async def run_supervisor(group: Group, messages: list[MessageCreate], members: GroupMembers, manager: Participant,
                         workers: list[Participant], log: TurnLog | None = None) -> GroupTurn:
    """The manager answers, fanning the message out to the workers with its group tool.

    With a ``log`` the workers' turns are read back and shown inside the manager's
    tool call, each worker's turn whole, in ``agent_ids`` order; without one the
    response holds the manager's messages (the workers' replies are in its tool return).
    The usage is the manager's: the workers' turns report theirs to the messenger, not here.
    """
    before = {w.id: await log.position(w.id) for w in workers} if log is not None else {}
    response = await members.send(manager.id, messages)
    run = _Run()
    run.record(manager, response)
    if log is None:
        return GroupTurn(run.response())
    worker_events: list[tuple[int, LettaMessage]] = []
    for index, w in enumerate(workers):
        worker_events += [(index, e) for e in attributed(await log.events_after(w.id, before[w.id]), w)]
    run.events = _interleave(run.events, worker_events)
    return GroupTurn(run.response())


def _interleave(manager_events: list[LettaMessage], worker_events: list[tuple[int, LettaMessage]]
                ) -> list[LettaMessage]:
    """Put worker events just before the return of the fan-out call they happened in."""
    calls = {e.tool_call.tool_call_id for e in manager_events
             if isinstance(e, ToolCallMessage) and e.tool_call.name == GROUP_TOOL}
    pending = list(worker_events)
    out: list[LettaMessage] = []
    for event in manager_events:
        if isinstance(event, ToolReturnMessage) and event.tool_call_id in calls:
            now = [(i, e) for i, e in pending if e.date <= event.date]
            pending = [(i, e) for i, e in pending if e.date > event.date]
            out += [e for _, e in sorted(now, key=lambda pair: pair[0])]  # stable: each worker's turn stays whole
        out.append(event)
    out += [e for _, e in sorted(pending, key=lambda pair: pair[0])]
    return out


async def run_group(group: Group, messages: list[MessageCreate], members: GroupMembers, names: dict[str, str], *,
                    backlog: Backlog | None = None, log: TurnLog | None = None) -> GroupTurn:
    """Run one message through ``group``'s policy; ``names`` maps every agent id to its name."""
    def who(agent_id: str) -> Participant:
        return Participant(agent_id, names.get(agent_id, agent_id))

    agents = [who(a) for a in group.agent_ids]
    if group.manager_type == "round_robin":
        return await run_round_robin(group, messages, members, agents, backlog)
    assert group.manager_agent_id is not None
    manager = who(group.manager_agent_id)
    if group.manager_type == "dynamic":
        return await run_dynamic(group, messages, members, manager, agents, backlog)
    if group.manager_type == "supervisor":
        return await run_supervisor(group, messages, members, manager, agents, log)
    raise InvalidInputError(f"group {group.id} is a sleep-time group: it runs alongside its main agent "
                            f"{group.manager_agent_id}; send messages to that agent instead")


def stored_events(messages: list[Message], *, uses_send_message: bool) -> list[LettaMessage]:
    """The events of stored messages as a turn's response shows them (inbound messages left out)."""
    return [e for m in messages if m.role not in ("user", "system")
            for e in to_events(m, uses_send_message=uses_send_message)]
