"""Cosine and blockwise top-k against brute force."""

from __future__ import annotations

import numpy as np
import pytest

import polyemb
from polyemb.similarity import cosine, normalize_rows, top_k


def test_cosine_rowwise_and_broadcast() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(cosine(a, b), [1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(cosine(a, np.array([0.0, 3.0])), [0.0, np.sqrt(0.5), 0.0], atol=1e-6)
    with pytest.raises(polyemb.InvalidInputError, match="dimension"):
        cosine(a, np.ones((3, 3)))
    with pytest.raises(polyemb.InvalidInputError, match="3 rows with 2 rows"):
        cosine(a, np.ones((2, 2)))


@pytest.mark.parametrize(
    ("n_query", "n_corpus", "k", "block"), [(7, 50, 5, 8), (20, 9, 12, 4), (3, 1000, 1, 100)]
)
def test_top_k_matches_brute_force(n_query: int, n_corpus: int, k: int, block: int) -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(n_query, 16)).astype(np.float32)
    corpus = rng.normal(size=(n_corpus, 16)).astype(np.float32)
    indices, scores = top_k(queries, corpus, k, block_rows=block)
    full = normalize_rows(queries) @ normalize_rows(corpus).T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    assert indices.shape == (n_query, min(k, n_corpus))


def test_top_k_bad_k() -> None:
    with pytest.raises(polyemb.InvalidInputError, match="k must be"):
        top_k(np.ones((1, 2)), np.ones((1, 2)), 0)


def test_ties_go_to_the_earlier_corpus_row_across_blocks() -> None:
    from polyemb.similarity import top_k

    # A one-hot query scores each corpus row by one component, with no rounding: rows 4, 6, 8
    # and 10 tie exactly at 0.6 (above all others), and must come in that order, however the
    # corpus is cut into blocks.
    corpus = np.zeros((12, 4), dtype=np.float32)
    corpus[:, 1] = 1.0
    corpus[:, 0] = 0.1
    corpus[[4, 6, 8, 10], 0] = 0.75
    query = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    for block_rows in (2, 3, 5, 100):
        indices, scores = top_k(query, corpus, 3, block_rows=block_rows)
        assert indices[0].tolist() == [4, 6, 8], block_rows
        np.testing.assert_allclose(scores[0], 0.6, atol=1e-6)
