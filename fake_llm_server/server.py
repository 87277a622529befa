"""A loopback OpenAI-compatible server that answers from a fake LLM.

An HTTP shell over the fakes of ``letta_ray.testing``. It runs uvicorn in a daemon
thread of the calling process, bound to 127.0.0.1 only, so tests and benchmarks can
drive the real litellm path without any provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from letta_ray.deps import LLM, LLMResponse, pieces
from letta_ray.errors import LLMError
from letta_ray.schemas import LLMConfig
from letta_ray.testing import FunctionLLM, ScriptedLLM, ScriptExhausted, echo_responder

HOST = "127.0.0.1"

_DEFAULT_ERRORS = {
    400: ("invalid_request_error", "Bad request (injected by FakeOpenAIServer)"),
    401: ("invalid_request_error", "Incorrect API key provided (injected by FakeOpenAIServer)"),
    404: ("invalid_request_error", "The model does not exist (injected by FakeOpenAIServer)"),
    429: ("requests", "Rate limit reached (injected by FakeOpenAIServer)"),
}
_CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted "
    "in 9000 tokens. Please reduce the length of the messages. (injected by FakeOpenAIServer)"
)


FaultKind = Literal["status", "hang", "empty", "reset"]


@dataclass(frozen=True)
class _Fault:
    kind: FaultKind
    status: int = 500
    message: str | None = None
    code: str | None = None
    retry_after: float | None = None
    seconds: float = 30.0


class _Reset(Exception):
    """Raised inside a response body: the server drops the connection mid-response."""


def _torn_response(stream: bool) -> Response:
    """The start of an answer, then the connection dropped (uvicorn closes it when the body raises)."""
    async def body() -> Any:
        if stream:
            yield 'data: {"id": "chatcmpl-torn", "object": "chat.completion.chunk", "choices": [{"index": 0, ' \
                  '"delta": {"role": "assistant", "content": "I was ab"}, "finish_reason": null}]}\n\n'
        else:
            yield '{"id": "chatcmpl-torn", "object": "chat.completion", "choices": [{"index": 0, "mess'
        await asyncio.sleep(0.05)
        raise _Reset("connection reset by FakeOpenAIServer")

    media = "text/event-stream" if stream else "application/json"
    headers = None if stream else {"Content-Length": "4096"}
    return StreamingResponse(body(), media_type=media, headers=headers)


def _as_llm(responder: Any, keep_history: int | None) -> LLM:
    if responder is None:
        return FunctionLLM(echo_responder, keep_history=keep_history)
    if hasattr(responder, "complete"):
        return responder
    if isinstance(responder, list | tuple):
        return ScriptedLLM(responder, keep_history=keep_history)
    if callable(responder):
        return FunctionLLM(responder, keep_history=keep_history)
    raise TypeError(
        "FakeOpenAIServer responder must be an LLM (FunctionLLM, ScriptedLLM, ...), a "
        f"fn(messages, info) or a list of scripted responses, got {type(responder).__name__}"
    )


def hash_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector: hashed bag of words, so shared words mean similarity."""
    vector = [0.0] * dim
    for token in re.findall(r"\w+", text.lower()) or [text]:
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class FakeOpenAIServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 answering from a fake LLM.

    ``responder`` is any ``LLM`` (``FunctionLLM``, ``ScriptedLLM``, ...), a
    ``fn(messages, info)`` as for ``FunctionLLM``, or a list of scripted responses. By
    default it echoes the last user message ("You said: ..."), through ``send_message``
    when that tool is offered.

    Serves ``POST /v1/chat/completions`` (JSON and ``stream: true`` SSE),
    ``POST /v1/embeddings`` (deterministic hash vectors) and ``GET /v1/models``::

        with FakeOpenAIServer() as server:
            config = server.llm_config()  # model_endpoint=server.url
    """

    def __init__(
        self,
        responder: Any = None,
        *,
        model: str = "fake-model",
        embedding_dim: int = 64,
        latency_s: float = 0.0,
        keep_requests: int | None = 10_000,
        port: int = 0,
        token_interval_s: float = 0.0,
    ) -> None:
        # The LLM it builds keeps as many calls as the server keeps requests: a server
        # answering a long benchmark must not hold a copy of every prompt it was sent.
        self.llm: LLM = _as_llm(responder, keep_requests)
        self.model = model
        self.embedding_dim = embedding_dim
        self.latency_s = latency_s
        # > 0: a streamed answer comes a word at a time, one every token_interval_s (a
        # model generating at a fixed rate; an answer not streamed comes whole as its last
        # word would have); first_pieces has when each stream's first
        # word went out (time.perf_counter(), the clock of every process on the machine)
        self.token_interval_s = token_interval_s
        self.first_pieces: deque[float] = deque(maxlen=keep_requests)
        self.requests: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self.request_count = 0
        self.in_flight = 0  # chat requests being answered now
        self.max_in_flight = 0  # the most ever answered at once (reset it to measure a burst)
        self.errors: list[BaseException] = []
        self._port = port
        self._failures: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        """The base URL, ending in ``/v1``: what OpenAI clients call ``base_url``."""
        return f"http://{HOST}:{self.port}/v1"

    def llm_config(self, **overrides: Any) -> LLMConfig:
        """An ``LLMConfig`` pointing at this server."""
        values = {"model": self.model, "model_endpoint": self.url, **overrides}
        return LLMConfig(**values)

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            return self
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self._port))
        self._socket = sock
        config = uvicorn.Config(
            self._app(),
            loop="uvloop" if find_spec("uvloop") else "asyncio",
            http="httptools" if find_spec("httptools") else "h11",
            lifespan="off",
            log_config=None,  # leave the process's logging setup alone
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            backlog=4096,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-openai-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeOpenAIServer failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks

    def fail_next(self, n: int = 1, status: int = 429, message: str | None = None, *, code: str | None = None,
                  retry_after: float | None = None) -> None:
        """Answer the next ``n`` POST requests with HTTP ``status`` instead of a result.

        ``code="context_length_exceeded"`` (with status 400) mimics OpenAI's
        context-window error, message included; ``retry_after`` sends a ``Retry-After``
        header (seconds), as a provider throttling a client does.
        """
        self.inject("status", n, status=status, message=message, code=code, retry_after=retry_after)

    def inject(self, kind: FaultKind, n: int = 1, *, status: int = 500, message: str | None = None,
               code: str | None = None, retry_after: float | None = None, seconds: float = 30.0) -> None:
        """The next ``n`` POST requests meet a fault instead of an answer:

        - ``"status"``: an HTTP error (see ``fail_next``);
        - ``"hang"``: no answer for ``seconds`` (longer than the client waits: a timeout);
        - ``"empty"``: a 200 whose ``choices`` list is empty;
        - ``"reset"``: the headers and part of the body, then the connection is dropped
          (mid-stream, for a streamed request).
        """
        with self._lock:
            self._failures.extend([_Fault(kind, status, message, code, retry_after, seconds)] * n)

    def enqueue(self, *responses: Any) -> None:
        """Append turns to the script of a ``ScriptedLLM`` responder."""
        if not isinstance(self.llm, ScriptedLLM):
            raise TypeError("enqueue() needs a ScriptedLLM responder (pass a list to the server)")
        self.llm.enqueue(*responses)

    # ------------------------------------------------------------------ app

    def _app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        for prefix in ("/v1", ""):
            app.add_api_route(f"{prefix}/chat/completions", self._chat, methods=["POST"])
            app.add_api_route(f"{prefix}/embeddings", self._embeddings, methods=["POST"])
            app.add_api_route(f"{prefix}/models", self._models, methods=["GET"])
        return app

    async def _begin(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        """Parse and log a POST; return an injected error response if one is due."""
        body = json.loads(await request.body() or b"{}")
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        self.request_count += 1
        failure = None
        if self._failures:
            with self._lock:
                failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            if failure.kind == "status":
                return body, self._error(failure.status, failure.message, failure.code, failure.retry_after)
            if failure.kind == "hang":
                await asyncio.sleep(failure.seconds)
            elif failure.kind == "empty":
                return body, Response(json.dumps({"id": "chatcmpl-empty", "object": "chat.completion",
                                                  "created": int(time.time()), "model": self.model, "choices": [],
                                                  "usage": {"prompt_tokens": 1, "completion_tokens": 0,
                                                            "total_tokens": 1}}), media_type="application/json")
            elif failure.kind == "reset":
                return body, _torn_response(bool(body.get("stream")))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return body, None

    @staticmethod
    def _error(status: int, message: str | None = None, code: str | None = None,
               retry_after: float | None = None) -> Response:
        kind, default = _DEFAULT_ERRORS.get(
            status, ("server_error", f"The server had an error (HTTP {status}, injected by FakeOpenAIServer)")
        )
        if code == "context_length_exceeded":
            kind, default = "invalid_request_error", _CONTEXT_LENGTH_MESSAGE
        error = {"message": message or default, "type": kind, "param": None, "code": code}
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return Response(json.dumps({"error": error}), status_code=status, media_type="application/json",
                        headers=headers)

    def _config(self, body: dict[str, Any]) -> LLMConfig:
        try:
            return LLMConfig(
                model=body.get("model") or self.model,
                model_endpoint=self.url,
                temperature=body.get("temperature", 0.7),
                max_tokens=body.get("max_tokens") or body.get("max_completion_tokens"),
            )
        except ValueError:
            return LLMConfig(model=body.get("model") or self.model, model_endpoint=self.url)

    async def _chat(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body, failure = await self._begin(request)
        if failure is not None:
            return failure
        try:
            response = await self.llm.complete(
                body.get("messages") or [],
                body.get("tools") or [],
                self._config(body),
                tool_choice=body.get("tool_choice"),
            )
        except LLMError as exc:
            self.errors.append(exc)
            return self._error(exc.status_code or 500, str(exc))
        except Exception as exc:
            # A broken script is the test's bug, not a provider hiccup: 400, so no retries.
            self.errors.append(exc)
            prefix = "" if isinstance(exc, ScriptExhausted) else f"responder raised {type(exc).__name__}: "
            return self._error(400, f"FakeOpenAIServer: {prefix}{exc}")
        model = body.get("model") or self.model
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._sse(response, model, include_usage), media_type="text/event-stream")
        if self.token_interval_s > 0:  # a paced model takes as long to answer whole as to stream
            words = sum(is_piece for _, is_piece in self._sse_frames(response, model, False, words=True))
            await asyncio.sleep(max(0, words - 1) * self.token_interval_s)
        message: dict[str, Any] = {"role": "assistant", "content": response.content}
        if response.reasoning:
            message["reasoning_content"] = response.reasoning
        if response.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in response.tool_calls
            ]
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": response.finish_reason}],
            "usage": _usage(response),
        }
        return Response(json.dumps(payload), media_type="application/json")

    async def _sse(self, response: LLMResponse, model: str, include_usage: bool) -> AsyncIterator[str]:
        paced = self.token_interval_s > 0
        first = True
        for text, is_piece in self._sse_frames(response, model, include_usage, words=paced):
            if paced and is_piece and not first:
                await asyncio.sleep(self.token_interval_s)
            yield text
            if is_piece and first:
                first = False
                self.first_pieces.append(time.perf_counter())

    def _sse_frames(self, response: LLMResponse, model: str, include_usage: bool, *,
                    words: bool) -> Iterator[tuple[str, bool]]:
        """The frames of a streamed answer, each with whether it carries a piece of it."""
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[str, bool]:
            body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n", bool(delta) and delta.get("content") != ""

        def split(text: str, parts: int = 4) -> list[str]:
            return re.findall(r"\s*\S+\s*", text) or ([text] if text else []) if words else pieces(text, parts)

        yield chunk({"role": "assistant", "content": ""})
        for piece in split(response.reasoning or ""):
            yield chunk({"reasoning_content": piece})
        for piece in split(response.content or ""):
            yield chunk({"content": piece})
        for index, call in enumerate(response.tool_calls):
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in split(call.arguments, 3):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, response.finish_reason)
        if include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(response)})}\n\n", False
        yield "data: [DONE]\n\n", False

    async def _embeddings(self, request: Request) -> Response:
        body, failure = await self._begin(request)
        if failure is not None:
            return failure
        raw = body.get("input", [])
        if isinstance(raw, str):
            texts = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            texts = [" ".join(map(str, raw))]  # one pre-tokenised input
        else:
            texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        dim = int(body.get("dimensions") or self.embedding_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = hash_embedding(text, dim)
            encoded: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t) // 4 + 1 for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(payload), media_type="application/json")

    async def _models(self) -> Response:
        payload = {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "letta-ray-fake"}],
        }
        return Response(json.dumps(payload), media_type="application/json")


def _usage(response: LLMResponse) -> dict[str, int]:
    return {
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "total_tokens": response.prompt_tokens + response.completion_tokens,
    }


def main(argv: list[str] | None = None) -> None:
    """Serve a fake model (the echo model unless ``--responder``) in its own process until stdin closes.

    ``python -m letta_ray.fake_llm_server`` prints the base URL on its first line of
    output; benchmarks use it so the fake provider does not share their GIL.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--token-interval-s", type=float, default=0.0,
                        help="stream a word at a time, one every this many seconds")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--responder", default=None, metavar="MODULE:FUNCTION",
                        help="a fn(messages, info) answering each request (default: the echo model)")
    args = parser.parse_args(argv)
    responder = None
    if args.responder:
        import importlib

        module, _, function = args.responder.partition(":")
        responder = getattr(importlib.import_module(module), function)
    server = FakeOpenAIServer(
        responder, latency_s=args.latency_s, embedding_dim=args.embedding_dim, port=args.port, keep_requests=0,
        token_interval_s=args.token_interval_s,
    )
    with server:
        print(server.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin (or dies) to stop us


if __name__ == "__main__":
    main()
