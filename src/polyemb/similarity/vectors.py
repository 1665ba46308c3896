"""Vectors as unit rows, and cosines of row pairs: the arithmetic every engine's similarity shares."""

from __future__ import annotations

import numpy as np

from polyemb.errors import InvalidInputError

__all__ = ["cosine", "cosine_of_valid", "normalize_rows", "paired_cosines", "query_row"]


def _matrix(values: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D (rows, dim) matrix, got shape {matrix.shape}")
    return matrix


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; all-zero rows stay zero (their cosines come out 0).

    Raises:
        InvalidInputError: A row holds NaN or infinity (no direction to compare: a missing
            vector is NULL, which the engines leave out before they get here).
    """
    matrix = _matrix(vectors, "vectors")
    with np.errstate(over="ignore"):  # huge rows are handled below
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    finite = np.isfinite(norms)
    unit: np.ndarray = np.divide(matrix, norms, out=np.zeros_like(matrix), where=finite & (norms > 0))
    odd = np.flatnonzero(~finite[:, 0])
    if len(odd):
        rows = matrix[odd]
        defined = np.isfinite(rows).all(axis=1)
        if not defined.all():
            raise InvalidInputError(
                f"the vector at position {int(odd[~defined][0])} holds NaN or infinity "
                f"({int((~defined).sum())} such rows): it cannot be compared; a missing vector is NULL"
            )
        # Finite values whose squares overflow float32: scaled down first.
        scaled = rows / np.abs(rows).max(axis=1, keepdims=True)
        unit[odd] = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return unit


def clip_cosines(cosines: np.ndarray) -> np.ndarray:
    """``cosines`` held to [-1, 1], in place; returns them.

    float32 products of unit vectors round a little past the range (1.0000002 for a text with
    itself). The row-by-row similarities clamp, as DuckDB's ``array_cosine_similarity`` does;
    ranked scores (top-k, joins, near-duplicates) stay as computed, as FAISS and
    sentence-transformers' ``semantic_search`` give them.
    """
    np.clip(cosines, -1.0, 1.0, out=cosines)
    return cosines


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, dim)`` matrices (or one row against n).

    Returns:
        float32 array of n cosines, within [-1, 1]; 0 where either row is all zeros.
    """
    left = normalize_rows(np.atleast_2d(a))
    right = normalize_rows(np.atleast_2d(b))
    if left.shape[1] != right.shape[1]:
        raise InvalidInputError(
            f"vectors of dimension {left.shape[1]} and {right.shape[1]} cannot be compared"
        )
    if len(left) != len(right) and 1 not in (len(left), len(right)):
        raise InvalidInputError(f"cannot compare {len(left)} rows with {len(right)} rows")
    return clip_cosines(np.einsum("ij,ij->i", *np.broadcast_arrays(left, right)).astype(np.float32))


def cosine_of_valid(
    a: np.ndarray, a_valid: np.ndarray, b: np.ndarray, b_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cosine` of two vector columns whose invalid (NULL) rows are zero rows; ``(scores, ok)``.

    ``ok`` is where both rows are valid (elsewhere a score means nothing: NULL). A side with no
    valid row may not know its dimension (an empty or all-NULL variable-length list column reads
    as ``(n, 0)``): it takes the other side's, and none of its scores is ok.
    """
    left, right = np.atleast_2d(a), np.atleast_2d(b)
    if left.shape[1] == 0 and not np.any(a_valid):
        left = np.zeros((len(left), right.shape[1]), dtype=np.float32)
    if right.shape[1] == 0 and not np.any(b_valid):
        right = np.zeros((len(right), left.shape[1]), dtype=np.float32)
    return cosine(left, right), np.asarray(a_valid, dtype=bool) & np.asarray(b_valid, dtype=bool)


def paired_cosines(vectors: np.ndarray, valid: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of rows ``i`` and ``n + i`` of unit vectors, as from encoding ``a + b`` in one call.

    Encoding both sides together encodes a text shared by them once. Returns ``(scores, ok)``:
    float32 cosines within [-1, 1], and where both sides were valid (elsewhere the score is
    meaningless: NULL).
    """
    scores = clip_cosines(np.einsum("ij,ij->i", vectors[:n], vectors[n : 2 * n]).astype(np.float32))
    return scores, valid[:n] & valid[n : 2 * n]


def query_row(query: object) -> np.ndarray:
    """A search's query vector as one float32 row ``(1, dim)``.

    Takes a 1-D sequence or array of numbers, or one row of a matrix (shape ``(1, dim)``).

    Raises:
        InvalidInputError: The query is missing (None), is not numbers, is not one vector (a
            scalar, two rows), or holds NaN or infinity.
    """
    if query is None:
        raise InvalidInputError("a search needs a query: a text or one vector; got None")
    try:
        row = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"a search's query is a text or one vector of numbers; got {type(query).__name__}"
        ) from exc
    if row.ndim == 2 and len(row) == 1:
        row = row[0]
    if row.ndim != 1 or not row.size:
        raise InvalidInputError(
            f"a search's query vector must be one vector (1-D, or one row); got shape {row.shape}"
        )
    if not np.isfinite(row).all():
        raise InvalidInputError("a search's query vector holds NaN or infinity")
    return row.reshape(1, -1)
