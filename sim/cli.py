"""``letta-ray sim CONFIG.yaml``: run a simulation with a progress bar, then its summary."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from .config import load_config
from .metrics import summary_table
from .runner import Simulation

if TYPE_CHECKING:
    from letta_ray.actors.client import Client


def run_from_cli(client: Client, config_path: Path, *, out: Path | None, resume: bool, rounds: int | None,
                 seed: int | None, console: Console, show_progress: bool = True) -> Simulation:
    """What the command does, given a connected client. Ctrl-C stops it between turns;
    ``--resume`` continues from the last completed round."""
    config = load_config(config_path, rounds=rounds, seed=seed)
    run_dir = (out or client.settings.home / "sims" / config.name).expanduser().resolve()
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
