"""Messages: the stored form (``Message``) and the typed events a caller sees.

A stored ``Message`` is what goes into the context window and into recall. The events
(``assistant_message``, ``tool_call_message``, ...) are Letta's ``LettaMessage`` views
of stored messages, named and shaped like Letta's so the HTTP layer returns them as-is.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from letta_ray.errors import InvalidInputError, describe_validation_error
from letta_ray.schemas import new_id, utcnow

if TYPE_CHECKING:
    from letta_ray.input_limits import InputLimits

Role = Literal["system", "user", "assistant", "tool"]

StopReasonType = Literal[
    "end_turn",
    "error",
    "llm_api_error",
    "invalid_tool_call",
    "max_steps",
    "no_tool_call",
    "tool_rule",
    "cancelled",
    "requires_approval",
    "context_window_overflow",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolCall(_Model):
    """One function call requested by the model."""

    id: str = Field(default_factory=lambda: new_id("call"))
    name: str
    arguments: str = Field(default="{}", description="JSON text, exactly as the model wrote it")


class Message(_Model):
    """One message of an agent's history, in the form the LLM sees it."""

    id: str = Field(default_factory=lambda: new_id("message"))
    agent_id: str
    role: Role
    content: str | None = None
    reasoning: str | None = Field(default=None, description="provider reasoning, if any")
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    tool_status: Literal["success", "error"] | None = None
    name: str | None = Field(default=None, description="the tool name, on tool messages")
    sender_id: str | None = Field(default=None, description="the agent that sent this, if any")
    created_at: datetime = Field(default_factory=utcnow)
    step_id: str | None = None
    run_id: str | None = None
    conversation_id: str | None = Field(default=None, description="the conversation it belongs to (none: the "
                                        "agent's default one)")
    group_id: str | None = None
    otid: str | None = None
    approval_required: list[str] = Field(
        default_factory=list, description="ids of this message's tool calls that waited for approval")

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat format, which litellm accepts for every provider."""
        out: dict[str, Any] = {"role": self.role}
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
            out["content"] = self.content or ""
            return out
        if self.role == "assistant" and self.tool_calls:
            out["content"] = self.content
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
            return out
        out["content"] = self.content or ""
        return out


class ApprovalDecision(_Model):
    """The answer to one tool call a turn stopped for: a person's approval (Letta's
    ``ApprovalReturn``: ``approve`` and a ``reason``), or the result of a tool the caller
    ran itself (``ToolReturn``: type "tool", ``tool_return`` and ``status``)."""

    type: Literal["approval", "tool"] = "approval"
    tool_call_id: str = Field(min_length=1)
    approve: bool | None = None
    reason: str | None = None
    tool_return: str | list[dict[str, Any]] | None = None
    status: Literal["success", "error"] | None = None
    stdout: list[str] | None = None
    stderr: list[str] | None = None

    @model_validator(mode="after")
    def _answer(self) -> ApprovalDecision:
        if self.type == "approval" and self.approve is None:
            raise ValueError(f"the approval of {self.tool_call_id} needs approve (true or false)")
        if self.type == "tool" and (self.tool_return is None or self.status is None):
            raise ValueError(f"the tool return for {self.tool_call_id} needs tool_return and status")
        return self

    def return_text(self) -> str:
        if isinstance(self.tool_return, list):
            return "\n".join(str(part.get("text", "")) for part in self.tool_return if isinstance(part, dict))
        return self.tool_return or ""


class MessageCreate(_Model):
    """What a caller sends to an agent (Letta's ``MessageCreate``), or, with
    ``type="approval"``, the answer to the tool calls a turn stopped for (``ApprovalCreate``)."""

    type: Literal["message", "approval"] = "message"
    role: Literal["user", "system", "assistant"] = Field(
        default="user", description="'assistant': words put in the agent's mouth, e.g. to seed a conversation")
    content: str | list[dict[str, Any]] = ""
    name: str | None = None
    sender_id: str | None = None
    otid: str | None = None
    approvals: list[ApprovalDecision] | None = None
    # Letta's older form of one approval: the approval request's message id
    approve: bool | None = None
    approval_request_id: str | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _approval_or_text(self) -> MessageCreate:
        if self.type == "approval":
            if not self.approvals and self.approve is None:
                raise ValueError("an approval message needs approvals (or approve and approval_request_id)")
        elif self.approvals or self.approve is not None:
            raise ValueError("approvals go in a message of type 'approval'")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(part.get("text", "")) for part in self.content if isinstance(part, dict))


def as_messages(message: Any, *, to: str = "an agent", limits: InputLimits | None = None
                ) -> list[MessageCreate | Message]:
    """What a caller sends ``to`` someone as messages: text, a message, or a list of them
    (or of dicts shaped like ``MessageCreate``); InvalidInputError for anything else, and
    InputTooLargeError past ``limits``."""
    items = message if isinstance(message, list) else [message]
    out: list[MessageCreate | Message] = []
    for item in items:
        if isinstance(item, MessageCreate | Message):
            out.append(item)
        elif isinstance(item, str):
            out.append(MessageCreate(content=item))
        elif isinstance(item, dict):
            try:
                out.append(MessageCreate.model_validate(item))
            except ValidationError as exc:
                raise InvalidInputError(f"invalid message {item!r}: {describe_validation_error(exc)}") from exc
        else:
            raise InvalidInputError(f"cannot send {type(item).__name__} to {to}")
    if not out:
        raise InvalidInputError(f"no message to send to {to}")
    if limits is not None:
        limits.check_messages(out)
    return out


# --------------------------------------------------------------------------- events


class _Event(_Model):
    id: str
    date: datetime
    name: str | None = None
    otid: str | None = None
    sender_id: str | None = None
    step_id: str | None = None
    run_id: str | None = None
    is_err: bool | None = None
    seq_id: int | None = None


class SystemMessage(_Event):
    message_type: Literal["system_message"] = "system_message"
    content: str


class UserMessage(_Event):
    message_type: Literal["user_message"] = "user_message"
    content: str


class ReasoningMessage(_Event):
    message_type: Literal["reasoning_message"] = "reasoning_message"
    source: Literal["reasoner_model", "non_reasoner_model"] = "non_reasoner_model"
    reasoning: str
    signature: str | None = None


class ToolCallEvent(_Model):
    name: str
    arguments: str
    tool_call_id: str


class ToolCallMessage(_Event):
    message_type: Literal["tool_call_message"] = "tool_call_message"
    tool_call: ToolCallEvent
    tool_calls: list[ToolCallEvent] | None = None


class ToolReturnEvent(_Model):
    tool_call_id: str
    status: Literal["success", "error"]
    tool_return: str
    stdout: list[str] | None = None
    stderr: list[str] | None = None


class ToolReturnMessage(_Event):
    message_type: Literal["tool_return_message"] = "tool_return_message"
    tool_return: str
    status: Literal["success", "error"]
    tool_call_id: str
    stdout: list[str] | None = None
    stderr: list[str] | None = None
    tool_returns: list[ToolReturnEvent] | None = None


class AssistantMessage(_Event):
    message_type: Literal["assistant_message"] = "assistant_message"
    content: str


class ApprovalRequestMessage(_Event):
    """A tool call that waits for a person's approval (answer with an approval message)."""

    message_type: Literal["approval_request_message"] = "approval_request_message"
    tool_call: ToolCallEvent
    tool_calls: list[ToolCallEvent] | None = None


LettaMessage = Annotated[
    SystemMessage
    | UserMessage
    | ReasoningMessage
    | ToolCallMessage
    | ToolReturnMessage
    | AssistantMessage
    | ApprovalRequestMessage,
    Field(discriminator="message_type"),
]
LETTA_MESSAGE_ADAPTER: TypeAdapter[LettaMessage] = TypeAdapter(LettaMessage)


class StopReason(_Model):
    message_type: Literal["stop_reason"] = "stop_reason"
    stop_reason: StopReasonType
    detail: str | None = Field(default=None, description="why, when it was not a clean end")


class UsageStatistics(_Model):
    message_type: Literal["usage_statistics"] = "usage_statistics"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    step_count: int = 0
    run_ids: list[str] | None = None

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += prompt + completion


class StepRecord(_Model):
    """One LLM call of a turn (Letta's Step): what was asked of which model, what it cost,
    how long it took, and how the step ended. The turn's messages carry its ``id`` as
    their ``step_id``."""

    id: str
    agent_id: str
    run_id: str | None = None
    model: str | None = None
    model_endpoint: str | None = None
    model_handle: str | None = None
    provider_name: str | None = None
    context_window_limit: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    stop_reason: StopReasonType | None = None
    status: Literal["pending", "success", "failed", "cancelled"] = "success"
    error_type: str | None = None
    error_data: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list)
    feedback: Literal["positive", "negative"] | None = None
    created_at: datetime
    # Timings (Letta's step metrics): epoch nanoseconds at the start, durations in nanoseconds.
    step_start_ns: int = 0
    llm_request_start_ns: int | None = None
    llm_request_ns: int | None = None
    tool_execution_ns: int | None = None
    step_ns: int | None = None


