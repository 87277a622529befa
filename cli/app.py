"""The ``letta-ray`` command: chat with an agent, manage agents, serve, simulate, export.

A shell over the runtime: Ray is imported only inside commands (through
``letta_ray.actors.client``), so ``letta-ray --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from letta_ray.actors.local_model import stored_endpoint
from letta_ray.errors import InvalidInputError, LettaRayError, NotFoundError
from letta_ray.messages import (
    AssistantMessage,
    LettaMessage,
    LettaResponse,
    ReasoningMessage,
    ToolCallMessage,
    ToolReturnMessage,
    UserMessage,
    to_events,
)
from letta_ray.schemas import LLMConfig
from letta_ray.settings import (
    LOCAL_LLM_CONTEXT_WINDOW,
    LOCAL_LLM_MODEL,
    NO_LOCAL_LLM,
    Settings,
    local_llm_available,
)

from .demo import DEMO_MODEL, demo_responder
from .logfile import LogFile, terminal_logs

if TYPE_CHECKING:
    from letta_ray.actors.client import AgentHandle, Client
    from letta_ray.schemas import AgentState, Block

app = typer.Typer(
    name="letta-ray",
    help="Stateful LLM agents with self-edited memory, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold API keys
)
agents_app = typer.Typer(help="List, inspect and delete agents.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
# `serve` (the HTTP API) and `sim` (multi-agent simulations) join here as sub-apps.


DEFAULT_BLOCKS = [
    {"label": "human", "value": "",
     "description": "What you know about the user: their name, where they live, what they like."},
    {"label": "persona", "value": "I am a helpful assistant with a memory. I keep what I learn about "
     "the user in my human block and use it in later conversations."},
]
_MEMORY_TOOLS = {"memory_insert", "memory_replace", "memory_rethink", "core_memory_append", "core_memory_replace"}
_FAILED_STOPS = {"error", "llm_api_error"}
_HOW_TO_SET_A_MODEL = """\
To chat with a real model, either set a provider key:
    export OPENAI_API_KEY=sk-...        (or ANTHROPIC_API_KEY, GEMINI_API_KEY, GROQ_API_KEY, MISTRAL_API_KEY)
or name a model, e.g. a local Ollama:
    letta-ray run --model ollama/llama3 --model-endpoint http://localhost:11434"""


# --------------------------------------------------------------------------- plumbing


