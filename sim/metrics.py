"""Metrics of a simulation, one row per round.

:func:`round_metrics` sums what the agents' turns of one round returned;
:class:`MetricsLog` keeps one Parquet file per round in the run's folder, so a resumed
run finds the rounds already done; :func:`summary_table` and :func:`plot` show them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from letta_ray.messages import AssistantMessage, LettaResponse, ToolCallMessage, ToolReturnMessage

from ._files import write_parquet

# Tools that change an agent's core memory blocks. memory_finish_edits only ends a
# sleep-time agent's editing; archival_memory_insert adds a passage, not a block edit.
MEMORY_EDIT_TOOLS = frozenset(
    {"core_memory_append", "core_memory_replace", "memory_replace", "memory_insert", "memory_rethink"}
)
# Stop reasons of a turn that did not end the way the agent meant it to. The others
# (end_turn, no_tool_call, tool_rule, requires_approval) are normal ends of a turn.
ERROR_STOP_REASONS = frozenset(
    {"error", "llm_api_error", "invalid_tool_call", "max_steps", "context_window_overflow", "cancelled"}
)


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """What one agent's turn in a round gave: its response, or the error that replaced it."""

    agent_index: int
    latency_s: float
    response: LettaResponse | None
    error: str | None = None
    recovered: bool = False
    """Found already done in the store when a round was resumed: its latency and usage
    were not kept, so it counts in the totals of turns but not in latencies or tokens."""


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """The totals of one round. Latencies are of whole turns, in milliseconds."""

    round: int
    active_agents: int
    steps: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    turns_per_s: float
    duration_s: float
    replies: int
    tool_calls: int
    tool_errors: int
    memory_edits: int
    messages_delivered: int
    errors: int
    recovered: int
    tool_use: dict[str, int] = field(default_factory=dict)
    stop_reasons: dict[str, int] = field(default_factory=dict)


def round_metrics(
    round_index: int, outcomes: Sequence[TurnOutcome], duration_s: float, messages_delivered: int
) -> RoundMetrics:
    """The metrics of one round from its turns.

    ``steps`` and ``llm_calls`` are both the responses' ``usage.step_count`` (the step
    loop calls the LLM once per step). ``replies`` counts assistant messages, which is
    how ``send_message`` calls show; ``tool_calls`` and ``tool_use`` count every other
    tool call. ``errors`` counts turns that raised (``error`` set or no response) and
    turns that stopped for a reason in :data:`ERROR_STOP_REASONS`.
    """
    steps = prompt = completion = total = replies = tool_errors = memory_edits = errors = 0
    tool_use: Counter[str] = Counter()
    stop_reasons: Counter[str] = Counter()
    for outcome in outcomes:
        response = outcome.response
        if outcome.error is not None or response is None:
            errors += 1
            stop_reasons["exception"] += 1
            if response is None:
                continue
        reason = response.stop_reason.stop_reason
        stop_reasons[reason] += 1
        if reason in ERROR_STOP_REASONS and outcome.error is None:
            errors += 1
        steps += response.usage.step_count
        prompt += response.usage.prompt_tokens
        completion += response.usage.completion_tokens
        total += response.usage.total_tokens
        called: dict[str, str] = {}  # tool_call_id -> tool name, for returns without a name
        for event in response.messages:
            if isinstance(event, AssistantMessage):
                replies += 1
            elif isinstance(event, ToolCallMessage):
                tool_use[event.tool_call.name] += 1
                called[event.tool_call.tool_call_id] = event.tool_call.name
            elif isinstance(event, ToolReturnMessage):
                if event.status == "error":
                    tool_errors += 1
                elif (event.name or called.get(event.tool_call_id)) in MEMORY_EDIT_TOOLS:
                    memory_edits += 1
    latencies = sorted(outcome.latency_s * 1000 for outcome in outcomes if not outcome.recovered)
    return RoundMetrics(
        round=round_index,
        active_agents=len(outcomes),
        steps=steps,
        llm_calls=steps,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        latency_p50_ms=_percentile(latencies, 0.50),
        latency_p90_ms=_percentile(latencies, 0.90),
        latency_p99_ms=_percentile(latencies, 0.99),
        latency_max_ms=latencies[-1] if latencies else 0.0,
        turns_per_s=len(outcomes) / duration_s if duration_s > 0 else 0.0,
        duration_s=duration_s,
        replies=replies,
        tool_calls=sum(tool_use.values()),
        tool_errors=tool_errors,
        memory_edits=memory_edits,
        messages_delivered=messages_delivered,
        errors=errors,
        recovered=sum(1 for outcome in outcomes if outcome.recovered),
        tool_use=dict(sorted(tool_use.items())),
        stop_reasons=dict(sorted(stop_reasons.items())),
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


# --------------------------------------------------------------------------- storage

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "dict[str, int]": pa.map_(pa.string(), pa.int64())}
# One column per RoundMetrics field (their annotations are strings here, see the
# __future__ import); the per-tool and per-stop-reason counts are Parquet maps.
SCHEMA = pa.schema([pa.field(f.name, _ARROW_TYPES[str(f.type)]) for f in fields(RoundMetrics)])
_ROUND_FILE = re.compile(r"^round-(\d+)\.parquet$")


