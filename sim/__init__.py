"""Simulations: populations of agents made from templates, a topology of who hears whom,
and rounds in which every agent hears its neighbours and takes one turn.

``letta-ray sim CONFIG.yaml`` runs one; from Python, :func:`letta_ray.sim.run`.
"""
