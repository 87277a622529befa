"""letta_ray: stateful LLM agents with self-edited memory, on Ray."""
