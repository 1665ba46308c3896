"""Cosine and blockwise top-k against brute force."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import polyemb
from polyemb.options import SCORES
from polyemb.scores import PAIR_COLUMNS, SCORE_TABLE, added_columns, score_spec
from polyemb.similarity import (
    cosine,
    cosine_of_valid,
    join_rows,
    normalize_rows,
    paired_cosines,
    query_row,
    top_k,
    top_pairs,
)
from polyemb.similarity.vectors import clip_cosines


def test_cosine_rowwise_and_broadcast() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(cosine(a, b), [1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(cosine(a, np.array([0.0, 3.0])), [0.0, np.sqrt(0.5), 0.0], atol=1e-6)
    with pytest.raises(polyemb.InvalidInputError, match="dimension"):
        cosine(a, np.ones((3, 3)))
    with pytest.raises(polyemb.InvalidInputError, match="3 rows with 2 rows"):
        cosine(a, np.ones((2, 2)))


def test_cosine_of_valid_gives_a_side_without_vectors_the_other_sides_dimension() -> None:
    vectors = normalize_rows(np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32))
    nothing = np.zeros((2, 0), dtype=np.float32)  # an all-NULL list<float> column states no dimension
    scores, ok = cosine_of_valid(vectors, np.array([True, True]), nothing, np.array([False, False]))
    assert scores.shape == (2,) and ok.tolist() == [False, False]
    scores, ok = cosine_of_valid(nothing[:0], np.zeros(0, dtype=bool), vectors[:1], np.ones(1, dtype=bool))
    assert scores.shape == (0,) and ok.shape == (0,)
    scores, ok = cosine_of_valid(vectors, np.array([True, False]), vectors[:1], np.ones(1, dtype=bool))
    np.testing.assert_allclose(scores, [1.0, 0.6], atol=1e-6)
    assert ok.tolist() == [True, False]
    # Valid vectors of no dimension are not missing ones: still an error.
    with pytest.raises(polyemb.InvalidInputError, match="dimension 0 and 2"):
        cosine_of_valid(nothing, np.array([True, True]), vectors, np.array([True, True]))


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


# ---------------------------------------------------------------------- the table of scores


def test_the_table_of_scores_is_the_public_choice_of_scores() -> None:
    assert tuple(SCORE_TABLE) == SCORES
    for name, spec in SCORE_TABLE.items():
        assert spec.name == name
        assert score_spec(name) is spec
        assert set(spec.columns) <= set(PAIR_COLUMNS), name
        assert "score" not in spec.columns  # the score's own column is named by the caller
    assert SCORE_TABLE["cosine"].columns == () and not SCORE_TABLE["cosine"].neighbourhoods
    with pytest.raises(polyemb.InvalidInputError, match="score must be one of 'cosine', 'margin', 'csls'"):
        score_spec("dot")


def test_added_columns_name_the_score_then_its_own_columns() -> None:
    assert added_columns("cosine", "score") == ("score",)
    assert added_columns("cosine", "cosine") == ("cosine",)
    assert added_columns("margin", "similarity") == ("similarity", "cosine")
    with pytest.raises(polyemb.InvalidInputError, match="score='csls' adds a 'cosine' column"):
        added_columns("csls", "cosine")


# Two one-hot queries against four rows: rows 0 and 2 are the same vector (exact ties), row 3
# points away from query 0. With 4 neighbours every row's r is its mean cosine with the whole
# other side: r(query 0) = r(query 1) = 0.25; r(rows 0, 1, 2) = 0.5, r(row 3) = -0.5.
QUERIES = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
CORPUS = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
BY_SCORE = {
    # score: (corpus rows, scores, cosines) of query 0, then of query 1, best first
    "cosine": ([0, 2, 1, 1, 0, 2], [1, 1, 0, 1, 0, 0], [1, 1, 0, 1, 0, 0]),
    # cos / ((r(x) + r(y)) / 2); row 3's denominator, -0.125, is floored at 1e-6
    "margin": ([0, 2, 1, 1, 0, 2], [8 / 3, 8 / 3, 0, 8 / 3, 0, 0], [1, 1, 0, 1, 0, 0]),
    # 2 cos - r(x) - r(y): row 3 (-0.5) beats the tied rows 0 and 2 for query 1
    "csls": ([0, 2, 1, 1, 3, 0], [1.25, 1.25, -0.75, 1.25, 0.25, -0.75], [1, 1, 0, 1, 0, 0]),
}


@pytest.mark.parametrize("score", list(BY_SCORE))
def test_top_pairs_by_hand(score: str) -> None:
    rows, scores, cosines = BY_SCORE[score]
    pairs = top_pairs(QUERIES, CORPUS, 3, score=score)  # type: ignore[arg-type]
    assert pairs.query.tolist() == [0, 0, 0, 1, 1, 1]
    assert pairs.corpus.tolist() == rows
    np.testing.assert_allclose(pairs.score, scores, atol=1e-6)
    assert pairs.query.dtype == pairs.corpus.dtype == np.int64 and pairs.score.dtype == np.float32
    assert list(pairs.columns) == list(SCORE_TABLE[score].columns)  # type: ignore[index]
    for values in pairs.columns.values():
        np.testing.assert_allclose(values, cosines, atol=1e-6)
        assert values.dtype == np.float32
    # the same pairs as top_k's, flattened
    indices, best = top_k(QUERIES, CORPUS, 3, score=score)  # type: ignore[arg-type]
    assert indices.reshape(-1).tolist() == rows
    np.testing.assert_array_equal(best.reshape(-1), pairs.score)


def test_top_pairs_k_per_query_and_given_neighbourhoods() -> None:
    pairs = top_pairs(QUERIES, CORPUS, np.array([1, 2]))
    assert pairs.query.tolist() == [0, 1, 1] and pairs.corpus.tolist() == [0, 1, 0]
    many = top_pairs(QUERIES, CORPUS, np.array([9, 1]))  # at most the corpus
    assert many.query.tolist() == [0, 0, 0, 0, 1]
    # A side given is used as it is; the other is computed: here the true r, so the same answer.
    true_r = np.array([0.5, 0.5, 0.5, -0.5])
    given = top_pairs(QUERIES, CORPUS, 3, score="csls", neighbourhoods=(None, true_r))
    assert given.corpus.tolist() == BY_SCORE["csls"][0]
    high_r = np.array([5.0, 0.5, 0.5, 0.5])
    moved = top_pairs(QUERIES, CORPUS, 1, score="csls", neighbourhoods=(None, high_r))
    assert moved.corpus.tolist() == [2, 1]  # a hub's r: row 0 loses its tie with row 2
    ignored = top_pairs(QUERIES, CORPUS, 3, neighbourhoods=(np.zeros(7), None))  # cosine has none
    assert ignored.corpus.tolist() == BY_SCORE["cosine"][0]
    with pytest.raises(polyemb.InvalidInputError, match="corpus neighbourhoods have shape \\(2,\\)"):
        top_pairs(QUERIES, CORPUS, 1, score="margin", neighbourhoods=(None, np.zeros(2)))
    with pytest.raises(polyemb.InvalidInputError, match="k must be a positive integer, got 0"):
        top_pairs(QUERIES, CORPUS, np.array([1, 0]))
    with pytest.raises(polyemb.InvalidInputError, match="one int per query row \\(2\\)"):
        top_pairs(QUERIES, CORPUS, np.array([1, 1, 1]))
    with pytest.raises(polyemb.InvalidInputError, match="k must be a positive int, got 0"):
        top_pairs(QUERIES, CORPUS, 0)


def test_top_pairs_of_an_empty_side_are_none() -> None:
    # An engine may hand over an empty side as (0, 0): no pairs, whatever the other's dimension.
    for queries, corpus in ((np.zeros((0, 0)), CORPUS), (QUERIES, np.zeros((0, 0)))):
        pairs = top_pairs(queries, corpus, 2, score="margin")
        assert len(pairs.query) == len(pairs.corpus) == len(pairs.score) == len(pairs.columns["cosine"]) == 0
    with pytest.raises(polyemb.InvalidInputError, match="dimension 2 and 3"):
        top_pairs(QUERIES, np.ones((1, 3)), 1)


def test_join_rows_keep_the_score_columns_with_nan_where_unmatched() -> None:
    # Left row 1 is NULL, so the corpus rows' r is their cosine with left row 0 alone: 1, 0, 1, -1;
    # the margin of rows 0 and 2 is 1 / ((0.25 + 1) / 2) = 1.6, of row 1 0 (below the threshold).
    left_valid = np.array([True, False])
    everything = np.ones(4, bool)
    rows = join_rows(QUERIES, left_valid, CORPUS, everything, 3, threshold=1.5, how="left", score="margin")
    assert rows.left.tolist() == [0, 0, 1] and rows.right.tolist() == [0, 2, -1]
    np.testing.assert_allclose(rows.score, [1.6, 1.6, np.nan], atol=1e-6)
    assert list(rows.columns) == ["cosine"]
    np.testing.assert_allclose(rows.columns["cosine"], [1, 1, np.nan], atol=1e-6)
    assert rows.score.dtype == rows.columns["cosine"].dtype == np.float64
    assert join_rows(QUERIES, left_valid, CORPUS, everything, 1).columns == {}


def test_a_query_vector_is_one_row_of_finite_numbers() -> None:
    assert query_row([1, 2, 3]).tolist() == [[1.0, 2.0, 3.0]]
    assert query_row(np.ones((1, 4))).shape == (1, 4)  # one row of a matrix, as encode() gives it
    assert query_row(np.ones(4)).dtype == np.float32


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (None, "needs a query"),
        (123, "one vector"),  # a scalar: not a vector of the corpus' dimension 1
        (np.zeros((2, 16)), "one vector"),  # two rows: flattened, they looked like one 32-d query
        (["the cat"], "vector of numbers"),
        ([[1.0, 2.0], [3.0]], "vector of numbers"),  # ragged
        ([], "one vector"),
        ([1.0, float("nan")], "NaN or infinity"),
        (object(), "vector of numbers"),
    ],
)
def test_a_query_that_is_not_one_vector_is_refused(query: object, message: str) -> None:
    with pytest.raises(polyemb.InvalidInputError, match=message):
        query_row(query)


def test_rows_with_nan_or_infinity_are_refused_and_huge_ones_normalized() -> None:
    # A NaN row became a zero row: every cosine with it 0.0, and top_k matched it like any other.
    with pytest.raises(polyemb.InvalidInputError, match="position 1 holds NaN or infinity"):
        normalize_rows(np.array([[1.0, 0.0], [np.nan, 1.0]], dtype=np.float32))
    with pytest.raises(polyemb.InvalidInputError, match="NaN or infinity"):
        top_k(np.array([[1.0, 0.0]]), np.array([[np.inf, 1.0]]), 1)
    # Finite values whose squares overflow float32 keep their direction (they became zero rows).
    huge = normalize_rows(np.array([[3e30, 4e30], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(huge, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


# float32 products of unit rows round past 1: here up to 1.0000002 for a row with itself.
_ROUNDED = normalize_rows(np.random.default_rng(1).standard_normal((300, 384)).astype(np.float32))


@pytest.mark.parametrize(
    "similarity",
    [
        lambda: cosine(_ROUNDED, _ROUNDED),
        lambda: cosine(-_ROUNDED, _ROUNDED),
        lambda: paired_cosines(np.vstack([_ROUNDED, _ROUNDED]), np.ones(600, dtype=bool), 300)[0],
        lambda: paired_cosines(np.vstack([_ROUNDED, -_ROUNDED]), np.ones(600, dtype=bool), 300)[0],
    ],
    ids=["cosine", "cosine, opposite", "paired", "paired, opposite"],
)
def test_row_by_row_cosines_are_within_minus_one_and_one(similarity: Callable[[], np.ndarray]) -> None:
    # DuckDB's array_cosine_similarity clamps: semantic_similarity(t, t) gave 1.0000002 beside its 1.0.
    assert np.einsum("ij,ij->i", _ROUNDED, _ROUNDED).max() > 1.0  # the rounding is there to be held
    found = similarity()
    assert found.dtype == np.float32
    assert np.abs(found).max() <= 1.0  # the clamp's promise, exact
    np.testing.assert_allclose(np.abs(found), 1.0, atol=1e-6)  # each row with itself: 1 up to rounding


def test_clipping_cosines_writes_in_place() -> None:
    scores = np.array([1.0000002, -1.0000002, 0.5], dtype=np.float32)
    assert clip_cosines(scores) is scores
    np.testing.assert_array_equal(scores, np.array([1.0, -1.0, 0.5], dtype=np.float32))
