"""A loopback OpenAI-compatible fake LLM server (an HTTP shell over ``letta_ray.testing``).

``FakeOpenAIServer`` serves the fakes of ``letta_ray.testing`` on 127.0.0.1 so the real
litellm path runs end to end without a provider; ``python -m letta_ray.fake_llm_server``
serves one in its own process and prints its URL.
"""

from .server import FakeOpenAIServer, hash_embedding

__all__ = ["FakeOpenAIServer", "hash_embedding"]