@dataclass
class _Options:
    """The global options, kept on the typer context for the commands."""

    home: Path | None
    address: str | None

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(overrides)
        if self.home is not None:
            # Absolute: the store actors resolve paths in their own working directory.
            values["home"] = self.home.expanduser().resolve()
        if self.address is not None:
            values["ray_address"] = self.address
        try:
            return Settings(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidInputError(f"invalid settings: {problems}") from None


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # pipes and logs: don't fold ids and table cells at 80 columns
    return console


def _fail(message: str) -> NoReturn:
    _console(stderr=True).print(Text(f"Error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    """Typed letta_ray errors become one red line and exit code 1; others keep their traceback."""
    try:
        yield
    except LettaRayError as exc:
        _fail(str(exc))
    except ConnectionError as exc:  # ray.init on an address nobody answers
        _fail(f"cannot reach Ray: {exc}")


@contextmanager
def _connected(ctx: typer.Context) -> Iterator[Client]:
    with _errors():
        from letta_ray.actors.client import connect

        client = connect(settings=ctx.obj.settings())
        try:
            yield client
        finally:
            client.close()


@contextmanager
def _talking(ctx: typer.Context, *, verbose: bool) -> Iterator[tuple[Client, LogFile | None]]:
    """Connected for a command that talks to a person (run, sim): the runtime's own logs go to
    the log file, unless ``verbose``."""
    with _errors():
        from letta_ray.actors.client import connect

        settings = ctx.obj.settings(log_to_driver=verbose)
        with terminal_logs(settings, verbose=verbose) as logs:
            client = connect(settings=settings)
            try:
                yield client, logs
            finally:
                client.close()


_VERBOSE_HELP = "Show Ray's, Ray Serve's and litellm's logs here, not in <home>/logs/letta-ray.log."


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(
        help="Data directory (default: $LETTA_RAY_HOME or ~/.letta_ray).", show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray address of a cluster ('auto', 'ray://head:10001'); default: an embedded local Ray on "
             "127.0.0.1.", show_default=False)] = None,
) -> None:
    """Stateful LLM agents with self-edited memory, on Ray."""
    ctx.obj = _Options(home, address)


# --------------------------------------------------------------------------- rendering


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _call_text(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return f"{name}({_clip(arguments, 300)})"
    if not isinstance(args, dict):
        return f"{name}({_clip(arguments, 300)})"
    shown = ", ".join(f"{k}={_clip(json.dumps(v, ensure_ascii=False), 200)}"
                      for k, v in args.items() if k != "request_heartbeat")
    return f"{name}({shown})"


def _return_text(raw: str) -> str:
    try:
        result = json.loads(raw)
    except json.JSONDecodeError:
        return _clip(raw, 500)
    if isinstance(result, dict) and "message" in result:
        return _clip(str(result["message"]), 500)
    return _clip(raw, 500)


def _show_event(out: Console, event: LettaMessage, agent_name: str, *, show_user: bool = False) -> None:
    if isinstance(event, ReasoningMessage):
        out.print(Text(f"  thinking: {event.reasoning}", style="dim italic"))
    elif isinstance(event, ToolCallMessage):
        out.print(Text(f"  → {_call_text(event.tool_call.name, event.tool_call.arguments)}", style="cyan"))
    elif isinstance(event, ToolReturnMessage):
        if event.status == "success":
            out.print(Text(f"  ← {event.name or 'tool'}: {_return_text(event.tool_return)}", style="cyan"))
        else:
            out.print(Text(f"  ← {event.name or 'tool'} failed: {_return_text(event.tool_return)}", style="magenta"))
    elif isinstance(event, AssistantMessage):
        out.print(Text.assemble((f"{agent_name}> ", "bold"), event.content))
    elif isinstance(event, UserMessage) and show_user:
        out.print(Text.assemble(("you> ", "bold green"), event.content))


def _show_blocks(out: Console, blocks: list[Block], *, edited: bool = False) -> None:
    for block in blocks:
        title = block.label + (" (edited)" if edited else "") + (" (read-only)" if block.read_only else "")
        title += f" · {len(block.value)}/{block.limit} chars"
        out.print(Panel(Text(block.value or "(empty)", style="" if block.value else "dim"), title=title,
                        title_align="left", border_style="yellow" if edited else "blue", expand=False))


def _edited_labels(events: list[LettaMessage]) -> list[str]:
    """Labels of the blocks a turn's memory tools edited successfully, in order."""
    pending: dict[str, str] = {}
    labels: list[str] = []
    for event in events:
        if isinstance(event, ToolCallMessage) and event.tool_call.name in _MEMORY_TOOLS:
            try:
                label = json.loads(event.tool_call.arguments or "{}").get("label")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(label, str):
                pending[event.tool_call.tool_call_id] = label
        elif isinstance(event, ToolReturnMessage) and event.status == "success":
            label = pending.pop(event.tool_call_id, None)
            if label is not None and label not in labels:
                labels.append(label)
    return labels


def _show_response(out: Console, handle: AgentHandle, response: LettaResponse) -> None:
    for event in response.messages:
        _show_event(out, event, handle.name)
    edited = _edited_labels(response.messages)
    if edited:
        blocks = {b.label: b for b in handle.state().blocks}
        _show_blocks(out, [blocks[label] for label in edited if label in blocks], edited=True)
    stop, usage = response.stop_reason, response.usage
    line = f"[{stop.stop_reason}"
    if stop.detail:
        line += f": {stop.detail}"
    line += (f"] {usage.step_count} step(s), {usage.total_tokens} tokens "
             f"({usage.prompt_tokens} prompt + {usage.completion_tokens} completion)")
    style = "dim" if stop.stop_reason == "end_turn" else ("bold red" if stop.stop_reason in _FAILED_STOPS else "yellow")
    out.print(Text(line, style=style))


# --------------------------------------------------------------------------- run


@dataclass
class _ModelChoice:
    model: str
    endpoint: str | None
    why: str
    demo: bool = False
    local: bool = False  # the bundled local model, served on this process's Ray Serve


def _find_agent(client: Client, key: str, *, must_exist: bool) -> AgentHandle | None:
    try:
        return client.get_agent(key)
    except NotFoundError:
        if must_exist:
            raise
        return None


def _choose_model(settings: Settings, state: AgentState | None, model: str | None, endpoint: str | None,
                  demo: bool, out: Console) -> _ModelChoice:
    if model is not None:
        return _ModelChoice(model, endpoint, "--model given")
    if state is not None and state.llm_config.model == DEMO_MODEL:
        return _ModelChoice(DEMO_MODEL, None, "this agent was created with --demo", demo=True)
    if state is not None and state.llm_config.model == LOCAL_LLM_MODEL and endpoint is None:
        if not local_llm_available():
            raise InvalidInputError(f"this agent thinks with the bundled local model, but {NO_LOCAL_LLM}")
        return _ModelChoice(LOCAL_LLM_MODEL, None, "the agent's own model: the bundled local model", local=True)
    if state is not None:
        return _ModelChoice(state.llm_config.model, endpoint or state.llm_config.model_endpoint,
                            "the agent's own model")
    resolution = settings.resolve_model()
    if resolution.source == "local":
        out.print(Text(resolution.why, style="yellow"), soft_wrap=True)
        return _ModelChoice(LOCAL_LLM_MODEL, None, "no provider key: the bundled local model", local=True)
    if resolution.model is not None:
        return _ModelChoice(resolution.model, endpoint or settings.endpoint_for(resolution.model), resolution.why)
    out.print(Text(f"No model: {resolution.why}.", style="bold yellow"), soft_wrap=True)
    out.print(Text(_HOW_TO_SET_A_MODEL, style="yellow"), soft_wrap=True)
    if not demo:
        out.print(Text("Or try the offline demo model: letta-ray run --demo", style="yellow"))
        raise typer.Exit(1)
    out.print(Text("--demo: falling back to the built-in demo model, a scripted loopback fake on this machine "
                   "(no key, no network). It is not a language model: it stores facts like \"my name is Ada\" "
                   "or \"I live in Lisbon\" in its human block and otherwise echoes you.", style="yellow"),
              soft_wrap=True)
    return _ModelChoice(DEMO_MODEL, None, "no model configured, --demo given", demo=True)


def _chat(out: Console, handle: AgentHandle, messages: list[str]) -> int:
    """Send ``messages`` (or, with none, lines read from stdin); the exit code."""
    if messages:
        failed = False
        for text in messages:
            out.print(Text.assemble(("you> ", "bold green"), text))
            response = handle.send(text)
            _show_response(out, handle, response)
            failed = failed or response.stop_reason.stop_reason in _FAILED_STOPS
        return 1 if failed else 0
    out.print(Text("Type a message. /blocks shows the memory blocks, /quit (or Ctrl-D) exits.", style="dim"))
    while True:
        try:
            line = out.input(Text("you> ", style="bold green"))
        except EOFError:
            out.print()
            return 0
        except KeyboardInterrupt:
            out.print()
            return 130
        if not sys.stdin.isatty():
            out.print(Text(line))  # piped input is not echoed; keep the transcript readable
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/blocks":
            _show_blocks(out, handle.state().blocks)
            continue
        if line.startswith("/"):
            out.print(Text(f"unknown command {line}; try /blocks or /quit", style="yellow"))
            continue
        try:
            if out.is_terminal:
                with out.status("thinking…"):
                    response = handle.send(line)
            else:
                response = handle.send(line)
        except LettaRayError as exc:  # one bad turn does not end the session
            _console(stderr=True).print(Text(f"Error: {exc}", style="bold red"), soft_wrap=True)
            continue
        _show_response(out, handle, response)


def _start_local_llm(out: Console, settings: Settings, logs: LogFile | None) -> str:
    """Serve the bundled local model on this process's Ray (127.0.0.1, a free port); its URL."""
    from letta_ray.local_llm.app import start_local_llm
    from letta_ray.serve.startup import free_port

    if logs is not None:
        logs.route()  # importing ray.serve gave its logger a terminal handler of its own

    with out.status("loading the local model on Ray Serve…") if out.is_terminal else _no_status():
        return start_local_llm(settings, host="127.0.0.1", port=free_port(settings.http_port))


@contextmanager
def _no_status() -> Iterator[None]:
    yield


@app.command()
def run(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option(
        "--agent", "-a", help="Agent to chat with, by name or id; a name that does not exist is created.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="litellm model string, e.g. openai/gpt-4o-mini or ollama/llama3.")] = None,
    model_endpoint: Annotated[str | None, typer.Option(
        help="Base URL of the model's server (Ollama, vLLM, any OpenAI-compatible API).")] = None,
    name: Annotated[str, typer.Option(help="Name of the agent to create when --agent is not given.")] = "assistant",
    message: Annotated[list[str] | None, typer.Option(
        "--message", help="Send this message, print the turn and exit (repeatable). Works without a TTY.")] = None,
    demo: Annotated[bool, typer.Option(
        "--demo", help="With no key, no --model and no local model installed, fall back to the scripted "
                       "offline demo model.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP)] = False,
) -> None:
    """Chat with one agent in the terminal (created if it does not exist)."""
    out = _console()
    server = None
    local_started = False
    with _talking(ctx, verbose=verbose) as (client, logs):
        try:
            key = agent or name
            handle = _find_agent(client, key, must_exist=agent is not None and agent.startswith("agent-"))
            state = handle.state() if handle is not None else None
            choice = _choose_model(client.settings, state, model, model_endpoint, demo, out)
            if choice.demo:
                from letta_ray.fake_llm_server import FakeOpenAIServer

                server = FakeOpenAIServer(demo_responder, model=DEMO_MODEL).start()
                choice.endpoint = server.url
            if choice.local:
                choice.endpoint = _start_local_llm(out, client.settings, logs)
                local_started = True
            if handle is None or state is None:
                handle = client.create_agent(key, model=choice.model, model_endpoint=choice.endpoint,
                                             memory_blocks=DEFAULT_BLOCKS,
                                             context_window=LOCAL_LLM_CONTEXT_WINDOW if choice.local else None)
                status = "created"
            else:
                status = "existing"
                config = state.llm_config
                endpoint = stored_endpoint(choice.model, choice.endpoint)  # none for the local model
                if (config.model, config.model_endpoint) != (choice.model, endpoint):
                    try:
                        config = LLMConfig.model_validate(
                            {**config.model_dump(), "model": choice.model, "model_endpoint": endpoint})
                    except ValueError as exc:
                        raise InvalidInputError(f"invalid model settings: {exc}") from exc
                    handle.modify(llm_config=config)
            where = f" at {choice.endpoint}" if choice.endpoint else ""
            out.print(Text.assemble(("letta-ray ", "bold"), f"agent {handle.name} ({handle.id}, {status})"))
            out.print(Text.assemble(("model ", "bold"), f"{choice.model}{where}", (f"  ({choice.why})", "dim")),
                      soft_wrap=True)
            if logs is not None:
                out.print(Text.assemble(("logs ", "bold"), logs.banner(client.settings)), soft_wrap=True)
            code = _chat(out, handle, message or [])
        finally:
            if server is not None:
                server.stop()
            if local_started:
                from letta_ray.local_llm.app import stop_local_llm

                stop_local_llm()
    if code:
        raise typer.Exit(code)


# --------------------------------------------------------------------------- agents


@agents_app.command("list")
def list_agents(
    ctx: typer.Context,
    tags: Annotated[list[str] | None, typer.Option(
        "--tags", "--tag", "-t", help="Only agents with this tag (repeatable, or comma-separated).")] = None,
    match_all: Annotated[bool, typer.Option("--match-all", help="Require every tag, not any of them.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many agents (0: all).", min=0)] = 50,
) -> None:
    """List agents, oldest first."""
    wanted = [t.strip() for group in tags or [] for t in group.split(",") if t.strip()] or None
    with _connected(ctx) as client:
        states = client.list_agents(tags=wanted, match_all_tags=match_all, limit=limit or None)
        home = client.settings.home
    out = _console()
    if not states:
        out.print(Text(f"No agents in {home}.", style="dim"))
        return
    table = Table(title=f"Agents in {home}", title_justify="left")
    for column in ("id", "name", "model", "tags", "created (UTC)"):
        table.add_column(column, no_wrap=column in ("id", "created (UTC)"))
    for s in states:
        table.add_row(s.id, s.name, s.llm_config.model, ", ".join(s.tags), s.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@agents_app.command("show")
def show_agent(
    ctx: typer.Context,
    id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The agent's id or name.")],
    messages: Annotated[int, typer.Option(help="How many of the latest messages to show.", min=0)] = 10,
) -> None:
    """Show an agent: its state, memory blocks and latest messages."""
    with _connected(ctx) as client:
        handle = client.get_agent(id_or_name)
        state = handle.state()
        history = list(reversed(handle.messages(limit=messages, order="desc"))) if messages else []
    out = _console()
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    config = state.llm_config
    rows = [
        ("id", state.id), ("name", state.name), ("type", state.agent_type),
        ("model", config.model + (f" at {config.model_endpoint}" if config.model_endpoint else "")),
        ("context window", str(config.context_window)), ("tools", ", ".join(state.tools)),
        ("tags", ", ".join(state.tags)), ("description", state.description or ""),
        ("in context", f"{len(state.message_ids)} messages"),
        ("created", state.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("updated", state.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    for key, value in rows:
        info.add_row(key, Text(value))
    out.print(info)
    if state.summary:
        out.print(Panel(Text(state.summary), title="summary", title_align="left", expand=False))
    _show_blocks(out, state.blocks)
    if history:
        out.print(Text(f"last {len(history)} messages", style="bold"))
        for m in history:
            for event in to_events(m, uses_send_message=state.uses_send_message):
                _show_event(out, event, state.name, show_user=True)


@agents_app.command("delete")
def delete_agent(
    ctx: typer.Context,
    id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The agent's id or name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an agent with its messages and archival memory."""
    with _connected(ctx) as client:
        handle = client.get_agent(id_or_name)
        if not yes:
            typer.confirm(f"Delete agent {handle.name} ({handle.id}) with its messages and archival memory?",
                          abort=True)
        client.delete_agent(handle.id)
    _console().print(f"Deleted agent {handle.name} ({handle.id}).")


@app.command("import")
def import_agent_file(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A Letta agent file (.af).")],
    name: Annotated[str | None, typer.Option(help="Name every imported agent this.")] = None,
    model: Annotated[str | None, typer.Option(help="Think with this model (a handle like openai/gpt-4o-mini).")
                     ] = None,
    copy_suffix: Annotated[bool, typer.Option("--copy-suffix", help="Append _copy to the agents' names.")] = False,
    strip_messages: Annotated[bool, typer.Option("--strip-messages", help="Leave the file's messages out.")] = False,
    keep_tools: Annotated[bool, typer.Option("--keep-tools", help="Keep stored tools of the same names "
                                             "instead of replacing them with the file's.")] = False,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="NAME=VALUE for the agents' tools "
                                                     "(repeatable).")] = None,
) -> None:
    """Import the agents of a Letta agent file, with their memory, tools, messages and groups."""
    secrets = {}
    for item in secret or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--secret takes NAME=VALUE, got {item!r}")
        secrets[key] = value
    with _connected(ctx) as client:
        handles = client.import_agent_file(str(path), name=name, model=model, append_copy_suffix=copy_suffix,
                                           strip_messages=strip_messages, override_existing_tools=not keep_tools,
                                           secrets=secrets or None)
    out = _console()
    for handle in handles:
        out.print(f"Imported agent {handle.name} ({handle.id}).")


@app.command("export")
def export_agent_file(
    ctx: typer.Context,
    id_or_name: Annotated[str, typer.Argument(metavar="AGENT", help="The agent's id or name.")],
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Write the file here (default: stdout).")
                        ] = None,
    scrub_messages: Annotated[bool, typer.Option("--scrub-messages", help="Leave the messages out.")] = False,
) -> None:
    """Export an agent (with its sleep-time agent, if it has one) as a Letta agent file."""
    import json

    with _connected(ctx) as client:
        handle = client.get_agent(id_or_name)
        doc = client.export_agent_file(handle.id, scrub_messages=scrub_messages)
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
    if out_path is None:
        typer.echo(text)
        return
    out_path.expanduser().write_text(text + "\n")
    _console(stderr=True).print(f"Wrote {handle.name} to {out_path}.")


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(
        help="Interface to listen on (default 127.0.0.1: this machine only; or $LETTA_RAY_HTTP_HOST).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        help="Port of the HTTP API (default 8283, or $LETTA_RAY_HTTP_PORT).", show_default=False)] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas of the API.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP)] = False,
) -> None:
    """Serve Letta's REST API (/v1, docs at /docs) on Ray Serve, for Letta's SDKs and clients."""
    with _errors():
        from .serving import serve_forever  # imports ray.serve, which sets its logger up: before the routing

        settings = ctx.obj.settings(log_to_driver=verbose)
        with terminal_logs(settings, verbose=verbose) as logs:
            serve_forever(settings, host=host, port=port, replicas=replicas, logs=logs,
                          on_ready=lambda text: _console().print(Text(text), soft_wrap=True))


# --------------------------------------------------------------------------- simulations


@app.command()
def sim(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="The simulation's config.")],
    out: Annotated[Path | None, typer.Option(
        help="Folder of the run (default: <home>/sims/<name>).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in the folder from its last completed round.")] = False,
    rounds: Annotated[int | None, typer.Option(
        min=1, help="Play up to this round (overrides the config).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.", show_default=False)] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP)] = False,
) -> None:
    """Run a simulation: a population of agents taking turns in rounds (Ctrl-C stops; --resume continues).

    With no key for the config's provider it runs offline, on the scripted town model."""
    from letta_ray.sim.cli import run_from_cli

    console = _console()
    with _talking(ctx, verbose=verbose) as (client, logs), _errors():
        if logs is not None:
            console.print(Text.assemble(("logs ", "bold"), logs.banner(client.settings)), soft_wrap=True)
        try:
            run_from_cli(client, config, out=out, resume=resume, rounds=rounds, seed=seed, console=console,
                         show_progress=not no_progress)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


# --------------------------------------------------------------------------- operations


@app.command()
def status(ctx: typer.Context) -> None:
    """Hosts and their nodes, the metadata store's apply lag, the last snapshot."""
    with _connected(ctx) as client:
        report = client.status()
        home, storage = client.settings.home, client.settings.storage
    out = _console()
    placement, store = report["placement"], report["store"]
    table = Table(title=f"Hosts ({placement['agents']:,} agents placed)", title_justify="left")
    for column in ("host", "node", "agents"):
        table.add_column(column, no_wrap=True)
    for host_id, agents in sorted(placement["hosts"].items()):
        table.add_row(host_id, (placement["host_nodes"].get(host_id) or "-")[:16], f"{agents:,}")
    out.print(table)
    applied = store["last_applied_at"]
    since = f"{time.time() - applied:.1f} s ago" if applied else "not since it started"
    out.print(f"Metadata store ({home}): {store['journal_backlog_bytes']:,} journaled bytes not yet applied, "
              f"in {store['journal_files']} journal files; {store['turns_applied']:,} turns applied, the last {since}.")
    if report["keepers"]:
        shipped = sum(k["appends"] for k in report["keepers"])
        out.print(f"Journal keepers: {len(report['keepers'])}, {shipped:,} appends from hosts on other nodes.")
    snap = store["snapshots"]
    if not store["snapshots_to"]:
        out.print(Text(f"Snapshots: none (no object store: LETTA_RAY_STORAGE is {storage or 'unset'}).", style="dim"))
    else:
        last = (f"the last {snap['name']} ({snap['bytes'] / 2**20:.1f} MiB, {snap['seconds']:.1f} s)"
                if snap.get("name") else "none taken yet")
        out.print(f"Snapshots to {store['snapshots_to']}: {last}"
                  + (f"; restored from {snap['restored_from']}" if snap.get("restored_from") else ""))
        if snap.get("last_error"):
            out.print(Text(f"The last snapshot failed: {snap['last_error']}", style="red"))


@app.command()
def snapshot(ctx: typer.Context) -> None:
    """Snapshot the metadata to the object store now (LETTA_RAY_STORAGE)."""
    with _connected(ctx) as client:
        taken = client.snapshot()
        target = client.settings.storage
    _console().print(f"Snapshot {taken['name']} written to {target}/snapshots "
                     f"({taken['bytes'] / 2**20:.1f} MiB in {taken['seconds']:.1f} s).")


# --------------------------------------------------------------------------- export


@app.command("export-parquet")
def export_parquet(
    ctx: typer.Context,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Directory for the Parquet files (default: <home>/export).", show_default=False)] = None,
) -> None:
    """Write the metadata tables (agents, blocks, messages, tools, ...) as Parquet files."""
    out = _console()
    with _connected(ctx) as client:
        target = (out_dir.expanduser().resolve() if out_dir else client.settings.export_path)
        with out.status(f"Exporting the metadata tables to {target}…"):
            paths = client.export_parquet(str(target))
    import pyarrow.parquet as pq

    table = Table(title=f"Parquet export in {target}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("file", no_wrap=True)
    for name, path in sorted(paths.items()):
        try:
            rows, size = str(pq.read_metadata(path).num_rows), str(Path(path).stat().st_size)
        except OSError:  # on a cluster the store may write where this machine cannot read
            rows = size = "?"
        table.add_row(name, rows, size, str(path))
    out.print(table)


if __name__ == "__main__":
    app()