class LettaResponse(_Model):
    """What one send returns: the new messages as events, why it stopped, and usage."""

    messages: list[LettaMessage]
    stop_reason: StopReason
    usage: UsageStatistics

    def assistant_text(self) -> str:
        """The text of every assistant message, joined: what a chat UI would show."""
        return "\n".join(m.content for m in self.messages if isinstance(m, AssistantMessage))


def _send_message_text(call: ToolCall) -> str | None:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return None
    if isinstance(args, dict) and isinstance(args.get("message"), str):
        return args["message"]
    return None


def to_events(message: Message, *, uses_send_message: bool = True) -> list[LettaMessage]:
    """The Letta events a stored message shows as, in order."""
    common = {
        "id": message.id,
        "date": message.created_at,
        "otid": message.otid,
        "sender_id": message.sender_id,
        "step_id": message.step_id,
        "run_id": message.run_id,
    }
    if message.role == "system":
        return [SystemMessage(content=message.content or "", **common)]
    if message.role == "user":
        return [UserMessage(content=message.content or "", name=message.name, **common)]
    if message.role == "tool":
        if message.name == "send_message" and uses_send_message:
            return []  # shown as the assistant_message of its call instead
        returned = ToolReturnEvent(tool_call_id=message.tool_call_id or "", status=message.tool_status or "success",
                                   tool_return=message.content or "")
        return [
            ToolReturnMessage(
                tool_return=returned.tool_return,
                status=returned.status,
                tool_call_id=returned.tool_call_id,
                name=message.name,
                is_err=message.tool_status == "error",
                tool_returns=[returned],
                **common,
            )
        ]
    events: list[LettaMessage] = []
    if message.reasoning:
        events.append(ReasoningMessage(reasoning=message.reasoning, source="reasoner_model", **common))
    if message.content:
        # Text beside tool calls is the model thinking aloud; text alone is a reply (in a
        # send_message agent that is a protocol slip, but the user should still see it).
        if message.tool_calls:
            events.append(ReasoningMessage(reasoning=message.content, **common))
        else:
            events.append(AssistantMessage(content=message.content, **common))
    for call in message.tool_calls:
        text = _send_message_text(call) if uses_send_message and call.name == "send_message" else None
        if call.id in message.approval_required:
            event = ToolCallEvent(name=call.name, arguments=call.arguments, tool_call_id=call.id)
            events.append(ApprovalRequestMessage(tool_call=event, tool_calls=[event], **common))
        elif text is not None:
            events.append(AssistantMessage(content=text, **common))
        else:
            event = ToolCallEvent(name=call.name, arguments=call.arguments, tool_call_id=call.id)
            events.append(ToolCallMessage(tool_call=event, tool_calls=[event], **common))
    return events
