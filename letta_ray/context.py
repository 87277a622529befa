"""The context window: compiling it, measuring it, and summarising when it is full."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from letta_ray.deps import LLM
from letta_ray.memory import MemoryStats, join_system_prompt, system_prompt_parts
from letta_ray.messages import Message
from letta_ray.schemas import AgentState, Block, LLMConfig

# Summarise when the context passes this share of the window...
SUMMARY_TRIGGER = 0.9
# ...and evict until what is left (system, summary, kept messages) is under this share.
SUMMARY_TARGET = 0.5
# The summariser's input is capped at this share of the window.
SUMMARISER_INPUT_SHARE = 0.7

SUMMARISER_PROMPT = (
    "You maintain the running summary of a conversation between an AI agent and others. "
    "Older messages are leaving the agent's view. Write a new summary that merges the previous "
    "summary (if any) with the messages below: who said what, facts learned, decisions, open "
    "questions, and what the agent was doing. Be concrete and brief (at most 200 words). "
    "Write only the summary."
)


def summary_message_text(summary: str, evicted_total: int) -> str:
    return (
        f"[Summary of {evicted_total} earlier messages that are no longer in view; search them "
        f"with conversation_search]\n{summary}"
    )


@dataclass
class CompiledContext:
    """The messages sent to the LLM, and how many tokens they take with the tools."""

    messages: list[dict[str, Any]]
    system_tokens: int
    tokens: int


class MessageCache:
    """Per-agent memo of each in-context message's LLM form and token count.

    A stored message never changes, so its id is a safe key. The agent's host keeps one
    across turns; without it every step would re-serialise and re-count the whole
    context, which grows with the conversation.
    """

    def __init__(self) -> None:
        self._openai: dict[str, dict[str, Any]] = {}
        self._tokens: dict[tuple[str, str], int] = {}  # (message id, model)
        # Per model: the tokens of an empty request, and what a message adds beyond its content.
        self._overhead: dict[tuple[str, str], int] = {}
        # The last stable system prompt and tool schemas counted: ((llm, model), value, tokens).
        self._stable: tuple[tuple[LLM, str], str, int] | None = None
        self._tools: tuple[tuple[LLM, str], list[dict[str, Any]], int] | None = None

    def openai(self, message: Message) -> dict[str, Any]:
        cached = self._openai.get(message.id)
        if cached is None:
            cached = self._openai[message.id] = message.to_openai()
        return cached

    def tokens(self, message: Message, llm: LLM, config: LLMConfig) -> int:
        key = (message.id, config.model)
        cached = self._tokens.get(key)
        if cached is None:
            # A one-message count includes the request's fixed overhead once; subtract
            # it so that a context's total is not overcounted by it per message.
            cached = max(1, llm.count_tokens([self.openai(message)], config) - self._base(llm, config))
            self._tokens[key] = cached
        return cached

    def _base(self, llm: LLM, config: LLMConfig) -> int:
        """Tokens of an empty request (its fixed overhead)."""
        key = ("base", config.model)
        base = self._overhead.get(key)
        if base is None:
            base = self._overhead[key] = llm.count_tokens([], config)
        return base

    def head_tokens(self, stable: str, metadata: str, extra: list[dict[str, Any]],
                    tools: list[dict[str, Any]], llm: LLM, config: LLMConfig) -> int:
        """Tokens of the system message (``stable`` and ``metadata`` joined), the
        ``extra`` head messages and the tool schemas, with the request's overhead.

        The stable part (instructions and core memory, thousands of tokens) changes only
        when memory is edited, and the tool schemas only when tools or rules change, so
        both are counted once and remembered; only the short metadata, which changes
        every turn, is counted each time. The sum of the parts can differ from counting
        the joined text by a token at the seam, well inside what a context-window
        estimate needs.
        """
        counter = (llm, config.model)
        base = self._base(llm, config)
        if self._stable is None or self._stable[0] != counter or self._stable[1] != stable:
            self._stable = (counter, stable, llm.count_tokens([{"role": "system", "content": stable}], config))
        if self._tools is None or self._tools[0] != counter or self._tools[1] != tools:
            counted = llm.count_tokens([], config, tools) - base if tools else 0
            self._tools = (counter, list(tools), counted)
        # The metadata as a message of its own, less that message's framing.
        metadata_tokens = max(0, llm.count_tokens([{"role": "system", "content": "\n\n" + metadata}], config)
                              - base - self._framing(llm, config))
        extra_tokens = llm.count_tokens(extra, config) - base if extra else 0
        return self._stable[2] + metadata_tokens + extra_tokens + self._tools[2]

    def _framing(self, llm: LLM, config: LLMConfig) -> int:
        """Tokens a message adds beyond its content (role and separators)."""
        key = ("framing", config.model)
        framing = self._overhead.get(key)
        if framing is None:
            empty = llm.count_tokens([{"role": "system", "content": ""}], config) - self._base(llm, config)
            framing = self._overhead[key] = max(0, empty)
        return framing

    def retain(self, keep: list[Message]) -> None:
        """Forget messages that left the context."""
        ids = {m.id for m in keep}
        self._openai = {k: v for k, v in self._openai.items() if k in ids}
        self._tokens = {k: v for k, v in self._tokens.items() if k[0] in ids}


def compile_context(
    state: AgentState,
    blocks: list[Block],
    context: list[Message],
    stats: MemoryStats,
    tools: list[dict[str, Any]],
    llm: LLM,
    cache: MessageCache | None = None,
) -> CompiledContext:
    """System prompt with memory, then the summary, then the in-context messages."""
    cache = cache or MessageCache()
    stable, metadata = system_prompt_parts(state.system, blocks, stats, files=state.open_files)
    head: list[dict[str, Any]] = [{"role": "system", "content": join_system_prompt(stable, metadata)}]
    if state.summary:
        evicted = int(state.metadata.get("evicted_messages", 0))
        head.append({"role": "user", "content": summary_message_text(state.summary, evicted)})
    system_tokens = cache.head_tokens(stable, metadata, head[1:], tools, llm, state.llm_config)
    body = [cache.openai(m) for m in context]
    body_tokens = sum(cache.tokens(m, llm, state.llm_config) for m in context)
    return CompiledContext(head + body, system_tokens, system_tokens + body_tokens)


def needs_summary(compiled: CompiledContext, config: LLMConfig) -> bool:
    return compiled.tokens > SUMMARY_TRIGGER * config.context_window


def choose_cut(context: list[Message], token_counts: list[int], budget: int) -> int:
    """How many of the oldest messages to evict so the rest fit in ``budget`` tokens.

    The cut never separates a tool call from its return (the kept part never starts with
    a tool message), prefers to start the kept part at a user message, and always keeps
    the newest message. Returns 0 when nothing can be evicted.
    """
    n = len(context)
    if n <= 1:
        return 0
    kept = 0
    earliest = n - 1  # the newest message is always kept
    for i in range(n - 1, 0, -1):
        if kept + token_counts[i] > budget:
            break
        kept += token_counts[i]
        earliest = i
    # Smallest eviction >= the budget's that lands on a clean boundary: a user message
    # first, any non-tool message otherwise.
    for predicate in (lambda m: m.role == "user", lambda m: m.role != "tool"):
        for cut in range(earliest, n):
            if predicate(context[cut]):
                return cut
    return 0


def transcript(messages: list[Message], char_budget: int) -> str:
    """Plain-text rendering of messages for the summariser, cut to ``char_budget``."""
    lines = []
    for m in messages:
        if m.role == "tool":
            text = f"[{m.name} returned] {m.content or ''}"
        elif m.tool_calls:
            calls = "; ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)
            text = f"{m.content or ''} [calls {calls}]".strip()
        else:
            text = m.content or ""
        who = m.role if not m.sender_id else f"{m.role} (from {m.sender_id})"
        lines.append(f"{who}: {text}")
    out = "\n".join(lines)
    if len(out) > char_budget:
        # Keep the newest text: the summary must reflect where the conversation got to.
        out = "...\n" + out[-char_budget:]
    return out


async def summarise(
    llm: LLM, config: LLMConfig, previous: str | None, evicted: list[Message]
) -> tuple[str, int, int]:
    """A new running summary; returns (summary, prompt_tokens, completion_tokens)."""
    char_budget = int(config.context_window * SUMMARISER_INPUT_SHARE * 3)  # ~3+ chars per token
    body = transcript(evicted, char_budget)
    user = f"Previous summary:\n{previous}\n\nMessages:\n{body}" if previous else f"Messages:\n{body}"
    response = await llm.complete(
        [{"role": "system", "content": SUMMARISER_PROMPT}, {"role": "user", "content": user}], [], config
    )
    text = (response.content or "").strip()
    if not text:
        text = previous or "(the summariser returned nothing)"
    return text, response.prompt_tokens, response.completion_tokens
