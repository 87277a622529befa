"""Simulations: populations of agents made from templates, a topology of who hears whom,
and rounds in which every agent hears its neighbours and takes one turn.

``letta-ray sim CONFIG.yaml`` runs one; from Python::

    from letta_ray.sim import load_config, run
    sim = run(load_config("town.yaml"), client)
    sim.metrics.table()   # one row per round
"""

from .config import AgentTemplate, SimConfig, load_config, parse_config
from .population import PopulationSpec, Profile
from .runner import Simulation, run
from .topology import TopologySpec

__all__ = ["AgentTemplate", "PopulationSpec", "Profile", "SimConfig", "Simulation", "TopologySpec", "load_config",
           "parse_config", "run"]
