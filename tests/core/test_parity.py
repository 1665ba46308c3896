"""Parity with sentence-transformers, the reference, on real multilingual sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import polyemb


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


def reference_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(
    minilm_dir: Path, minilm_encoder: polyemb.Encoder, sts_sentences: list[str]
) -> None:
    assert len(sts_sentences) >= 1000
    ours = minilm_encoder.encode(sts_sentences)
    theirs = reference_vectors(minilm_dir, sts_sentences)
    cosines = row_cosines(ours, theirs)
    print(f"MiniLM parity: {len(sts_sentences)} sentences, min row cosine {cosines.min():.8f}")
    assert cosines.min() >= 0.99999


def test_tiny_model_matches_sentence_transformers(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, sts_sentences: list[str]
) -> None:
    # The tiny model truncates at 32 tokens: this also checks truncation matches.
    texts = sts_sentences[:300]
    cosines = row_cosines(tiny_encoder.encode(texts), reference_vectors(tiny_model_dir, texts))
    assert cosines.min() >= 0.99999
