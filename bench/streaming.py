"""Token streaming over HTTP: time to first token against the fake LLM's own first token.

The fake LLM (in this process, so both ends read one ``time.perf_counter()`` clock)
streams its answer a word at a time at a fixed rate (``--token-ms`` per word). Each of
``--messages`` turns is sent to a ``letta_v1_agent`` over ``POST
/v1/agents/{id}/messages/stream`` with ``stream_tokens=true``, and the run prints:
- time to first token over HTTP: from sending the request to the first
  ``assistant_message`` piece read by the client;
- the fake's own first token: from sending the request to the fake writing its first word;
- their difference, what the whole path (Serve, the replica, the host's turn, the Ray
  stream back) adds to a token: the target is <= 5 ms (p50);
- the same turn without ``stream_tokens``: the reply arrives whole, after the last word;
- the stream's length against the fake's (every word paced, nothing held back).
Medians (and p90) over the turns; a warm-up turn is left out.

Run: .venv/bin/python bench/streaming.py [--messages 40] [--token-ms 20] [--words 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def turn(http: Any, agent_id: str, tokens: bool) -> dict[str, float]:
    """One streamed turn: when (perf_counter) it was sent, its first and last reply piece
    arrived, and how many pieces the reply came in."""
    body = {"messages": [{"role": "user", "content": "tell me a story"}], "stream_tokens": tokens}
    sent = time.perf_counter()
    first = last = 0.0
    pieces = 0
    with http.stream("POST", f"/v1/agents/{agent_id}/messages/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            frame = json.loads(line[6:])
            if frame.get("message_type") == "assistant_message":
                last = time.perf_counter()
                first = first or last
                pieces += 1
            elif frame.get("message_type") == "stop_reason":
                assert frame["stop_reason"] == "end_turn", frame
    assert pieces, "no assistant_message in the stream"
    return {"sent": sent, "first": first, "last": last, "pieces": pieces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--token-ms", type=float, default=20.0, help="the fake's pace: ms per word")
    parser.add_argument("--words", type=int, default=30, help="words in each reply")
    args = parser.parse_args()

    import httpx

    import letta_ray
    from letta_ray.deps import LLMResponse
    from letta_ray.fake_llm_server import FakeOpenAIServer
    from letta_ray.serve.deployment import start_http
    from letta_ray.serve.startup import free_port

    story = " ".join(f"word{i}" for i in range(args.words))

    def responder(messages: Any, info: Any) -> LLMResponse:
        return LLMResponse(content=story, prompt_tokens=50, completion_tokens=args.words)

    fake = FakeOpenAIServer(responder, token_interval_s=args.token_ms / 1000, keep_requests=1_000)
    with fake, tempfile.TemporaryDirectory() as home:
        client = letta_ray.connect(home=home)
        try:
            base = start_http(client.settings, host="127.0.0.1", port=free_port())
            with httpx.Client(base_url=base, timeout=60) as http:
                created = http.post("/v1/agents/", json={
                    "name": "storyteller", "agent_type": "letta_v1_agent", "model": "fake-model",
                    "model_endpoint": fake.url, "memory_blocks": [
                        {"label": "human", "value": "A listener"}, {"label": "persona", "value": "I tell."}]})
                assert created.status_code == 200, created.text
                agent_id = created.json()["id"]
                rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
                for i in range(args.messages + 1):
                    if i % 10 == 0:  # keep the context short: every turn the same work
                        assert http.patch(f"/v1/agents/{agent_id}/reset-messages").status_code == 200
                    for tokens in (True, False):
                        row = turn(http, agent_id, tokens)
                        row["fake_first"] = fake.first_pieces[-1]
                        if i:  # the first round warms both paths up
                            rows[tokens].append(row)
        finally:
            from ray import serve

            serve.shutdown()
            client.close()

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1000:7.2f} ms  p90 {percentile(values, 90) * 1000:7.2f} ms"

    streamed, whole = rows[True], rows[False]
    fake_stream_s = (args.words - 1) * args.token_ms / 1000
    print(f"\nletta_ray token streaming — {os.cpu_count()} CPUs, Ray Serve on 127.0.0.1, fake LLM in this process "
          f"at {args.token_ms:g} ms/word, {args.words} words, {len(streamed)} turns each")
    print(f"  time to first token over HTTP (stream_tokens)   {ms([r['first'] - r['sent'] for r in streamed])}")
    print(f"  the fake's own first token                      {ms([r['fake_first'] - r['sent'] for r in streamed])}")
    added = [r["first"] - r["fake_first"] for r in streamed]
    print(f"  added by letta_ray to the first token           {ms(added)}  (target p50 <= 5 ms)")
    print(f"  reply without stream_tokens (arrives whole)     {ms([r['first'] - r['sent'] for r in whole])}")
    print(f"  streamed reply, first to last piece             {ms([r['last'] - r['first'] for r in streamed])}"
          f"  (the fake's: {fake_stream_s * 1000:.0f} ms)")
    print(f"  pieces per streamed reply: {statistics.median(r['pieces'] for r in streamed):.0f} "
          f"(words: {args.words}); without stream_tokens: {statistics.median(r['pieces'] for r in whole):.0f}")
    print(f"  first token {statistics.median(added) * 1000:.2f} ms after the fake's (target <= 5 ms): "
          f"{'met' if statistics.median(added) <= 0.005 else 'missed'}")


if __name__ == "__main__":
    main()
