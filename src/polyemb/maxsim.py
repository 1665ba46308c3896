"""Max-sim: rows of several vectors (a text's windows) scored by their best pair of vectors.

The cosine of two rows is the highest cosine between a vector of one and a vector of the other,
and the pair of windows that gives it says where the rows match (a passage's offsets). Search and
joins over chunks are :func:`top_chunk_pairs`, the max-sim twin of
:func:`polyemb.similarity.top_pairs`: every score of :data:`polyemb.scores.SCORE_TABLE` applies, its
neighbourhoods taken over max-sim cosines. A row of one vector is an ordinary row, so one side may
be plain vectors. Every engine calls this for chunks, so they give the same pairs and windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from polyemb.errors import InvalidInputError
from polyemb.options import JoinHow, Score
from polyemb.scores import PAIR_COLUMNS, ScoreSpec, score_spec
from polyemb.similarity.joins import check_join, with_unmatched
from polyemb.similarity.ranking import BLOCK_ROWS, NEIGHBOURS, first_best, per_query_k, unit_pair

__all__ = [
    "CHUNK_COLUMNS",
    "ChunkJoinRows",
    "ChunkPairs",
    "chunk_neighbourhood",
    "join_chunk_rows",
    "top_chunk_pairs",
]

CHUNK_COLUMNS = ("start", "end")
"""The columns a search or join over chunks adds: the best window's character offsets in its text."""


