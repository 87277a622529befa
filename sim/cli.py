"""``letta-ray sim CONFIG.yaml``: run a simulation with a progress bar, then its summary.

With no key for the provider of the config's model, the run goes offline: the agents think
with the scripted town model (``letta_ray.sim.fake``) on a loopback server in this process,
and the banner says so.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from letta_ray.errors import InvalidInputError
from letta_ray.settings import PROVIDER_KEYS, Settings

from .config import AgentTemplate, SimConfig, load_config
from .metrics import summary_table
from .runner import Simulation

if TYPE_CHECKING:
    from letta_ray.actors.client import Client

# The name the scripted town model answers to; agents reach it through litellm's openai/ prefix.
OFFLINE_MODEL = "letta-ray-town"
OFFLINE_LLM = f"openai/{OFFLINE_MODEL}"


def missing_key(agent: AgentTemplate, settings: Settings) -> str | None:
    """The provider key the agents' model needs and the environment lacks; None if none is missing.

    A model with an endpoint of its own (a local server) needs no key, and neither does a
    provider letta_ray knows no key of (litellm says what it lacks then).
    """
    if agent.model_endpoint:
        return None
    model = agent.model
    if model is None:
        model, _ = settings.resolve_default_model()
        if model is None:
            return "provider key"
        if settings.endpoint_for(model):
            return None
    provider = model.partition("/")[0]
    for env, known in PROVIDER_KEYS:
        if known.partition("/")[0] == provider:
            return None if os.environ.get(env) else env
    return None


@contextmanager
def _offline(config: SimConfig, run_dir: Path, *, resume: bool, settings: Settings,
             console: Console) -> Iterator[SimConfig]:
    """The config to run: as written, or (no key, or resuming a run started offline) on the town model."""
    marker = run_dir / "sim.json"
    saved = json.loads(marker.read_text())["config"]["agent"] if resume and marker.exists() else None
    started_offline = saved is not None and saved.get("model") == OFFLINE_LLM
    missing = missing_key(config.agent, settings)
    if missing is None and not started_offline:
        yield config
        return
    if saved is not None and not started_offline:
        raise InvalidInputError(f"the run in {run_dir} thinks with {saved.get('model')}: set {missing} to resume it")
    from letta_ray.fake_llm_server import FakeOpenAIServer

    from .fake import town_responder

    # A resumed offline run's agents know the old server's address: serve on its port again.
    port = (urlsplit(saved.get("model_endpoint") or "").port or 0) if saved is not None else 0
    try:
        server = FakeOpenAIServer(town_responder, model=OFFLINE_MODEL, port=port).start()
    except OSError as exc:
        raise InvalidInputError(f"cannot serve the offline model on 127.0.0.1:{port} again to resume the run "
                                f"in {run_dir}: {exc}") from exc
    named = settings.default_model or "the default model"
    model = (f"the scripted town model (letta_ray.sim.fake at {server.url}; not a language model: it passes "
             "news on)")
    if started_offline:
        note = f"this run was started offline: resuming it on {model}"
    elif missing == "provider key":
        note = (f"no provider key and no default model: running offline on {model}; set OPENAI_API_KEY (or "
                "another provider's key) or the config's agent.model to use a language model")
    else:
        note = f"no {missing}: running offline on {model}; set {missing} to use {config.agent.model or named}"
    console.print(Text(note, style="yellow"), soft_wrap=True)
    try:
        yield config.model_copy(update={"agent": config.agent.model_copy(
            update={"model": OFFLINE_LLM, "model_endpoint": server.url})})
    finally:
        server.stop()


def run_from_cli(client: Client, config_path: Path, *, out: Path | None, resume: bool, rounds: int | None,
                 seed: int | None, console: Console, show_progress: bool = True) -> Simulation:
    """What the command does, given a connected client. Ctrl-C stops it between turns;
    ``--resume`` continues from the last completed round."""
    config = load_config(config_path, rounds=rounds, seed=seed)
    run_dir = (out or client.settings.home / "sims" / config.name).expanduser().resolve()
    with _offline(config, run_dir, resume=resume, settings=client.settings, console=console) as config:
        return _run(client, config, config_path, run_dir, out=out, resume=resume, console=console,
                    show_progress=show_progress)


def _run(client: Client, config: SimConfig, config_path: Path, run_dir: Path, *, out: Path | None, resume: bool,
         console: Console, show_progress: bool) -> Simulation:
    started = time.perf_counter()
    with console.status(f"{'Loading' if resume else 'Creating'} {config.name}: agents, topology ..."):
        sim = client.run_sync(Simulation.open(config, client, run_dir, resume=resume))
    done = sim.completed_rounds()
    console.print(Text(f"Simulation {config.name} ({sim.sim_id}): {len(sim.profiles):,} agents ready in "
                       f"{time.perf_counter() - started:.1f} s; rounds {done + 1}..{config.rounds} to play. "
                       f"Folder: {run_dir}"), soft_wrap=True)
    progress = Progress(TextColumn("[bold]round {task.fields[round]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("turns"), TimeElapsedColumn(), console=console, disable=not show_progress)
    tasks: dict[int, int] = {}
    lock = threading.Lock()

    def on_turns(round_no: int, finished: int) -> None:
        with lock:
            if round_no not in tasks:
                tasks[round_no] = progress.add_task("", total=len(sim.active(round_no)), round=round_no)
            progress.advance(tasks[round_no], finished)

    try:
        with progress:
            client.run_sync(sim.run(on_turns=on_turns))
    except KeyboardInterrupt:
        console.print(Text(f"Stopped after round {sim.completed_rounds()}. Continue with: "
                           f"letta-ray sim {config_path} --resume"
                           + (f" --out {run_dir}" if out else ""), style="yellow"), soft_wrap=True)
        raise
    table = sim.metrics.table()
    console.print(summary_table(table))
    chart = sim.plot()
    digest = client.run_sync(sim.transcript_hash())
    console.print(Text(f"Metrics: {run_dir / 'metrics'} (Parquet, one file per round); chart: {chart}\n"
                       f"Transcript hash: {digest}"), soft_wrap=True)
    return sim
