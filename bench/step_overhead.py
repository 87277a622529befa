"""Per-step overhead of the agent loop, next to a raw litellm call to the same fake server.

    python bench/step_overhead.py [--turns 300] [--steps 200] [--server both|thread|process] [--no-profile]

Against one loopback ``FakeOpenAIServer`` (the echo model, answering through
``send_message``; a short fixed summary when the loop asks it to summarise), one run
measures:

- the loop through litellm: ``letta_ray.agent.step`` with ``StepDeps(llm=LiteLLM())`` for
  a memgpt_v2_agent (default tools, human/persona blocks, 32k window) over one growing
  conversation, one LLM call per turn (the few turns that also summarise are left out);
- raw ``litellm.acompletion``: a tiny request (2 messages, 1 tool), and right after each
  turn a replay of the request the loop just sent (same messages, tool schemas and
  kwargs), so both see the same context size and machine state; the same request
  through ``LiteLLM.complete`` too, to separate the boundary's cost from the step's;
- the pure loop: the same conversation with an in-process ``FunctionLLM`` that answers
  at once (no HTTP) and counts tokens with letta_ray's real ``TokenCounter``;
- the pure loop at fixed contexts of ~50 and ~200 messages: median per step, the parts
  of a step timed one by one (no profiler), what-ifs sizing cheaper ways to do the
  dominant parts, and a cProfile of the same steps.

The fake server runs in a thread of this process (as the tests run it; it shares our
GIL) and/or in a child process (like a real provider). The overhead is ``loop median -
raw median``; ratios are against the raw replay of the same run. The machine's load
average is printed first and last: on a busy machine, compare ratios, not milliseconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import argparse
import asyncio
import cProfile
import gc
import hashlib
import itertools
import json
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_MESSAGES, SEND_MESSAGE_TOOL, percentile, url_printing_child

from letta_ray.agent import StepResult, step, tool_result_text
from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, TERMINAL_TOOLS, base_toolset
from letta_ray.context import MessageCache, compile_context
from letta_ray.deps import LLM, LLMResponse, StepDeps
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.llm import LiteLLM, TokenCounter
from letta_ray.memory import Memory, MemoryStats, compile_system_prompt, render_metadata
from letta_ray.messages import Message, MessageCreate, to_events
from letta_ray.schemas import AgentState, Block, LLMConfig
from letta_ray.testing import CallInfo, FunctionLLM, echo_responder
from letta_ray.tools import ToolContext, Toolset, openai_schema, run_tool

CONTEXT_WINDOW = 32_000
MODEL = "fake-model"
AGENT_TYPE = "memgpt_v2_agent"
SUMMARY = "The user and the agent chatted about their day, plans, food and books."

HUMAN = (
    "Name: Dana Whitfield. Lives in Lisbon, works as a structural engineer on bridge retrofits.\n"
    "Likes: long-distance cycling, Portuguese custard tarts, science fiction (Le Guin, Chiang).\n"
    "Dislikes: small talk about the weather, meetings before 9am.\n"
    "Has a cat named Bolt. Learning Japanese; practising kana every evening.\n"
    "Prefers short, direct answers with concrete next steps."
)
PERSONA = (
    "I am Sam, a warm and curious assistant with a persistent memory. I keep my replies short "
    "and concrete, I ask a follow-up question when something is unclear, and I record lasting "
    "facts about the user in my core memory as soon as I learn them."
)
_WORDS = (
    "bridge cycling tart novel kana cat morning plan weekend train coffee rain project deadline "
    "friend market river museum recipe chapter sketch garden lecture concert budget route"
).split()


# --------------------------------------------------------------------------- the agent


def make_agent(model_endpoint: str | None = None) -> AgentState:
    """A memgpt_v2_agent as ``Client.create_agent`` makes it: default tools, human/persona."""
    return AgentState(
        name="bench-agent",
        agent_type=AGENT_TYPE,
        system=DEFAULT_SYSTEM_PROMPTS[AGENT_TYPE],
        blocks=[Block(label="human", value=HUMAN, limit=5000), Block(label="persona", value=PERSONA, limit=5000)],
        tools=list(DEFAULT_TOOLS[AGENT_TYPE]),
        llm_config=LLMConfig(model=MODEL, model_endpoint=model_endpoint, context_window=CONTEXT_WINDOW),
    )


def user_texts(n: int, seed: int) -> list[str]:
    """Varied user messages of 8-60 words, deterministic for a seed."""
    rng = random.Random(seed)
    return [
        f"({i}) " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 60))).capitalize() + "?" for i in range(n)
    ]


def responder(messages: list[dict[str, Any]], info: CallInfo) -> Any:
    """The echo model; a short summary when asked to summarise (no tools on offer).

    Echoing the summariser's prompt back would make the summary as long as the evicted
    transcript and overflow the window a few summaries later.
    """
    return echo_responder(messages, info) if info.tools else SUMMARY


def instant_llm(counter: TokenCounter) -> FunctionLLM:
    """A FunctionLLM that answers at once and counts tokens as ``LiteLLM`` does.

    The response carries usage and finish reason, so the fake does not count the prompt
    again (a provider reports usage; ``LiteLLM`` does not count it either).
    """

    def fn(messages: list[dict[str, Any]], info: CallInfo) -> LLMResponse:
        answer = responder(messages, info)
        return LLMResponse(
            content=answer if isinstance(answer, str) else None,
            tool_calls=[answer] if not isinstance(answer, str) else [],
            prompt_tokens=1,
            completion_tokens=1,
            finish_reason="stop" if isinstance(answer, str) else "tool_calls",
            model=MODEL,
        )

    return FunctionLLM(fn, counter=lambda messages, tools: counter.count(messages, MODEL, tools), model=MODEL)


@dataclass
class Conversation:
    """One agent's state between turns, updated as ``AgentHost.send`` updates it."""

    state: AgentState
    deps: StepDeps
    toolset: Toolset
    context: list[Message] = field(default_factory=list)
    stats: MemoryStats = field(default_factory=MemoryStats)
    cache: MessageCache = field(default_factory=MessageCache)  # kept across turns, as AgentHost does

    @classmethod
    def start(cls, llm: LLM, model_endpoint: str | None = None) -> Conversation:
        state = make_agent(model_endpoint)
        return cls(state, StepDeps(llm=llm), base_toolset(state.tools))

    async def turn(self, text: str) -> StepResult:
        result = await step(
            self.state, self.context, [MessageCreate(content=text)], self.deps, toolset=self.toolset, stats=self.stats,
            cache=self.cache,
        )
        if result.stop_reason.stop_reason != "end_turn":
            raise RuntimeError(f"turn ended with {result.stop_reason}")
        self.state, self.context = result.state, result.context
        self.stats.recall_messages += len(result.new_messages)
        return result


