"""Environment hooks the simulation tests load by dotted path."""

from __future__ import annotations

import random

from letta_ray.sim import Profile


def storm_in_round_2(round_no: int, profiles: list[Profile], rng: random.Random) -> dict[int, list[str]]:
    if round_no != 2:
        return {}
    return {p.index: [f"A storm is coming to {p.fields.get('town', 'town')}."] for p in profiles}
