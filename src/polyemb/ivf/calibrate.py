"""``recall=``: the smallest nprobe whose recall, measured against exact answers, reaches a target.

An exact neighbour is found by the ivf method exactly when its list is among the probed ones
(the top-k of the probed rows keeps every exact top-k row it holds). So one exact top-k of a
sample of left rows, and the rank of each neighbour's list among its query's nearest centroids,
give the recall of every nprobe at once: no search is run per candidate nprobe.
"""

from __future__ import annotations

import numpy as np

from polyemb.ivf.cells import _ranked_exactly, row_keys
from polyemb.ivf.settings import CALIBRATION_ROWS, CONFIDENCE_Z

__all__ = ["calibration_rows", "choose_nprobe", "lists_needed", "pair_lists_needed", "recall_curve"]


def calibration_rows(queries: np.ndarray, seed: int) -> np.ndarray:
    """Positions of the left rows the calibration scores exactly: 1,000 chosen by key (seed + 1)."""
    return np.argsort(row_keys(queries, seed + 1), kind="stable")[:CALIBRATION_ROWS]


def _list_ranks(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``ranks[i, l]``: how many lists row i probes before list l (0 for its nearest)."""
    order = _ranked_exactly(vectors, centroids, len(centroids))
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
    return ranks


def lists_needed(queries: np.ndarray, centroids: np.ndarray, neighbour_lists: np.ndarray) -> np.ndarray:
    """The nprobe at which each exact neighbour is found: its list's rank among its query's, plus 1.

    Args:
        queries: (m, dim) unit vectors of the calibration rows.
        centroids: (nlist, dim) the centroids.
        neighbour_lists: (m, k) the list of each row's exact neighbours, -1 where it has fewer.

    Returns:
        (m, k) int64: the smallest nprobe that finds each neighbour; 0 where there is none.
    """
    ranks = _list_ranks(queries, centroids)
    needed = np.take_along_axis(ranks, np.maximum(neighbour_lists, 0), axis=1) + 1
    return np.where(neighbour_lists >= 0, needed, 0)


def pair_lists_needed(
    left: np.ndarray,
    right: np.ndarray,
    left_lists: np.ndarray,
    right_lists: np.ndarray,
    centroids: np.ndarray,
) -> np.ndarray:
    """The nprobe at which near-duplicate search finds each pair ``(left[i], right[i])``.

    Each row probes its nearest lists and is scored against their rows, so a pair is found once
    either row probes the other's list.

    Returns:
        (pairs, 1) int64.
    """
    from_left = np.take_along_axis(_list_ranks(left, centroids), right_lists[:, None], axis=1)
    from_right = np.take_along_axis(_list_ranks(right, centroids), left_lists[:, None], axis=1)
    needed: np.ndarray = np.minimum(from_left, from_right) + 1
    return needed


def recall_curve(needed: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean recall of the rows, and its standard error, for each nprobe from 1 to ``nlist``.

    A row's recall at nprobe p is the share of its neighbours (entries above 0 of ``needed``)
    found by p lists. Rows without neighbours do not count.

    Returns:
        ``(mean, standard error)``, each of length ``nlist`` (index p - 1 for nprobe p).
    """
    counts = (needed > 0).sum(axis=1)
    rows = needed[counts > 0]
    if not len(rows):
        return np.ones(nlist), np.zeros(nlist)
    found = np.zeros((len(rows), nlist + 1))
    hit_row, hit_col = np.nonzero(rows > 0)
    np.add.at(found, (hit_row, np.minimum(rows[hit_row, hit_col], nlist)), 1.0)
    recall = np.cumsum(found, axis=1)[:, 1:] / counts[counts > 0, None]
    spread = recall.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(nlist)
    return recall.mean(axis=0), spread / np.sqrt(len(rows))


def choose_nprobe(mean: np.ndarray, error: np.ndarray, target: float) -> tuple[int, float]:
    """The smallest nprobe whose recall, less 1.645 standard errors, reaches ``target``.

    Returns:
        ``(nprobe, its estimated recall)``; every list (recall 1) if nothing less reaches it.
    """
    reached = np.flatnonzero(mean - CONFIDENCE_Z * error >= target)
    nprobe = int(reached[0]) + 1 if len(reached) else len(mean)
    return nprobe, float(mean[nprobe - 1])