class MetricsLog:
    """The metrics of a run: ``run_dir/metrics/round-000001.parquet``, one file per round."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "metrics"

    def append(self, metrics: RoundMetrics) -> Path:
        """Write one round's file whole or not at all; writing a round again replaces it."""
        path = self.dir / f"round-{metrics.round:06d}.parquet"
        return write_parquet(path, pa.Table.from_pylist([_to_row(metrics)], schema=SCHEMA))

    def table(self) -> pa.Table:
        """Every round written so far, sorted by round (empty, with the schema, if none)."""
        files = self._files()
        if not files:
            return SCHEMA.empty_table()
        table = pa.concat_tables([pq.read_table(path, schema=SCHEMA) for _, path in files])
        return table.sort_by("round")

    def rounds(self) -> list[RoundMetrics]:
        """Every round written so far, as :class:`RoundMetrics`."""
        return [_from_row(row) for row in self.table().to_pylist()]

    def last_round(self) -> int | None:
        """The highest round written, or None before the first."""
        files = self._files()
        return files[-1][0] if files else None

    def _files(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = []
        for path in self.dir.iterdir():
            match = _ROUND_FILE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)


def _to_row(metrics: RoundMetrics) -> dict[str, Any]:
    row = asdict(metrics)
    row["tool_use"] = list(metrics.tool_use.items())
    row["stop_reasons"] = list(metrics.stop_reasons.items())
    return row


def _from_row(row: dict[str, Any]) -> RoundMetrics:
    row = dict(row)
    row["tool_use"] = dict(row["tool_use"] or [])
    row["stop_reasons"] = dict(row["stop_reasons"] or [])
    return RoundMetrics(**row)


# --------------------------------------------------------------------------- display


def summary_table(table: pa.Table, max_rows: int = 20) -> Table:
    """A rich table of the rounds (the first and last ``max_rows // 2`` if more) and their totals."""
    rows = table.to_pylist()
    out = Table(title=f"Simulation: {len(rows)} round{'s' if len(rows) != 1 else ''}")
    headers = ["round", "agents", "turns/s", "p50 ms", "p90 ms", "p99 ms", "llm calls", "tokens"]
    headers += ["tool calls", "memory edits", "messages", "errors", "seconds"]
    for header in headers:
        out.add_column(header, justify="right")

    def line(r: dict[str, Any]) -> list[str]:
        return [
            str(r["round"]),
            f"{r['active_agents']:,}",
            f"{r['turns_per_s']:,.1f}",
            f"{r['latency_p50_ms']:,.0f}",
            f"{r['latency_p90_ms']:,.0f}",
            f"{r['latency_p99_ms']:,.0f}",
            f"{r['llm_calls']:,}",
            f"{r['total_tokens']:,}",
            f"{r['tool_calls']:,}",
            f"{r['memory_edits']:,}",
            f"{r['messages_delivered']:,}",
            f"{r['errors']:,}",
            f"{r['duration_s']:,.1f}",
        ]

    head, tail = max_rows // 2, max_rows - max_rows // 2
    shown = rows if len(rows) <= max_rows else [*rows[:head], None, *rows[-tail:]]
    for r in shown:
        if r is None:
            out.add_row(*(["…"] * len(headers)), style="dim")
        else:
            out.add_row(*line(r))
    if rows:
        turns = sum(r["active_agents"] for r in rows)
        seconds = sum(r["duration_s"] for r in rows)
        totals = ["total", f"{turns:,}", f"{turns / seconds:,.1f}" if seconds > 0 else "0.0", "", "", ""]
        for key in ("llm_calls", "total_tokens", "tool_calls", "memory_edits", "messages_delivered", "errors"):
            totals.append(f"{sum(r[key] for r in rows):,}")
        totals.append(f"{seconds:,.1f}")
        out.add_section()
        out.add_row(*totals, style="bold")
    return out


def plot(table: pa.Table, path: Path) -> Path:
    """Write a PNG of the main series per round: throughput, latency, tokens, tools, messages, errors."""
    # Imported here: matplotlib costs ~0.5 s to import and only the end of a run needs it.
    # Figure without pyplot draws with Agg and touches no global backend state.
    from matplotlib.figure import Figure

    data = table.to_pydict() if table.num_rows else {name: [] for name in SCHEMA.names}
    rounds = data["round"]
    panels: list[tuple[str, list[tuple[str, str]]]] = [
        ("agent-turns per second", [("turns_per_s", "turns/s")]),
        ("turn latency (ms)", [("latency_p50_ms", "p50"), ("latency_p90_ms", "p90"), ("latency_p99_ms", "p99")]),
        ("tokens", [("prompt_tokens", "prompt"), ("completion_tokens", "completion")]),
        ("tools", [("tool_calls", "tool calls"), ("memory_edits", "memory edits")]),
        ("messages delivered", [("messages_delivered", "messages")]),
        ("errors", [("errors", "turns with errors"), ("tool_errors", "failed tool calls")]),
    ]
    figure = Figure(figsize=(12, 10), layout="constrained")
    figure.suptitle(f"Simulation metrics, {len(rounds)} rounds")
    axes = figure.subplots(3, 2, sharex=True).flatten()
    for ax, (title, series) in zip(axes, panels, strict=True):
        for key, label in series:
            ax.plot(rounds, data[key], marker="o" if len(rounds) <= 50 else None, label=label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    for ax in axes[-2:]:
        ax.set_xlabel("round")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path