@dataclass(frozen=True)
class _Side:
    """One side's unit vectors and its rows: ``labels[i]``'s vectors are ``starts[i]:starts[i + 1]``."""

    vectors: np.ndarray
    labels: np.ndarray  # int64 row label of each row that has vectors, increasing
    starts: np.ndarray  # int64, len(labels) + 1

    @classmethod
    def of(cls, vectors: np.ndarray, rows: np.ndarray | None, what: str) -> _Side:
        if rows is None:
            rows = np.arange(len(vectors), dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != (len(vectors),):
            raise InvalidInputError(
                f"the {what} rows have shape {rows.shape}; give one per vector ({len(vectors)})"
            )
        if len(rows) and np.any(np.diff(rows) < 0):
            raise InvalidInputError(f"the {what} rows must be in order: each row's vectors together")
        labels, first = np.unique(rows, return_index=True)
        return cls(vectors, labels.astype(np.int64), np.append(first, len(rows)).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ChunkPairs:
    """Top-k pairs of rows by max-sim, as flat rows: by query row, then best first, ties to the lower row.

    Attributes:
        query: int64 query row of each pair (the row labels given).
        corpus: int64 corpus row of each pair.
        score: float32 score of each pair (the max-sim cosine, or the score made of it).
        columns: The columns the score adds, float32 (the max-sim ``cosine`` for margin and CSLS).
        query_chunk: int64 index, among the query vectors, of the pair's best query window.
        corpus_chunk: int64 index, among the corpus vectors, of its best corpus window.
    """

    query: np.ndarray
    corpus: np.ndarray
    score: np.ndarray
    columns: dict[str, np.ndarray]
    query_chunk: np.ndarray
    corpus_chunk: np.ndarray


def top_chunk_pairs(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int | np.ndarray,
    *,
    query_rows: np.ndarray | None = None,
    corpus_rows: np.ndarray | None = None,
    score: Score = "cosine",
    neighbourhoods: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    neighbours: int = NEIGHBOURS,
    block_rows: int = BLOCK_ROWS,
) -> ChunkPairs:
    """Each query row's ``k`` best corpus rows by max-sim, and the windows where they match.

    Among equal scores the lower corpus row comes first; within a pair, the first corpus window
    reaching the max-sim cosine is the pair's window (for a query row of one vector).

    Args:
        queries: (n, dim) vectors (normalized here).
        corpus: (m, dim) vectors.
        k: Pairs per query row: one positive int, or one per query row that has vectors.
        query_rows: The row of each query vector, in order (a row's vectors together); None:
            each vector its own row.
        corpus_rows: The same for the corpus (a chunk table's ``row`` column).
        score: A score of :data:`polyemb.scores.SCORE_TABLE`.
        neighbourhoods: For margin and CSLS, ``(r of each query row, r of each corpus row)``,
            one per row that has vectors in row order; a side that is None is computed here
            with :func:`chunk_neighbourhood`.
        neighbours: k of the neighbourhoods computed here.
        block_rows: Vectors (and rows) of a block on each side: memory is ``block_rows**2`` scores.

    Returns:
        The pairs: a query row has ``min(its k, corpus rows)`` of them.

    Raises:
        InvalidInputError: A k below 1, an unknown score, rows out of order, or vectors of
            different dimensions.

    Example:
        >>> pairs = top_chunk_pairs(np.eye(2)[:1], np.eye(2), 1, corpus_rows=np.array([7, 7]))
        >>> pairs.corpus.tolist(), pairs.corpus_chunk.tolist()
        ([7], [0])
    """
    spec = score_spec(score)
    q, c = _sides(queries, query_rows, corpus, corpus_rows)
    ks = per_query_k(k, len(q))
    query_r, corpus_r = _neighbourhoods(q, c, spec, neighbourhoods, neighbours, block_rows)
    rows, values, q_arg, c_arg = _ranked(q, c, int(ks.max(initial=1)), spec, query_r, corpus_r, block_rows)
    taken = np.arange(rows.shape[1]) < ks[:, None]
    query = np.nonzero(taken)[0]
    corpus_chunk, query_chunk = c_arg[taken], q_arg[taken]
    columns = {
        name: PAIR_COLUMNS[name](q.vectors[query_chunk], c.vectors[corpus_chunk]) for name in spec.columns
    }
    return ChunkPairs(
        q.labels[query], c.labels[rows[taken]], values[taken], columns, query_chunk, corpus_chunk
    )


def chunk_neighbourhood(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int = NEIGHBOURS,
    *,
    query_rows: np.ndarray | None = None,
    corpus_rows: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
) -> np.ndarray:
    """Mean max-sim cosine of each query row with its ``k`` nearest corpus rows (r in margin, CSLS).

    Returns:
        float32, one per query row that has vectors, in row order; 0 for an empty corpus.
    """
    q, c = _sides(queries, query_rows, corpus, corpus_rows)
    return _mean_best(q, c, k, block_rows)


def _sides(
    queries: np.ndarray, query_rows: np.ndarray | None, corpus: np.ndarray, corpus_rows: np.ndarray | None
) -> tuple[_Side, _Side]:
    if not (np.isfinite(queries).all() and np.isfinite(corpus).all()):
        raise InvalidInputError("the vectors hold NaN or infinite values; they cannot be compared")
    q_unit, c_unit = unit_pair(queries, corpus)
    return _Side.of(q_unit, query_rows, "query"), _Side.of(c_unit, corpus_rows, "corpus")


def _mean_best(q: _Side, c: _Side, k: int, block_rows: int) -> np.ndarray:
    plain = score_spec("cosine")
    _, values, _, _ = _ranked(q, c, k, plain, np.zeros(0, np.float32), np.zeros(0, np.float32), block_rows)
    return values.mean(axis=1) if values.shape[1] else np.zeros(len(q), dtype=np.float32)


def _neighbourhoods(
    q: _Side,
    c: _Side,
    spec: ScoreSpec,
    given: tuple[np.ndarray | None, np.ndarray | None] | None,
    neighbours: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' r (a missing side computed here); empty for a score without neighbourhoods."""
    if not spec.neighbourhoods:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    query_r, corpus_r = given if given is not None else (None, None)
    if query_r is None:
        query_r = _mean_best(q, c, neighbours, block_rows)
    if corpus_r is None:
        corpus_r = _mean_best(c, q, neighbours, block_rows)
    for r, rows, side in ((query_r, len(q), "query"), (corpus_r, len(c), "corpus")):
        if np.shape(r) != (rows,):
            raise InvalidInputError(
                f"the {side} neighbourhoods have shape {np.shape(r)}; {spec.name} needs one per {side} "
                f"row that has vectors ({rows})"
            )
    return np.asarray(query_r, dtype=np.float32), np.asarray(corpus_r, dtype=np.float32)


# ---------------------------------------------------------------------- blocks


def _ranked(
    q: _Side, c: _Side, k: int, spec: ScoreSpec, query_r: np.ndarray, corpus_r: np.ndarray, block_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(corpus rows, scores, query windows, corpus windows)``: each query row's ``k`` best, ordered."""
    keep = min(k, len(c))
    shape = (len(q), keep)
    rows, values = np.zeros(shape, np.int64), np.zeros(shape, np.float32)
    q_arg, c_arg = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    if keep == 0 or len(q) == 0:
        return rows, values, q_arg, c_arg
    for qa in range(0, len(q), block_rows):
        qb = min(len(q), qa + block_rows)
        best: tuple[np.ndarray, ...] | None = None
        for ca in range(0, len(c), block_rows):
            cb = min(len(c), ca + block_rows)
            sims, qw, cw = _maxsim_block(q, qa, qb, c, ca, cb, block_rows)
            scores = sims
            if spec.neighbourhoods:
                scored = spec.rescore(
                    torch.from_numpy(sims),
                    torch.from_numpy(query_r[qa:qb]),
                    torch.from_numpy(corpus_r[ca:cb]),
                )
                scores = scored.numpy()
            found = _best_of_block(scores, qw, cw, ca, keep)
            best = found if best is None else _merge(best, found, keep)
        # topk keeps the right columns but not in row order among equal scores: order them.
        rows[qa:qb], values[qa:qb], q_arg[qa:qb], c_arg[qa:qb] = _ordered(best, keep)  # type: ignore[arg-type]
    return rows, values, q_arg, c_arg


def _windows(side: _Side, a: int, b: int, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Rows ``[a, b)``'s vectors in pieces of at most ``block_rows``: ``(first, last, local row starts)``.

    The local starts are where each row met in the piece begins (relative to the piece), and the
    rows met are ``row_of(first) .. row_of(last - 1)``.
    """
    first, last = int(side.starts[a]), int(side.starts[b])
    for v in range(first, last, block_rows):
        w = min(last, v + block_rows)
        lo = int(np.searchsorted(side.starts, v, side="right")) - 1
        hi = int(np.searchsorted(side.starts, w - 1, side="right")) - 1
        local = np.maximum(side.starts[lo : hi + 1] - v, 0)
        yield v, w, local


def _maxsim_block(
    q: _Side, qa: int, qb: int, c: _Side, ca: int, cb: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max-sim of query rows ``[qa, qb)`` x corpus rows ``[ca, cb)``, with each pair's best windows."""
    shape = (qb - qa, cb - ca)
    best = np.full(shape, -np.inf, dtype=np.float32)
    q_arg, c_arg = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for qv, qw, q_local in _windows(q, qa, qb, block_rows):
        q_row0 = int(np.searchsorted(q.starts, qv, side="right")) - 1 - qa
        for cv, cw, c_local in _windows(c, ca, cb, block_rows):
            c_row0 = int(np.searchsorted(c.starts, cv, side="right")) - 1 - ca
            sims = q.vectors[qv:qw] @ c.vectors[cv:cw].T
            # Each query window's best window of each corpus row, then each query row's best.
            by_col, col = _segment_max(sims, c_local, cv, axis=1)
            by_row, row = _segment_max(by_col, q_local, qv, axis=0)
            col = np.take_along_axis(col, row - qv, axis=0)
            rows = slice(q_row0, q_row0 + by_row.shape[0])
            cols = slice(c_row0, c_row0 + by_row.shape[1])
            better = by_row > best[rows, cols]  # strictly: on a tie the earlier windows stay
            best[rows, cols] = np.where(better, by_row, best[rows, cols])
            q_arg[rows, cols] = np.where(better, row, q_arg[rows, cols])
            c_arg[rows, cols] = np.where(better, col, c_arg[rows, cols])
    return best, q_arg, c_arg


def _segment_max(
    values: np.ndarray, starts: np.ndarray, offset: int, *, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """The max of each segment along ``axis`` and the first index (plus ``offset``) reaching it."""
    maxima = np.maximum.reduceat(values, starts, axis=axis)
    counts = np.diff(np.append(starts, values.shape[axis]))
    reached = values == np.repeat(maxima, counts, axis=axis)
    index = np.arange(values.shape[axis], dtype=np.int64) + offset
    index = index[:, None] if axis == 0 else index[None, :]
    first = np.minimum.reduceat(np.where(reached, index, np.iinfo(np.int64).max), starts, axis=axis)
    return maxima, first


def _best_of_block(
    scores: np.ndarray, q_arg: np.ndarray, c_arg: np.ndarray, offset: int, keep: int
) -> tuple[np.ndarray, ...]:
    """Each query row's ``keep`` best columns of a block: rows, scores, query and corpus windows."""
    values, columns = first_best(torch.from_numpy(scores), min(keep, scores.shape[1]))
    picked = columns.numpy()
    return (
        picked + offset,
        values.numpy(),
        np.take_along_axis(q_arg, picked, axis=1),
        np.take_along_axis(c_arg, picked, axis=1),
    )


def _merge(best: tuple[np.ndarray, ...], found: tuple[np.ndarray, ...], keep: int) -> tuple[np.ndarray, ...]:
    """Two candidate lists per query row as one: the ``keep`` best by score, ties to the lower row."""
    return _ordered(tuple(np.concatenate([a, b], axis=1) for a, b in zip(best, found, strict=True)), keep)


def _ordered(candidates: tuple[np.ndarray, ...], keep: int) -> tuple[np.ndarray, ...]:
    """``(rows, scores, ...)`` per query row: the ``keep`` best by score, ties to the lower row."""
    order = np.lexsort((candidates[0], -candidates[1]), axis=1)[:, :keep]
    return tuple(np.take_along_axis(part, order, axis=1) for part in candidates)


# ---------------------------------------------------------------------- joins


@dataclass(frozen=True)
class ChunkJoinRows:
    """The pairs of a join over chunks, as row positions (as :class:`polyemb.similarity.JoinRows`).

    Ordered by left row, then by decreasing score, then by right row. ``chunk`` is the index, in
    the right side's chunks, of each pair's best window; -1 (and NaN scores) where a
    ``how="left"`` join found no match.
    """

    left: np.ndarray
    right: np.ndarray
    score: np.ndarray  # float64
    columns: dict[str, np.ndarray]  # float64
    chunk: np.ndarray  # int64


def join_chunk_rows(
    left: np.ndarray,
    left_valid: np.ndarray,
    right: np.ndarray,
    right_rows: np.ndarray,
    k: int,
    *,
    threshold: float | None = None,
    how: JoinHow = "inner",
    score: Score = "cosine",
    neighbours: int = NEIGHBOURS,
    block_rows: int = BLOCK_ROWS,
) -> ChunkJoinRows:
    """Each valid left row's ``k`` best right rows by max-sim over the right rows' chunks.

    Args:
        left: (n, dim) one vector per left row.
        left_valid: False where the left row is NULL (never matches).
        right: (m, dim) the right rows' chunk vectors.
        right_rows: The right row of each chunk vector, in order (a chunk table's ``row``).
        k: Matches per left row.
        threshold: Keep only matches whose score is at least this.
        how: ``"inner"``, or ``"left"`` to keep every left row once it has no match.
        score: A score of :data:`polyemb.scores.SCORE_TABLE`.
        neighbours: k of margin's and CSLS's neighbourhoods.
        block_rows: As for :func:`top_chunk_pairs`.

    Returns:
        The pairs and each pair's best right chunk.
    """
    cut = check_join(k, threshold, how, score)
    lpos = np.flatnonzero(left_valid)
    pairs = top_chunk_pairs(
        left[lpos],
        right,
        k,
        corpus_rows=right_rows,
        score=score,
        neighbours=neighbours,
        block_rows=block_rows,
    )
    left_rows, right_out = lpos[pairs.query], pairs.corpus
    # One row per value (score, the added columns, the chunk), one column per pair.
    values = np.vstack([pairs.score, *pairs.columns.values(), pairs.corpus_chunk]).astype(np.float64)
    if cut is not None:
        kept = values[0] >= cut
        left_rows, right_out, values = left_rows[kept], right_out[kept], values[:, kept]
    if how == "left":
        left_rows, right_out, values = with_unmatched(len(left), left_rows, right_out, values)
    chunk = np.where(np.isnan(values[-1]), -1, values[-1]).astype(np.int64)
    columns = dict(zip(pairs.columns, values[1:-1], strict=True))
    return ChunkJoinRows(left_rows.astype(np.int64), right_out.astype(np.int64), values[0], columns, chunk)
