"""Cosine similarity, margin scoring and top-k search on float32 matrices (no engine types here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from polyemb.errors import InvalidInputError
from polyemb.options import JOIN_HOWS, SCORES, JoinHow, Score, check_choice, check_positive_int

__all__ = [
    "JoinRows",
    "check_join",
    "connected_groups",
    "cosine",
    "join_rows",
    "neighbourhood",
    "normalize_rows",
    "paired_cosines",
    "pairs_above",
    "rescore",
    "top_k",
]

# Rows of the (query block x corpus block) score matrix computed at once: 4096 x 4096 float32
# is 64 MiB, which bounds top_k's memory whatever the table sizes.
BLOCK_ROWS = 4_096
# Neighbours in the margin and CSLS neighbourhoods: the k of LASER's bitext mining.
NEIGHBOURS = 4


def _matrix(values: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D (rows, dim) matrix, got shape {matrix.shape}")
    return matrix


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; all-zero rows stay zero (their cosines come out 0)."""
    matrix = _matrix(vectors, "vectors")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return unit


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, dim)`` matrices (or one row against n).

    Returns:
        float32 array of n cosines; 0 where either row is all zeros.
    """
    left = normalize_rows(np.atleast_2d(a))
    right = normalize_rows(np.atleast_2d(b))
    if left.shape[1] != right.shape[1]:
        raise InvalidInputError(
            f"vectors of dimension {left.shape[1]} and {right.shape[1]} cannot be compared"
        )
    if len(left) != len(right) and 1 not in (len(left), len(right)):
        raise InvalidInputError(f"cannot compare {len(left)} rows with {len(right)} rows")
    scores: np.ndarray = np.einsum("ij,ij->i", *np.broadcast_arrays(left, right)).astype(np.float32)
    return scores


def paired_cosines(vectors: np.ndarray, valid: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of rows ``i`` and ``n + i`` of unit vectors, as from encoding ``a + b`` in one call.

    Encoding both sides together encodes a text shared by them once. Returns ``(scores, ok)``:
    float32 cosines, and where both sides were valid (elsewhere the score is meaningless: NULL).
    """
    scores = np.einsum("ij,ij->i", vectors[:n], vectors[n : 2 * n]).astype(np.float32)
    return scores, valid[:n] & valid[n : 2 * n]


def neighbourhood(
    queries: np.ndarray, corpus: np.ndarray, k: int = NEIGHBOURS, *, block_rows: int = BLOCK_ROWS
) -> np.ndarray:
    """Mean cosine of each query row with its ``k`` nearest corpus rows: r(x) in margin and CSLS.

    A sentence that is close to many (a hub) has a high mean; scoring relative to it is what
    keeps hubs from being everyone's nearest neighbour across languages. 0 for an empty corpus.
    """
    _, scores = top_k(queries, corpus, k, block_rows=block_rows)
    return scores.mean(axis=1) if scores.shape[1] else np.zeros(len(scores), dtype=np.float32)


