"""Max-sim: rows of windows scored by their best pair, against a brute force; chunk lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyemb.chunks import chunk_lists, chunks_from_lists, chunks_of_table
from polyemb.errors import InvalidInputError
from polyemb.maxsim import chunk_neighbourhood, join_chunk_rows, top_chunk_pairs
from polyemb.similarity import normalize_rows, top_pairs


def brute_force(
    queries: np.ndarray, query_rows: np.ndarray, corpus: np.ndarray, corpus_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, corpus row) max-sim, with the first window pair reaching it."""
    sims = normalize_rows(queries) @ normalize_rows(corpus).T
    q_labels, c_labels = np.unique(query_rows), np.unique(corpus_rows)
    best = np.zeros((len(q_labels), len(c_labels)), dtype=np.float32)
    where = np.zeros((len(q_labels), len(c_labels), 2), dtype=np.int64)
    for i, a in enumerate(q_labels):
        for j, b in enumerate(c_labels):
            qi, ci = np.flatnonzero(query_rows == a), np.flatnonzero(corpus_rows == b)
            block = sims[np.ix_(qi, ci)]
            best[i, j] = block.max()
            first = np.argwhere(block == block.max())[0]
            where[i, j] = qi[first[0]], ci[first[1]]
    return q_labels, c_labels, best, where


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    queries=st.integers(1, 8),
    windows=st.integers(1, 30),
    k=st.integers(1, 5),
    block_rows=st.sampled_from([1, 2, 3, 7, 4096]),
    chunked_queries=st.booleans(),
    ties=st.booleans(),
)
def test_top_chunk_pairs_is_the_brute_force(
    seed: int, queries: int, windows: int, k: int, block_rows: int, chunked_queries: bool, ties: bool
) -> None:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(queries, 6)).astype(np.float32)
    c = rng.normal(size=(windows, 6)).astype(np.float32)
    if ties:
        c[rng.integers(0, windows, size=windows // 2)] = c[0]  # equal windows, in several rows
    corpus_rows = np.sort(rng.integers(0, 9, size=windows)) * 3  # labels with gaps
    query_rows = np.sort(rng.integers(0, 4, size=queries)) if chunked_queries else np.arange(queries)
    pairs = top_chunk_pairs(q, c, k, query_rows=query_rows, corpus_rows=corpus_rows, block_rows=block_rows)
    q_labels, c_labels, best, where = brute_force(q, query_rows, c, corpus_rows)
    assert pairs.query.tolist() == [a for a in q_labels.tolist() for _ in range(min(k, len(c_labels)))]
    for i, label in enumerate(q_labels.tolist()):
        mine = pairs.query == label
        expected = sorted(range(len(c_labels)), key=lambda j: (-best[i, j], c_labels[j]))[:k]
        np.testing.assert_allclose(pairs.score[mine], best[i, expected], atol=1e-5)
        if not ties:  # random floats: no near-ties, so the order is the brute force's exactly
            assert pairs.corpus[mine].tolist() == c_labels[expected].tolist()
            if not chunked_queries:
                assert pairs.corpus_chunk[mine].tolist() == where[i, expected, 1].tolist()
        got = np.einsum(
            "ij,ij->i",
            normalize_rows(q[pairs.query_chunk[mine]]),
            normalize_rows(c[pairs.corpus_chunk[mine]]),
        )
        np.testing.assert_allclose(got, pairs.score[mine], atol=1e-5)  # the windows give the score


@pytest.mark.parametrize("block_rows", [2, 4_096])  # several blocks, and the default: one
def test_ties_go_to_the_lower_row_and_the_first_window(block_rows: int) -> None:
    corpus = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    rows = np.array([0, 0, 1, 1, 2])
    pairs = top_chunk_pairs(
        np.array([[1.0, 0.0]], dtype=np.float32), corpus, 3, corpus_rows=rows, block_rows=block_rows
    )
    assert pairs.corpus.tolist() == [0, 1, 2]
    assert pairs.corpus_chunk.tolist() == [1, 2, 4]
    np.testing.assert_allclose(pairs.score, [1.0, 1.0, np.sqrt(0.5)], atol=1e-6)
    # Five rows of one score: in row order, whatever order topk found them in (it gave 2, 4, 3,
    # 0, 1 here in one block).
    corpus = np.array([[1, 0], [0.6, 0.8], [1, 0], [0.6, 0.8], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    rows = np.array([0, 0, 1, 1, 2, 3, 4])
    tied = top_chunk_pairs(corpus[:1], corpus, 5, corpus_rows=rows, block_rows=block_rows)
    assert tied.corpus.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("score", ["cosine", "margin", "csls"])
def test_rows_of_one_window_score_as_plain_rows(score: str) -> None:
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(60, 8)).astype(np.float32)
    plain = top_pairs(q, c, 3, score=score, block_rows=16)  # type: ignore[arg-type]
    chunked = top_chunk_pairs(q, c, 3, score=score, block_rows=16)  # type: ignore[arg-type]
    assert plain.query.tolist() == chunked.query.tolist() and plain.corpus.tolist() == chunked.corpus.tolist()
    np.testing.assert_allclose(chunked.score, plain.score, atol=1e-5)
    assert sorted(chunked.columns) == sorted(plain.columns)
    for name, values in plain.columns.items():
        np.testing.assert_allclose(chunked.columns[name], values, atol=1e-5)


def test_the_neighbourhood_is_the_mean_of_the_best_max_sims() -> None:
    rng = np.random.default_rng(2)
    q, c = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    rows = np.repeat(np.arange(6), 2)
    _, _, best, _ = brute_force(q, np.arange(5), c, rows)
    expected = np.sort(best, axis=1)[:, ::-1][:, :3].mean(axis=1)
    np.testing.assert_allclose(
        chunk_neighbourhood(q, c, 3, corpus_rows=rows, block_rows=4), expected, atol=1e-6
    )
    transposed = np.sort(best.T, axis=1)[:, ::-1][:, :2].mean(axis=1)
    np.testing.assert_allclose(chunk_neighbourhood(c, q, 2, query_rows=rows), transposed, atol=1e-6)


def test_a_join_over_chunks_keeps_nulls_thresholds_and_unmatched_rows() -> None:
    left = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    valid = np.array([True, False, True, True])
    right = np.array([[0.0, 1.0], [1.0, 0.1], [0.6, 0.8]], dtype=np.float32)
    rows = np.array([4, 4, 7])
    joined = join_chunk_rows(left, valid, right, rows, 2, threshold=0.5, how="left")
    assert joined.left.tolist() == [0, 0, 1, 2, 2, 3]
    assert joined.right.tolist() == [4, 7, -1, 4, 7, -1]
    assert joined.chunk.tolist() == [1, 2, -1, 0, 2, -1]
    assert np.isnan(joined.score[[2, 5]]).all()
    inner = join_chunk_rows(left, valid, right, rows, 1, score="csls")
    assert inner.left.tolist() == [0, 2, 3] and sorted(inner.columns) == ["cosine"]


def test_bad_rows_and_vectors_are_refused() -> None:
    vectors = np.eye(3, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="in order"):
        top_chunk_pairs(vectors, vectors, 1, corpus_rows=np.array([1, 0, 1]))
    with pytest.raises(InvalidInputError, match="one per vector"):
        top_chunk_pairs(vectors, vectors, 1, corpus_rows=np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="NaN"):
        top_chunk_pairs(np.full((1, 3), np.nan, dtype=np.float32), vectors, 1)
    with pytest.raises(InvalidInputError, match="cannot be compared"):
        top_chunk_pairs(vectors, np.eye(4, dtype=np.float32), 1)
    empty = top_chunk_pairs(vectors, np.zeros((0, 3), dtype=np.float32), 2, corpus_rows=np.zeros(0, np.int64))
    assert len(empty.query) == 0


def test_chunk_lists_round_trip(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    texts = ["猫がマットの上に座っている。" * 6, None, "", "two words"]
    table = tiny_encoder.encode_chunks(texts)
    lists = chunk_lists(table, len(texts))
    assert lists.null_count == 1 and not lists[1].is_valid
    assert [len(lists[i]) for i in (0, 2, 3)] == [4, 1, 1]
    assert lists.type.value_type.names == ["start", "end", "tokens", "vector"]
    back, direct = chunks_from_lists(lists), chunks_of_table(table)
    np.testing.assert_array_equal(back.row, direct.row)
    np.testing.assert_array_equal(back.start, direct.start)
    np.testing.assert_array_equal(back.vectors, direct.vectors)
    with pytest.raises(InvalidInputError, match="not a list of chunk structs"):
        chunks_from_lists(pa.array([[1.0]]))


def test_a_chunk_join_at_threshold_one_keeps_identical_vectors() -> None:
    # Float32 rounding puts some identical rows' cosine just below 1; threshold=1.0 keeps them,
    # as near-duplicates and the other joins do.
    vectors = normalize_rows(np.random.default_rng(4).standard_normal((40, 24)).astype(np.float32))
    rows = np.arange(40)
    joined = join_chunk_rows(vectors, np.ones(40, dtype=bool), vectors, rows, 1, threshold=1.0)
    assert joined.left.tolist() == joined.right.tolist() == list(range(40))
