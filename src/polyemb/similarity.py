"""Cosine similarity and top-k search on float32 matrices (no engine types here)."""

from __future__ import annotations

import numpy as np
import torch

from polyemb.errors import InvalidInputError

__all__ = ["connected_groups", "cosine", "normalize_rows", "paired_cosines", "pairs_above", "top_k"]

# Rows of the (query block x corpus block) score matrix computed at once: 4096 x 4096 float32
# is 64 MiB, which bounds top_k's memory whatever the table sizes.
BLOCK_ROWS = 4_096


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


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    block_rows: int = BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the ``k`` corpus rows of highest cosine, best first.

    Works block by block, so memory stays at ``block_rows**2`` scores whatever the sizes: each
    block keeps only its own k best per query (``torch.topk``), merged into a running best.
    Among kept rows of equal score, the lower corpus index comes first.

    Returns:
        ``(indices, scores)``, each ``(len(queries), min(k, len(corpus)))``.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    q = normalize_rows(queries)
    c = normalize_rows(corpus)
    if q.shape[1] != c.shape[1]:
        raise InvalidInputError(f"vectors of dimension {q.shape[1]} and {c.shape[1]} cannot be compared")
    keep = min(k, len(c))
    indices = np.zeros((len(q), keep), dtype=np.int64)
    scores = np.zeros((len(q), keep), dtype=np.float32)
    if keep == 0 or len(q) == 0:
        return indices, scores
    corpus_t = torch.from_numpy(c)
    with torch.inference_mode():
        for q0 in range(0, len(q), block_rows):
            q_block = torch.from_numpy(q[q0 : q0 + block_rows])
            best_val = torch.empty((len(q_block), 0))
            best_idx = torch.empty((len(q_block), 0), dtype=torch.int64)
            for c0 in range(0, len(c), block_rows):
                block = q_block @ corpus_t[c0 : c0 + block_rows].T
                val, idx = block.topk(min(keep, block.shape[1]), dim=1)
                best_val = torch.cat([best_val, val], dim=1)
                best_idx = torch.cat([best_idx, idx + c0], dim=1)
                if best_val.shape[1] > keep:
                    best_val, pick = best_val.topk(keep, dim=1)
                    best_idx = best_idx.gather(1, pick)
            indices[q0 : q0 + len(q_block)] = best_idx.numpy()
            scores[q0 : q0 + len(q_block)] = best_val.numpy()
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)


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