def rescore(
    cosines: torch.Tensor, score: Score, query_r: torch.Tensor, corpus_r: torch.Tensor
) -> torch.Tensor:
    """Turn a (queries x corpus) block of cosines into ``score``, given both sides' r (neighbourhoods).

    - ``"margin"`` (Artetxe & Schwenk, 2019, ratio margin): ``cos(x, y) / ((r(x) + r(y)) / 2)``,
      the denominator kept >= 1e-6.
    - ``"csls"`` (Conneau et al., 2018): ``2 cos(x, y) - r(x) - r(y)``.
    - ``"cosine"``: unchanged.
    """
    if score == "cosine":
        return cosines
    if score == "margin":
        return cosines / ((query_r[:, None] + corpus_r[None, :]) / 2).clamp(min=1e-6)
    return 2 * cosines - query_r[:, None] - corpus_r[None, :]


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    score: Score = "cosine",
    neighbourhoods: tuple[np.ndarray, np.ndarray] | None = None,
    neighbours: int = NEIGHBOURS,
    block_rows: int = BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the ``k`` corpus rows of highest score, best first.

    Works block by block, so memory stays at ``block_rows**2`` scores whatever the sizes: each
    block keeps only its own k best per query (``torch.topk``), merged into a running best.
    Among rows of equal score, the lower corpus index comes first.

    Args:
        queries: (n, dim) vectors (normalized here).
        corpus: (m, dim) vectors.
        k: Rows per query (fewer if the corpus is smaller).
        score: ``"cosine"``, ``"margin"`` or ``"csls"`` (see :func:`rescore`).
        neighbourhoods: For margin and CSLS, ``(r of each query over the corpus, r of each
            corpus row over the queries)``; None computes both with :func:`neighbourhood`.
        neighbours: k of the neighbourhoods computed here (4, as LASER uses).
        block_rows: Rows of a block on each side.

    Returns:
        ``(indices, scores)``, each ``(len(queries), min(k, len(corpus)))``.
    """
    check_positive_int("k", k)
    check_choice("score", score, SCORES)
    q = normalize_rows(queries)
    c = normalize_rows(corpus)
    if q.shape[1] != c.shape[1]:
        raise InvalidInputError(f"vectors of dimension {q.shape[1]} and {c.shape[1]} cannot be compared")
    keep = min(k, len(c))
    indices = np.zeros((len(q), keep), dtype=np.int64)
    scores = np.zeros((len(q), keep), dtype=np.float32)
    if keep == 0 or len(q) == 0:
        return indices, scores
    if score != "cosine" and neighbourhoods is None:
        neighbourhoods = (
            neighbourhood(q, c, neighbours, block_rows=block_rows),
            neighbourhood(c, q, neighbours, block_rows=block_rows),
        )
    query_r, corpus_r = (
        (torch.from_numpy(np.array(r, dtype=np.float32)) for r in neighbourhoods)
        if neighbourhoods is not None
        else (torch.zeros(0), torch.zeros(0))
    )
    corpus_t = torch.from_numpy(c)
    with torch.inference_mode():
        for q0 in range(0, len(q), block_rows):
            q_block = torch.from_numpy(q[q0 : q0 + block_rows])
            best_val = torch.empty((len(q_block), 0))
            best_idx = torch.empty((len(q_block), 0), dtype=torch.int64)
            for c0 in range(0, len(c), block_rows):
                block = q_block @ corpus_t[c0 : c0 + block_rows].T
                if score != "cosine":
                    block = rescore(
                        block, score, query_r[q0 : q0 + len(q_block)], corpus_r[c0 : c0 + block.shape[1]]
                    )
                val, idx = _first_best(block, min(keep, block.shape[1]))
                best_val = torch.cat([best_val, val], dim=1)
                best_idx = torch.cat([best_idx, idx + c0], dim=1)
                if best_val.shape[1] > keep:  # a few candidates: order them fully, ties by index
                    by_index = best_idx.argsort(dim=1)
                    best_val, best_idx = best_val.gather(1, by_index), best_idx.gather(1, by_index)
                    pick = best_val.argsort(dim=1, descending=True, stable=True)[:, :keep]
                    best_val, best_idx = best_val.gather(1, pick), best_idx.gather(1, pick)
            indices[q0 : q0 + len(q_block)] = best_idx.numpy()
            scores[q0 : q0 + len(q_block)] = best_val.numpy()
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)


def check_join(k: int, threshold: float | None, how: str, score: str) -> None:
    """Check a join's options (before the engines spend time encoding)."""
    check_positive_int("k", k)
    check_choice("how", how, JOIN_HOWS)
    check_choice("score", score, SCORES)
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise InvalidInputError(f"threshold must be a number or None, got {threshold!r}")