# --------------------------------------------------------------------------- statistics


def ms(values: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    return statistics.median(values) * 1000, percentile(values, 90) * 1000


@dataclass
class Sample:
    context_len: int  # messages in context before the turn
    loop_s: float
    raw_s: float = float("nan")
    wrapped_s: float = float("nan")
    llm_calls: int = 1


def row(label: str, values: list[float], baseline_ms: float | None = None) -> str:
    median, p90 = ms(values)
    ratio = f"{median / baseline_ms:6.2f}x" if baseline_ms else ""
    return f"  {label:<46} {median:8.2f} {p90:8.2f} {ratio:>8}"


# --------------------------------------------------------------------------- measurements


async def raw_tiny(url: str, n: int) -> list[float]:
    """Sequential ``litellm.acompletion`` calls with a 2-message request and one tool."""
    import litellm

    kwargs = LiteLLM().request_kwargs(BENCH_MESSAGES, [SEND_MESSAGE_TOOL], LLMConfig(model=MODEL, model_endpoint=url))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await litellm.acompletion(**kwargs)
        times.append(time.perf_counter() - start)
    return times


class RecordingLiteLLM(LiteLLM):
    """``LiteLLM`` that keeps its last request, so the bench can replay it (costs ~1 us)."""

    calls = 0
    last: tuple[list[dict[str, Any]], list[dict[str, Any]], Any] = ([], [], None)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        config: LLMConfig,
        *,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> LLMResponse:
        self.calls += 1
        self.last = (messages, tools, tool_choice)
        return await super().complete(messages, tools, config, tool_choice=tool_choice)


async def loop_through_litellm(url: str, texts: list[str]) -> list[Sample]:
    """Each turn through ``step`` + ``LiteLLM``, then the same request replayed twice.

    Once straight to ``litellm.acompletion`` (the raw baseline) and once through
    ``LiteLLM.complete`` (the boundary without the step), in alternating order.
    """
    import litellm

    llm = RecordingLiteLLM(token_counter=TokenCounter())
    conv = Conversation.start(llm, url)
    config = conv.state.llm_config
    samples = []
    for i, text in enumerate(texts):
        before, size = llm.calls, len(conv.context)
        start = time.perf_counter()
        await conv.turn(text)
        sample = Sample(size, time.perf_counter() - start, llm_calls=llm.calls - before)
        messages, tools, tool_choice = llm.last
        kwargs = llm.request_kwargs(messages, tools, config, tool_choice)
        for which in ("raw", "wrapped") if i % 2 else ("wrapped", "raw"):
            start = time.perf_counter()
            if which == "raw":
                await litellm.acompletion(**kwargs)
                sample.raw_s = time.perf_counter() - start
            else:
                await LiteLLM.complete(llm, messages, tools, config, tool_choice=tool_choice)
                sample.wrapped_s = time.perf_counter() - start
        samples.append(sample)
    return samples


@contextmanager
def fake_server(where: str) -> Iterator[str]:
    """The bench's FakeOpenAIServer, in a thread of this process or in a child process; its URL."""
    if where == "thread":
        with FakeOpenAIServer(responder, keep_requests=0) as server:
            yield server.url
        return
    with url_printing_child([sys.executable, __file__, "--serve"]) as url:
        yield url


def serve() -> None:
    """The child-process side of ``fake_server``: print the URL, serve until stdin closes."""
    with FakeOpenAIServer(responder, keep_requests=0) as server:
        print(server.url, flush=True)
        sys.stdin.read()


async def pure_loop(texts: list[str]) -> list[Sample]:
    """The same conversation with an instant in-process LLM: the loop's own cost."""
    llm = instant_llm(TokenCounter())
    conv = Conversation.start(llm)
    samples = []
    for text in texts:
        before, size = llm.calls, len(conv.context)
        start = time.perf_counter()
        await conv.turn(text)
        samples.append(Sample(size, time.perf_counter() - start, llm_calls=llm.calls - before))
        llm.history.clear()  # the fake's record of calls is test machinery, not loop cost
    return samples


async def conversation_of(n_messages: int, counter: TokenCounter, seed: int) -> Conversation:
    """A conversation grown (through the loop) to at least ``n_messages`` in context."""
    conv = Conversation.start(instant_llm(counter))
    for text in user_texts(n_messages // 3 + 1, seed):
        await conv.turn(text)
    conv.deps.llm.history.clear()  # type: ignore[attr-defined]
    return conv


async def fixed_steps(conv: Conversation, texts: list[str], profile: cProfile.Profile | None = None) -> list[float]:
    """Steps at a constant context size, each on a new user message.

    Each step's context is the conversation's minus its last turn plus the previous
    step's turn, so every step counts 3 messages it has not seen (the new user message,
    the previous assistant and tool messages), as a live conversation does.
    """
    llm: FunctionLLM = conv.deps.llm  # type: ignore[assignment]
    context = list(conv.context)
    times = []
    for text in texts:
        conv.stats.recall_messages += 3  # the memory metadata changes every turn, as it does live
        if profile is not None:
            profile.enable()
        start = time.perf_counter()
        result = await step(
            conv.state, context, [MessageCreate(content=text)], conv.deps, toolset=conv.toolset, stats=conv.stats,
            cache=conv.cache,
        )
        times.append(time.perf_counter() - start)
        if profile is not None:
            profile.disable()
        context = context[: -len(result.new_messages)] + result.new_messages
        llm.history.clear()
    return times


def per_call_us(fn: Callable[[], Any], n: int = 200) -> float:
    """Wall time of ``fn()`` in microseconds: the fastest of batches of 10 calls.

    The minimum, as ``timeit`` advises: preemption on a busy machine only adds time.
    """
    fn()
    best = float("inf")
    for _ in range(max(1, n // 10)):
        start = time.perf_counter()
        for _ in range(10):
            fn()
        best = min(best, (time.perf_counter() - start) / 10)
    return best * 1e6


@dataclass
class Part:
    label: str
    us: float
    kind: str = "part"  # "part": summed into the step; "of": inside the part above; "what-if"


def breakdown(conv: Conversation, counter: TokenCounter) -> list[Part]:
    """Microseconds per step of the loop's parts, timed one by one without a profiler.

    Mirrors one single-call turn: tool schemas, compile_context (system prompt, token
    counts of head + tools and of every message), 3 never-counted messages, 3 new
    Message objects, their events, the send_message tool, the final state copy. The
    what-ifs time the same work done the cheaper way each suggestion proposes.
    """
    state, context = conv.state, conv.context
    config = state.llm_config
    llm: FunctionLLM = conv.deps.llm  # type: ignore[assignment]
    schemas = [openai_schema(BASE_TOOLS[n].tool, with_heartbeat=n not in TERMINAL_TOOLS) for n in state.tools]
    tick = iter(range(1, 10**9))

    def stats() -> MemoryStats:  # a new recall count each time: the system prompt changes
        return MemoryStats(recall_messages=conv.stats.recall_messages + next(tick))

    body = [m.to_openai() for m in context]
    compiled = compile_context(state, state.blocks, context, stats(), schemas, llm)

    def count_new_messages() -> None:
        # Messages never counted before: JSON + hash + litellm.token_counter (tiktoken).
        n = next(tick)
        for m in body[-3:]:
            counter.count([{**m, "content": f"{m.get('content') or ''} {n}"}], MODEL)

    def count_system() -> None:
        system = compile_system_prompt(state.system, state.blocks, stats())
        counter.count([{"role": "system", "content": system}], MODEL, schemas)

    def count_metadata_only() -> None:
        counter.count([{"role": "system", "content": render_metadata(stats())}], MODEL)

    user = Message(agent_id=state.id, role="user", content=context[-3].content)
    assistant, tool_msg = context[-2], context[-1]
    memory = Memory(state.blocks)
    ctx = ToolContext(agent=state, memory=memory, deps=conv.deps)
    send = BASE_TOOLS["send_message"]

    def new_messages() -> None:
        Message(agent_id=state.id, role="user", content=user.content)
        Message(agent_id=state.id, role="assistant", tool_calls=assistant.tool_calls, step_id="step-x")
        Message(
            agent_id=state.id,
            role="tool",
            content=tool_msg.content,
            tool_call_id="call-x",
            name="send_message",
            tool_status="success",
            step_id="step-x",
        )

    def events() -> None:
        for m in (user, assistant, tool_msg):
            to_events(m, uses_send_message=True)

    def run_send_message() -> None:
        coro = run_tool(send, assistant.tool_calls[0].arguments, ctx)
        try:
            coro.send(None)  # send_message never awaits: drive the coroutine by hand
        except StopIteration as done:
            tool_result_text(done.value, conv.deps.clock().strftime("%Y-%m-%d %I:%M:%S %p %Z%z"))

    def fake_llm() -> None:
        coro = llm.complete(compiled.messages, schemas, config)
        try:
            coro.send(None)
        except StopIteration:
            pass
        llm.history.clear()

    by_id = {m.id: llm.count_tokens([b], config) for m, b in zip(context, body, strict=True)}
    one_lookup: dict[bytes, int] = {}
    for b in body:
        one_lookup[_key(b)] = 1
    n = len(context)
    return [
        Part(
            "tool schemas: openai_schema x6 (JSON round trip)",
            per_call_us(
                lambda: [openai_schema(BASE_TOOLS[t].tool, with_heartbeat=t not in TERMINAL_TOOLS) for t in state.tools]
            ),
        ),
        Part(
            f"compile_context, {n} messages already counted",
            per_call_us(lambda: compile_context(state, state.blocks, context, stats(), schemas, llm)),
        ),
        Part(
            "render system prompt",
            per_call_us(lambda: compile_system_prompt(state.system, state.blocks, stats())),
            "of",
        ),
        Part("count system prompt + tools (prompt: miss)", per_call_us(count_system), "of"),
        Part(
            "  of which the tools (hit: dumps 6 schemas + hash)",
            per_call_us(lambda: counter.count([], MODEL, schemas)),
            "of",
        ),
        Part(f"Message.to_openai x{n}", per_call_us(lambda: [m.to_openai() for m in context]), "of"),
        Part(
            f"count_tokens([m]) x{n} (hits: 2x dumps+hash+lock)",
            per_call_us(lambda: sum(llm.count_tokens([m], config) for m in body)),
            "of",
        ),
        Part("count the 3 new messages (misses: tiktoken)", per_call_us(count_new_messages, 60)),
        Part("new Message objects x3 (pydantic, uuid4)", per_call_us(new_messages)),
        Part("to_events for the 3 new messages", per_call_us(events)),
        Part("run_tool(send_message) + result JSON + clock", per_call_us(run_send_message)),
        Part(
            "final state.model_copy + message_ids",
            per_call_us(
                lambda: state.model_copy(update={"blocks": memory.blocks, "message_ids": [m.id for m in context]})
            ),
        ),
        Part("the fake LLM itself (copies the messages)", per_call_us(fake_llm)),
        Part(
            f"message counts memoised by Message.id x{n}",
            per_call_us(lambda: sum(by_id[m.id] for m in context)),
            "what-if",
        ),
        Part(
            f"one dumps+hash+lookup per message x{n} (base once)",
            per_call_us(lambda: sum(one_lookup[_key(b)] for b in body)),
            "what-if",
        ),
        Part("count only the memory metadata (miss)", per_call_us(count_metadata_only), "what-if"),
    ]


def _key(message: dict[str, Any]) -> bytes:
    """The memo key TokenCounter computes for a message, without its second lookup."""
    text = json.dumps(message, default=str, separators=(",", ":"))
    return hashlib.blake2b(b"m" + text.encode(), digest_size=16).digest()


PROFILE_GROUPS = [
    # (label, file suffix, function name): cumulative time of each entry point
    ("compile_context (all)", "letta_ray/context.py", "compile_context"),
    ("  TokenCounter.count", "letta_ray/llm.py", "count"),
    ("    json.dumps", "json/__init__.py", "dumps"),
    ("    litellm token_counter (misses)", "letta_ray/llm.py", "_measure"),
    ("  Message.to_openai", "letta_ray/messages.py", "to_openai"),
    ("  compile_system_prompt", "letta_ray/memory.py", "compile_system_prompt"),
    ("tool schemas (_Turn.tool_schemas)", "letta_ray/agent.py", "tool_schemas"),
    ("_handle_response (messages, tools, events)", "letta_ray/agent.py", "_handle_response"),
    ("  run_tool", "letta_ray/tools.py", "run_tool"),
    ("  to_events", "letta_ray/messages.py", "to_events"),
    ("fake LLM complete (FunctionLLM)", "letta_ray/testing.py", "complete"),
    ("pydantic BaseModel.__init__", "pydantic/main.py", "__init__"),
    ("pydantic model_copy", "pydantic/main.py", "model_copy"),
    ("new_id (uuid4)", "letta_ray/schemas.py", "new_id"),
]


def profile_report(profile: cProfile.Profile, steps: int) -> list[str]:
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, dict[Any, Any]]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[3] for k, v in raw.items() if k[0].endswith("letta_ray/agent.py") and k[2] == "step")
    lines = [f"  {'(cProfile, inclusive; profiler inflates small calls)':<52} {'us/step':>8} {'share':>6}"]
    for label, suffix, name in PROFILE_GROUPS:
        cum = sum(v[3] for k, v in raw.items() if k[0].endswith(suffix) and k[2] == name)
        lines.append(f"  {label:<52} {cum / steps * 1e6:8.0f} {cum / total:6.0%}")
    lines.append(f"  {'step (total)':<52} {total / steps * 1e6:8.0f} {1:6.0%}")
    lines.append("  top functions by own time:")
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
    for (filename, line, name), (_cc, ncalls, tottime, _cum, _callers) in top:
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        per_step = f"{tottime / steps * 1e6:7.0f} us/step {ncalls / steps:6.0f} calls/step"
        lines.append(f"    {per_step}  {where}:{line} {name}")
    return lines


# --------------------------------------------------------------------------- main


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min) on {os.cpu_count()} CPUs"


async def conversation_section(where: str, turns: int, pure: list[Sample]) -> list[Sample]:
    """Run and print the conversation through litellm against a server ``where``; its single-call turns."""
    with fake_server(where) as url:
        # Warm up: litellm import, tiktoken, the HTTP pool, pydantic validators.
        await raw_tiny(url, 30)
        await loop_through_litellm(url, user_texts(20, seed=99))
        gc.collect()
        tiny = await raw_tiny(url, turns)
        samples = await loop_through_litellm(url, user_texts(turns, seed=1))

    single = [s for s in samples if s.llm_calls == 1]
    pure_single = [s for s in pure if s.llm_calls == 1]
    raw = [s.raw_s for s in single]
    loop = [s.loop_s for s in single]
    raw_ms, loop_ms = ms(raw)[0], ms(loop)[0]
    sizes = [s.context_len for s in samples]
    place = "a thread of this process (as the tests run it)" if where == "thread" else "a child process"
    print(
        f"\nFakeOpenAIServer in {place}: {turns} turns of one conversation, {min(sizes)}..{max(sizes)} "
        f"messages in context before a turn; {len(samples) - len(single)} turns that also summarised left out"
    )
    print(f"  {'':<46} {'median':>8} {'p90':>8} {'vs raw':>8}   (ms)")
    print(row("raw litellm, tiny request (2 msgs, 1 tool)", tiny))
    print(row("raw litellm, replay of the loop's request", raw, raw_ms))
    print(row("LiteLLM.complete, replay of the same request", [s.wrapped_s for s in single], raw_ms))
    print(row("loop via LiteLLM (step + 1 HTTP call)", loop, raw_ms))
    print(row("  paired overhead: loop_i - raw_i", [s.loop_s - s.raw_s for s in single], raw_ms))
    print(row("pure loop, FunctionLLM (no HTTP)", [s.loop_s for s in pure_single], raw_ms))
    overhead = loop_ms - raw_ms
    print(
        f"  overhead = loop median - raw median = {loop_ms:.2f} - {raw_ms:.2f} = {overhead:.2f} ms "
        f"= {overhead / raw_ms:.2f}x raw"
    )
    summarised = [s.loop_s for s in samples if s.llm_calls > 1]
    if summarised:
        print(f"  turns that also summarised (2 LLM calls): {len(summarised)}, median {ms(summarised)[0]:.2f} ms")

    print(f"  by context size (medians, ms)  {'raw':>7} {'wrapped':>8} {'loop':>7} {'overhead':>9} {'pure':>7}")
    bounds = [0, 50, 100, 200, 300, 10**9]
    for lo, hi in itertools.pairwise(bounds):
        part = [s for s in single if lo <= s.context_len < hi]
        pure_part = [s.loop_s for s in pure_single if lo <= s.context_len < hi]
        if not part or not pure_part:
            continue
        r, w, lp = (ms([getattr(s, a) for s in part])[0] for a in ("raw_s", "wrapped_s", "loop_s"))
        label = f"{lo}..{min(hi - 1, max(sizes))} messages (n={len(part)})"
        print(f"    {label:<28} {r:7.2f} {w:8.2f} {lp:7.2f} {lp - r:9.2f} {ms(pure_part)[0]:7.2f}")
    return single


async def main(turns: int, steps: int, profile: bool, servers: list[str]) -> None:
    wall = time.perf_counter()
    print(
        f"step overhead: {AGENT_TYPE}, tools {', '.join(DEFAULT_TOOLS[AGENT_TYPE])}, {CONTEXT_WINDOW}-token "
        f"window, echo model answering via send_message; {load()}"
    )
    await pure_loop(user_texts(20, seed=98))  # warm up
    pure = await pure_loop(user_texts(turns, seed=1))
    single = [await conversation_section(where, turns, pure) for where in servers][-1]

    for n_messages in (50, 200):
        counter = TokenCounter()
        conv = await conversation_of(n_messages, counter, seed=n_messages)
        times = await fixed_steps(conv, user_texts(steps, seed=1000 + n_messages))
        med, p90 = ms(times)
        near = [s.raw_s for s in single if 0.75 * n_messages <= s.context_len <= 1.25 * n_messages]
        raw_ms = ms(near or [s.raw_s for s in single])[0]
        print(
            f"\npure loop at {len(conv.context)} messages in context ({CONTEXT_WINDOW}-token window), "
            f"{steps} steps: median {med:.2f} ms, p90 {p90:.2f} ms = {med / raw_ms:.2f}x the raw litellm replay "
            f"at a similar context ({raw_ms:.2f} ms)"
        )
        print(f"  {'where a step goes (each timed apart, no profiler)':<52} {'us/step':>8} {'share':>6}")
        parts = breakdown(conv, counter)
        for part in parts:
            if part.kind != "what-if":
                indent = "    " if part.kind == "of" else ""
                print(f"  {indent + part.label:<52} {part.us:8.0f} {part.us / (med * 1000):6.0%}")
        accounted = sum(part.us for part in parts if part.kind == "part")
        print(
            f"  {'rest (asyncio, bookkeeping, GC; noise if busy)':<52} {med * 1000 - accounted:8.0f} "
            f"{1 - accounted / (med * 1000):6.0%}"
        )
        print("  what-if (the same work done as suggested):")
        for part in parts:
            if part.kind == "what-if":
                print(f"    {part.label:<50} {part.us:8.0f}")
        if profile:
            prof = cProfile.Profile()
            await fixed_steps(conv, user_texts(steps, seed=2000 + n_messages), prof)
            print("\n".join(profile_report(prof, steps)))
    print(f"\ntotal bench time {time.perf_counter() - wall:.0f} s; {load()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="conversation turns (and tiny raw calls)")
    parser.add_argument("--steps", type=int, default=200, help="steps at each fixed context size")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    parser.add_argument(
        "--server", choices=["thread", "process", "both"], default="both", help="where the fake server runs"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # fake_server's child
    args = parser.parse_args()
    if args.serve:
        serve()
    else:
        servers = ["thread", "process"] if args.server == "both" else [args.server]
        asyncio.run(main(args.turns, args.steps, not args.no_profile, servers))
