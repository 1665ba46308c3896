"""Near-duplicates of one set of vectors: pairs at a threshold, their groups, the rows kept.

The pairs at or above a cosine threshold, the groups they link, and the rows ``keep="first"``
keeps (no engine types here).

Every engine's near-duplicate search (pandas, Polars, Spark's driver side, ``polyemb dedup``)
calls :func:`pairs_above` and groups its pairs with :func:`connected_groups`.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from polyemb.errors import InvalidInputError
from polyemb.options import Method
from polyemb.scores import IDENTICAL
from polyemb.similarity import BLOCK_ROWS, normalize_rows

if TYPE_CHECKING:
    # polyemb.ivf builds on polyemb.similarity, so it is imported where the ivf method is asked for.
    from polyemb.ivf import Ivf, IvfReport
    from polyemb.ivf.search import Progress

__all__ = ["check_threshold", "connected_groups", "first_of_groups", "pairs_above"]


def check_threshold(threshold: object) -> float:
    """A near-duplicate threshold, a cosine between -1 and 1, as the pairs are compared with it.

    A threshold above :data:`IDENTICAL` is taken as :data:`IDENTICAL`: ``threshold=1.0`` finds
    the texts whose vectors are identical, which rounding would otherwise miss.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not -1 <= float(threshold) <= 1
    ):
        raise InvalidInputError(f"threshold must be a cosine between -1 and 1, got {threshold!r}")
    return min(float(threshold), IDENTICAL)


def pairs_above(
    vectors: np.ndarray,
    threshold: float,
    *,
    block_rows: int = BLOCK_ROWS,
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of rows ``i < j`` whose cosine is at least ``threshold``, best first.

    Exact: compares the upper triangle block by block, so memory is ``block_rows**2`` scores
    plus the pairs found. ``method="ivf"``: each row is compared with the rows of its ``nprobe``
    nearest lists, so a pair is found when either row probes the other's list; ``recall=`` is
    then the share of pairs found, calibrated on a sample of rows.

    Args:
        vectors: (n, dim) vectors (normalized here).
        threshold: A cosine between -1 and 1.
        block_rows: Rows of a block on each side (exact).
        method: ``"exact"``, ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings.
        report: For the ivf method, filled with what it chose.
        progress: Told ``(done, total)`` as the search goes (blocks, or row-list pairs for ivf).

    Returns:
        ``(i, j, scores)``: int64, int64 and float32 arrays of equal length, by score
        descending, then ``i``, then ``j``.

    Raises:
        InvalidInputError: A threshold outside [-1, 1] or an unknown method.
    """
    from polyemb.ivf import IvfIndex, IvfReport, method_settings

    threshold = check_threshold(threshold)
    settings = method_settings(method)
    unit = normalize_rows(vectors)
    if settings is not None:
        index = IvfIndex.build(unit, settings, report or IvfReport(), threshold=threshold)
        return index.pairs_above(threshold, progress=progress)
    found_i, found_j, found_s = [], [], []
    blocks = -(-len(unit) // block_rows)
    for a in range(0, len(unit), block_rows):
        for b in range(a, len(unit), block_rows):
            scores = unit[a : a + block_rows] @ unit[b : b + block_rows].T
            rows, cols = np.nonzero(scores >= threshold)
            keep = rows + a < cols + b
            found_i.append(rows[keep] + a)
            found_j.append(cols[keep] + b)
            found_s.append(scores[rows[keep], cols[keep]])
            if progress is not None:
                progress(len(found_i), blocks * (blocks + 1) // 2)
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, s = (np.concatenate(parts) for parts in (found_i, found_j, found_s))
    order = np.lexsort((j, i, -s))
    return i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float32)


def first_of_groups(groups: np.ndarray) -> np.ndarray:
    """Which rows ``keep="first"`` keeps: rows in no group (-1), and the first row of each group.

    Example:
        >>> first_of_groups(np.array([0, -1, 0, 1, 1])).tolist()
        [True, True, False, True, False]
    """
    first = np.zeros(len(groups), dtype=bool)
    first[np.unique(groups, return_index=True)[1]] = True
    return first | (groups < 0)


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