def _first_best(block: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``keep`` highest values and their columns; among equal values the lower column.

    ``torch.topk`` alone may keep any of several tied columns; rows where a tie crosses the
    cut are sorted stably instead (ties are rare, but duplicate vectors make them exact).
    """
    values, columns = block.topk(keep, dim=1)
    last = values[:, -1:]
    tied = ((block == last).sum(dim=1) > (values == last).sum(dim=1)).nonzero().flatten()
    if len(tied):
        order = block[tied].argsort(dim=1, descending=True, stable=True)[:, :keep]
        values[tied], columns[tied] = block[tied].gather(1, order), order
    return values, columns


@dataclass(frozen=True)
class JoinRows:
    """The pairs of a semantic join, as row positions: what every engine's join assembles.

    Ordered by left row, then by decreasing score, then by right row (so ties go to the earlier
    right row). Unmatched left rows of a ``how="left"`` join have right row -1 and NaN scores.
    """

    left: np.ndarray  # int64 left row positions
    right: np.ndarray  # int64 right row positions, -1 where unmatched
    score: np.ndarray  # float64 score (cosine, margin or CSLS)
    cosine: np.ndarray  # float64 cosine of the pair


def join_rows(
    left: np.ndarray,
    left_valid: np.ndarray,
    right: np.ndarray,
    right_valid: np.ndarray,
    k: int,
    *,
    threshold: float | None = None,
    how: JoinHow = "inner",
    score: Score = "cosine",
    neighbours: int = NEIGHBOURS,
    block_rows: int = BLOCK_ROWS,
) -> JoinRows:
    """The ``k`` best right rows of each valid left row, by ``score``, at or above ``threshold``.

    Rows whose ``valid`` is False (NULL) never match; margin and CSLS neighbourhoods are taken
    over the valid rows only. ``how="left"`` keeps every left row once it has no match.
    """
    check_join(k, threshold, how, score)
    lpos, rpos = np.flatnonzero(left_valid), np.flatnonzero(right_valid)
    lvec, rvec = normalize_rows(left[lpos]), normalize_rows(right[rpos])
    indices, scores = top_k(lvec, rvec, k, score=score, neighbours=neighbours, block_rows=block_rows)
    left_rows = np.repeat(lpos, indices.shape[1])
    right_rows = rpos[indices].reshape(-1) if indices.size else np.zeros(0, dtype=np.int64)
    flat = scores.reshape(-1).astype(np.float64)
    if score == "cosine":
        cosines = flat
    else:
        chosen = indices.reshape(-1)
        cosines = np.einsum("ij,ij->i", lvec[np.repeat(np.arange(len(lpos)), indices.shape[1])], rvec[chosen])
        cosines = cosines.astype(np.float64)
    if threshold is not None:
        keep = flat >= threshold
        left_rows, right_rows, flat, cosines = left_rows[keep], right_rows[keep], flat[keep], cosines[keep]
    if how == "left":
        unmatched = np.setdiff1d(np.arange(len(left)), left_rows)
        nan = np.full(len(unmatched), np.nan)
        left_rows = np.concatenate([left_rows, unmatched])
        right_rows = np.concatenate([right_rows, np.full(len(unmatched), -1)])
        flat, cosines = np.concatenate([flat, nan]), np.concatenate([cosines, nan])
        order = np.argsort(left_rows, kind="stable")
        left_rows, right_rows, flat, cosines = (
            left_rows[order],
            right_rows[order],
            flat[order],
            cosines[order],
        )
    return JoinRows(left_rows.astype(np.int64), right_rows.astype(np.int64), flat, cosines)


def pairs_above(
    vectors: np.ndarray, threshold: float, *, block_rows: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of rows ``i < j`` whose cosine is at least ``threshold``, best first.

    Compares the upper triangle block by block, so memory is ``block_rows**2`` scores plus the
    pairs found.

    Returns:
        ``(i, j, scores)``: int64, int64 and float32 arrays of equal length.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine between -1 and 1, got {threshold!r}")
    unit = normalize_rows(vectors)
    found_i, found_j, found_s = [], [], []
    for a in range(0, len(unit), block_rows):
        for b in range(a, len(unit), block_rows):
            scores = unit[a : a + block_rows] @ unit[b : b + block_rows].T
            rows, cols = np.nonzero(scores >= threshold)
            keep = rows + a < cols + b
            found_i.append(rows[keep] + a)
            found_j.append(cols[keep] + b)
            found_s.append(scores[rows[keep], cols[keep]])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, s = (np.concatenate(parts) for parts in (found_i, found_j, found_s))
    order = np.lexsort((j, i, -s))
    return i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float32)


def connected_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group ids for ``n`` rows linked by the pairs ``(i, j)``; -1 for rows in no pair.

    Groups are numbered 0, 1, ... in the order of their first row.
    """
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    linked = np.zeros(n, dtype=bool)
    linked[i] = True
    linked[j] = True
    groups = np.full(n, -1, dtype=np.int64)
    numbers: dict[int, int] = {}
    for row in np.flatnonzero(linked).tolist():
        groups[row] = numbers.setdefault(root(row), len(numbers))
    return groups
