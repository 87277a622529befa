"""A small town exchanging news, against the loopback fake model (no key, no network).

    python examples/town.py [--rounds 4] [--out DIR]

Forty townsfolk with different personas (examples/town.yaml) each hear what their
neighbours said in the last round and take one turn: pass the news on, and now and
then note in their memory who told them what. Prints the metrics per round, where the
news travelled, and one agent's memory at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from rich.console import Console

import letta_ray
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.sim import load_config, run
from letta_ray.sim.fake import town_responder
from letta_ray.sim.metrics import summary_table

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a new temporary one)")
    args = parser.parse_args()
    console = Console()
    home = Path(tempfile.mkdtemp(prefix="letta-ray-town-"))
    with FakeOpenAIServer(town_responder) as llm, letta_ray.connect(home=str(home)) as client:
        config = load_config(HERE / "town.yaml", rounds=args.rounds)
        config.agent.model, config.agent.model_endpoint = f"openai/{llm.model}", llm.url
        sim = run(config, client, args.out or home / "sims" / "town")
        console.print(summary_table(sim.metrics.table()))
        last = sim.completed_rounds()
        news = Counter(text.split("news: ", 1)[-1].rstrip(".") for text in sim.outbox(last).values())
        console.print(f"[bold]News going round in round {last}:[/bold]")
        for item, count in news.most_common(5):
            console.print(f"  {count:3d} x {item}")
        someone = client.get_agent(sim.agent_ids[0])
        console.print(f"[bold]{someone.name}'s memory:[/bold]")
        for label, block in someone.blocks.items():
            console.print(f"  <{label}> {block.value}")
        console.print(f"Chart: {sim.plot()}   Run folder: {sim.run_dir}")


if __name__ == "__main__":
    main()
