"""Tools: typed functions whose signature and Google-style docstring become the schema.

A tool is a plain (sync or async) function. If its first parameter is annotated
``ToolContext`` it receives the running agent's context and is not shown to the model.
A tool signals a mistake of the model by raising ``ToolError``; the text goes back to
the model as a failed tool result. Any other exception is reported the same way, since
it was the model's arguments that led there, but with its type name.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import textwrap
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_type_hints

import docstring_parser
from pydantic import TypeAdapter, ValidationError, create_model

from letta_ray.errors import ToolDefinitionError, ToolError
from letta_ray.schemas import Tool

if TYPE_CHECKING:
    from letta_ray.deps import StepDeps
    from letta_ray.memory import Memory
    from letta_ray.schemas import AgentState

HEARTBEAT_PARAM = "request_heartbeat"
HEARTBEAT_SCHEMA = {
    "type": "boolean",
    "description": "Request an immediate heartbeat after the function runs. Set to true to "
    "take another step right away (to call another function or reply); false ends your turn.",
}


@dataclass
class ToolContext:
    """What a running tool may see and touch: the agent, its memory and its dependencies."""

    agent: AgentState
    memory: Memory
    deps: StepDeps
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_id(self) -> str:
        return self.agent.id

    def now(self) -> datetime:
        return self.deps.clock()


SandboxedCall = Callable[[dict[str, Any], "ToolContext"], Awaitable["ToolOutcome"]]
"""How a user tool runs: its validated arguments and the call's context in, its outcome out
(the runtime sends it to the tool sandbox; see ``letta_ray.sandbox``)."""


@dataclass(frozen=True)
class ToolFunction:
    """A tool's schema together with what runs it: a function in this process (built-in
    tools), or ``sandboxed``, a call into the tool sandbox (user tools)."""

    tool: Tool
    fn: Callable[..., Any] | None
    takes_context: bool
    context_param: str | None = None
    sandboxed: SandboxedCall | None = None

    @property
    def name(self) -> str:
        return self.tool.name


def _context_param(sig: inspect.Signature, hints: dict[str, Any]) -> str | None:
    params = list(sig.parameters.values())
    if not params:
        return None
    first = params[0]
    hint = hints.get(first.name)
    if hint is ToolContext or first.name in ("ctx", "agent_state"):
        return first.name
    return None


def build_tool(fn: Callable[..., Any], *, name: str | None = None, source_code: str | None = None,
               tool_type: str = "custom", tags: list[str] | None = None) -> ToolFunction:
    """Make a tool from a typed function; its docstring is the description the model reads."""
    tool_name = name or fn.__name__
    if not tool_name.isidentifier():
        raise ToolDefinitionError(f"tool name {tool_name!r} is not a valid identifier")
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    description = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    if not description:
        raise ToolDefinitionError(
            f"tool {tool_name!r} has no docstring: the docstring is what the model reads, write one"
        )
    sig = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except Exception as exc:  # unresolvable annotations in user source
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot resolve type hints: {exc}") from exc
    ctx_name = _context_param(sig, hints)
    arg_docs = {p.arg_name: (p.description or "") for p in doc.params}
    fields: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        if pname == ctx_name:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {tool_name!r}: *args/**kwargs cannot be described to a model")
        annotation = hints.get(pname, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
    try:
        args_model = create_model(f"{tool_name}_args", **fields)  # type: ignore[call-overload]
        params_schema = args_model.model_json_schema()
    except Exception as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot build a JSON schema: {exc}") from exc
    params_schema.pop("title", None)
    for pname, prop in params_schema.get("properties", {}).items():
        prop.pop("title", None)
        if arg_docs.get(pname):
            prop["description"] = arg_docs[pname]
    params_schema.setdefault("required", [])
    schema = {"name": tool_name, "description": description, "parameters": params_schema}
    tool = Tool(
        name=tool_name,
        description=description,
        json_schema=schema,
        source_code=source_code if source_code is not None else _source_of(fn),
        tool_type=tool_type,
        tags=tags or [],
    )
    return ToolFunction(tool=tool, fn=fn, takes_context=ctx_name is not None, context_param=ctx_name)


def _source_of(fn: Callable[..., Any]) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None


def tool_from_source(source_code: str, *, name: str | None = None, tags: list[str] | None = None) -> ToolFunction:
    """Build a tool from Python source defining one function (the last one, or ``name``)."""
    from letta_ray.schemas import AgentState

    # What Letta's tool sources may name without importing it.
    namespace: dict[str, Any] = {"ToolContext": ToolContext, "ToolError": ToolError, "AgentState": AgentState}
    try:
        compiled = compile(source_code, f"<tool {name or 'source'}>", "exec")
        exec(compiled, namespace)
    except SyntaxError as exc:
        raise ToolDefinitionError(f"tool source does not parse: {exc.msg} (line {exc.lineno})") from exc
    except Exception as exc:
        raise ToolDefinitionError(f"tool source failed to load: {type(exc).__name__}: {exc}") from exc
    functions = [v for k, v in namespace.items() if inspect.isfunction(v) and not k.startswith("_")
                 and v.__module__ == namespace.get("__name__")]
    if name:
        fn = namespace.get(name)
        if not inspect.isfunction(fn):
            raise ToolDefinitionError(f"tool source defines no function named {name!r}")
    elif functions:
        fn = functions[-1]
    else:
        raise ToolDefinitionError("tool source defines no function")
    return build_tool(fn, source_code=source_code, tags=tags)


_SCHEMAS: dict[tuple[str, bool], dict[str, Any]] = {}


def openai_schema(tool: Tool, *, with_heartbeat: bool) -> dict[str, Any]:
    """The schema as sent to the LLM (OpenAI function-tool format), heartbeat added if asked.

    Built once per tool (ids are unique per definition) and shared: nothing downstream
    mutates it.
    """
    key = (tool.id, with_heartbeat)
    schema = _SCHEMAS.get(key)
    if schema is None:
        schema = _SCHEMAS[key] = _build_openai_schema(tool, with_heartbeat)
    return schema


def _build_openai_schema(tool: Tool, with_heartbeat: bool) -> dict[str, Any]:
    fn = json.loads(json.dumps(tool.json_schema))  # deep copy, cheap for small schemas
    params = fn.setdefault("parameters", {"type": "object", "properties": {}, "required": []})
    if with_heartbeat:
        params.setdefault("properties", {})[HEARTBEAT_PARAM] = HEARTBEAT_SCHEMA
        required = params.setdefault("required", [])
        if HEARTBEAT_PARAM not in required:
            required.append(HEARTBEAT_PARAM)
    return {"type": "function", "function": fn}


def sandboxed_tool(tool: Tool, run: SandboxedCall) -> ToolFunction:
    """A stored user tool whose calls go to ``run`` (the sandbox); its code never runs here."""
    return ToolFunction(tool=tool, fn=None, takes_context=False, sandboxed=run)


@dataclass
class ToolOutcome:
    """What running one tool call produced (``error_type``: the exception's type, if it raised)."""

    ok: bool
    message: str
    request_heartbeat: bool = False
    value: Any = None
    error_type: str | None = None


def _format_exception(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (in {frames[-1].name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


async def run_tool(tf: ToolFunction, raw_arguments: str, ctx: ToolContext) -> ToolOutcome:
    """Run one tool call from the model's raw JSON arguments; never raises for model mistakes."""
    try:
        args = json.loads(raw_arguments) if raw_arguments and raw_arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return ToolOutcome(False, f"Your arguments to {tf.name} are not valid JSON ({exc.msg} at "
                                  f"position {exc.pos}). Call it again with a JSON object.")
    if not isinstance(args, dict):
        return ToolOutcome(False, f"Arguments to {tf.name} must be a JSON object, got {type(args).__name__}.")
    heartbeat = args.pop(HEARTBEAT_PARAM, False)
    heartbeat = heartbeat is True or (isinstance(heartbeat, str) and heartbeat.lower() == "true")
    try:
        _check_argument_names(tf, args)
        if tf.sandboxed is not None:
            outcome = await tf.sandboxed(args, ctx)
            outcome.request_heartbeat = heartbeat
            return outcome
        bound = _validate_args(tf, args)
    except ToolError as exc:
        return ToolOutcome(False, str(exc), heartbeat)
    assert tf.fn is not None
    try:
        if tf.takes_context:
            ctx_value: Any = ctx.agent if tf.context_param == "agent_state" else ctx
            result = tf.fn(ctx_value, **bound)
        else:
            result = tf.fn(**bound)
        if inspect.isawaitable(result):
            result = await result
    except ToolError as exc:
        return ToolOutcome(False, str(exc), heartbeat)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return ToolOutcome(False, f"Error running {tf.name}: {_format_exception(exc)}", heartbeat,
                           error_type=type(exc).__name__)
    text = result if isinstance(result, str) else ("None" if result is None else _to_text(result))
    return ToolOutcome(True, clip(text, tf.tool.return_char_limit), heartbeat, result)


def clip(text: str, limit: int) -> str:
    """A tool's result cut to its ``return_char_limit``, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [truncated {len(text) - limit} characters]"


def _to_text(value: Any) -> str:
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


_ADAPTERS: dict[str, dict[str, TypeAdapter[Any]]] = {}


def _check_argument_names(tf: ToolFunction, args: dict[str, Any]) -> None:
    """ToolError for arguments the schema does not name, or required ones left out."""
    props = tf.tool.json_schema.get("parameters", {}).get("properties", {})
    required = tf.tool.json_schema.get("parameters", {}).get("required", [])
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(f"{tf.name} got unexpected arguments {unknown}; it takes {sorted(props)}.")
    missing = [r for r in required if r not in args]
    if missing:
        raise ToolError(f"{tf.name} is missing required arguments {missing}.")


def _validate_args(tf: ToolFunction, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments converted to the function's annotated types; ToolError if one does not fit."""
    props = tf.tool.json_schema.get("parameters", {}).get("properties", {})
    adapters = _ADAPTERS.get(tf.tool.id)
    if adapters is None:
        hints = get_type_hints(tf.fn)
        adapters = {p: TypeAdapter(hints.get(p, Any)) for p in props}
        _ADAPTERS[tf.tool.id] = adapters
    out: dict[str, Any] = {}
    for key, value in args.items():
        try:
            out[key] = adapters[key].validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ToolError(f"Argument {key!r} of {tf.name} is invalid: {first['msg']}.") from exc
    return out


class Toolset:
    """The tools one agent can call, by name."""

    def __init__(self, tools: list[ToolFunction] | None = None) -> None:
        self._tools: dict[str, ToolFunction] = {}
        for tf in tools or []:
            self.add(tf)

    def add(self, tf: ToolFunction) -> None:
        self._tools[tf.name] = tf

    def get(self, name: str) -> ToolFunction | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)
