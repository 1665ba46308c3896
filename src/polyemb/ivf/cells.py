"""The cells of the ivf method: the training sample, k-means centroids, lists and probes.

Each function gives the same answer for the same vectors whatever their row order and however
an engine batches them, which is what lets Spark (in partitions), pandas and DuckDB (whole
matrices) find the same pairs:

- the training sample is the rows of smallest :func:`row_keys` (a hash of each vector's bits
  and the seed), so it does not depend on where a row is;
- a row's nearest centroids are ranked in float32, and again in float64 where two of them are
  too close to call, so that a matrix product of another shape cannot change the ranking.

From :data:`COARSE_FROM` lists on, centroids come in two levels, so that lists in proportion to
the rows (the default beyond 262,144 rows) do not make training and probing cost rows x lists:

- k-means trains ``sqrt(nlist)`` groups on the sample first, then each group's share of the
  lists on its own rows;
- the lists are put in ``sqrt(nlist)`` groups again by k-means of the centroids alone (so that
  every engine gets them from the centroids it already ships), and a row ranks only the lists of
  its :data:`COARSE_PROBES` nearest groups, before every other list. That order is the one the
  probes, the lists of the rows and the ``recall=`` calibration all follow.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from polyemb.ivf.search import search_top_k
from polyemb.ivf.settings import ITERATIONS, TRAIN_ROWS_PER_LIST, IvfReport
from polyemb.similarity import BLOCK_ROWS

__all__ = [
    "group_lists",
    "list_sizes",
    "nearest_lists",
    "probe",
    "row_keys",
    "sortable_keys",
    "train",
    "training_rows",
]

# Two centroid scores closer than this are ranked again in float64: ten times the float32
# rounding of a 384-term dot product of unit vectors (about 1e-7), and rare enough (about 1% of
# rows at 4,096 lists) that the float64 pass costs little.
_TIE = 1e-6
# Two levels from this many lists on; each row ranks the lists of its COARSE_PROBES nearest groups
# (of sqrt(nlist)). Measured on MiniLM vectors (docs/joins.md), top-10 self-joins at recall=0.9:
# at 2,000 lists (250k rows) one level was 1.04x faster than two, at 3,906 (500k) two were 1.14x
# faster than one; at 7,812 lists (1M rows) 12 groups hold 23% of the lists, and recall@10 at 64
# probes was 0.920 against 0.924 with every list ranked.
COARSE_FROM = 2_048
COARSE_PROBES = 12
# Distinct centroid tables whose groups are kept (a process usually searches one or two).
_COARSE_KEPT = 4
# Rows hashed at once by row_keys: a 384-wide block, as uint64, is 3 MiB (measured fastest of 256 to 4,096).
_KEY_ROWS = 1_024
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)


def row_keys(vectors: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit key per row, from its float32 bits and ``seed``: the order rows are sampled in.

    Equal vectors get equal keys; any other change of a vector changes its key at random.
    """
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    keys = np.empty(len(bits), dtype=np.uint64)
    with np.errstate(over="ignore"):
        # In blocks of rows, each turned so that a column is contiguous: a column of the whole
        # matrix would read a cache line per row for 4 bytes (7 s of 11.8 s of training at 1M rows).
        for a in range(0, len(bits), _KEY_ROWS):
            columns = bits[a : a + _KEY_ROWS].T.astype(np.uint64)
            block = np.full(columns.shape[1], np.uint64(seed) * _MIX + _MULTIPLIER, dtype=np.uint64)
            for column in columns:
                block ^= column
                block *= _MULTIPLIER
                block ^= block >> np.uint64(31)
            keys[a : a + _KEY_ROWS] = block
    return keys


def sortable_keys(keys: np.ndarray) -> np.ndarray:
    """:func:`row_keys` as int64 in the same order (for engines without unsigned 64-bit integers)."""
    flipped: np.ndarray = (keys ^ np.uint64(1 << 63)).view(np.int64)
    return flipped


def training_rows(keys: np.ndarray, nlist: int) -> np.ndarray:
    """Positions of the rows k-means trains on: the ``32 * nlist`` of smallest key (all if fewer)."""
    return np.argsort(keys, kind="stable")[: TRAIN_ROWS_PER_LIST * nlist]


def train(sample: np.ndarray, nlist: int, seed: int, report: IvfReport) -> np.ndarray:
    """Spherical k-means centroids of unit rows: the same for the same rows in any order.

    Starts from the first ``nlist`` distinct rows in key order (a seeded random choice) and runs
    :data:`~polyemb.ivf.settings.ITERATIONS` rounds; a list left empty keeps its centroid. With
    fewer distinct rows than ``nlist``, there are as many lists as distinct rows (noted in
    ``report``). From :data:`COARSE_FROM` lists on, in two levels: ``sqrt(nlist)`` groups, then
    each group's lists (in proportion to its rows) on its own rows, group after group.

    Returns:
        ``(lists, dim)`` float32 unit centroids; one zero centroid for an empty sample.
    """
    if not len(sample):
        return np.zeros((1, sample.shape[1]), np.float32)
    if nlist < COARSE_FROM:
        return _kmeans(sample, nlist, seed, report)
    tops = _kmeans(sample, round(math.sqrt(nlist)), seed, IvfReport())
    member = nearest_lists(sample, tops, 1)[:, 0]
    shares = _shares(np.bincount(member, minlength=len(tops)), nlist)
    quiet = IvfReport()
    parts = [
        _kmeans(sample[member == group], int(share), seed, quiet)
        for group, share in enumerate(shares)
        if share
    ]
    centroids = np.concatenate(parts)
    _note_fewer_lists(report, nlist, len(centroids))
    return centroids


def _note_fewer_lists(report: IvfReport, nlist: int, lists: int) -> None:
    """Notes in ``report`` that k-means found fewer distinct vectors than ``nlist`` lists."""
    if lists < nlist:
        report.note(
            f"nlist lowered from {nlist} to {lists}: the right side has only {lists} distinct vectors"
        )


def _shares(rows: np.ndarray, nlist: int) -> np.ndarray:
    """``nlist`` lists shared among groups in proportion to their ``rows`` (largest remainders first)."""
    exact = rows / max(int(rows.sum()), 1) * nlist
    shares = np.floor(exact).astype(np.int64)
    shares[np.argsort(-(exact - shares), kind="stable")[: nlist - int(shares.sum())]] += 1
    return shares


def _kmeans(sample: np.ndarray, nlist: int, seed: int, report: IvfReport) -> np.ndarray:
    """:func:`train` in one level."""
    keys = row_keys(sample, seed)
    # Equal keys are equal vectors (64-bit keys of distinct vectors collide with odds ~1e-9 at a
    # million rows), so sorting by key alone fixes the order of the rows' values.
    order = np.argsort(keys, kind="stable")
    rows = np.ascontiguousarray(sample[order], dtype=np.float32)
    _, first = np.unique(keys[order], return_index=True)
    starts = rows[np.sort(first)[:nlist]]
    _note_fewer_lists(report, nlist, len(starts))
    centroids = torch.from_numpy(starts.copy())
    data = torch.from_numpy(rows)
    with torch.inference_mode():
        for _ in range(ITERATIONS):
            # One process runs all of k-means, so a plain argmax (first of equal maxima) is the
            # same in every engine.
            assigned = torch.cat(
                [(block @ centroids.T).argmax(dim=1) for block in torch.split(data, BLOCK_ROWS)]
            )
            sums = torch.zeros_like(centroids).index_add_(0, assigned, data)
            counts = torch.bincount(assigned, minlength=len(centroids))
            norms = sums.norm(dim=1, keepdim=True)
            moved = (counts > 0) & (norms[:, 0] > 0)
            centroids = torch.where(moved[:, None], sums / norms.clamp(min=1e-12), centroids)
    return centroids.numpy().copy()


def nearest_lists(vectors: np.ndarray, centroids: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` nearest centroids (highest cosine first, ties to the lower list).

    In two levels (:data:`COARSE_FROM` lists or more), the nearest among the lists of the row's
    :data:`COARSE_PROBES` nearest groups, then the others. Rows where the ``count``-th and the
    next centroid are within 1e-6 are ranked in float64, so that the set of lists does not
    depend on how the rows were batched.

    Returns:
        ``(rows, count)`` int64 list numbers (``count`` at most the number of centroids).
    """
    count = min(count, len(centroids))
    ranked = np.zeros((len(vectors), count), dtype=np.int64)
    if not len(vectors) or count == 0:
        return ranked
    coarse = _coarse(centroids)
    if coarse is not None:
        return _nearest_in_groups(vectors, centroids, coarse, count)
    look = min(count + 1, len(centroids))
    table = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    unsure = []
    with torch.inference_mode():
        for a in range(0, len(vectors), BLOCK_ROWS):
            block = torch.from_numpy(np.ascontiguousarray(vectors[a : a + BLOCK_ROWS], dtype=np.float32))
            # Equal scores at the cut are caught by the gap test below, whichever topk keeps.
            values, columns = (block @ table.T).topk(look, dim=1)
            ranked[a : a + BLOCK_ROWS] = columns[:, :count].numpy()
            if look > count:
                gaps = (values[:, count - 1] - values[:, count]).numpy()
                unsure.append(a + np.flatnonzero(gaps < _TIE))
    close = np.concatenate(unsure) if unsure else np.zeros(0, np.int64)
    if len(close):
        ranked[close] = _ranked_exactly(vectors[close], centroids, count)
    return ranked


def _ranked_exactly(vectors: np.ndarray, centroids: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` nearest centroids in float64, highest cosine first, ties to the lower list.

    In two levels, the lists of a row's nearest groups come first (each row's order of every list).
    """
    ranked = np.zeros((len(vectors), count), dtype=np.int64)
    table = centroids.astype(np.float64).T
    coarse = _coarse(centroids)
    for a in range(0, len(vectors), BLOCK_ROWS):
        scores = -(vectors[a : a + BLOCK_ROWS].astype(np.float64) @ table)
        if coarse is not None:
            # Cosines lie in [-1, 1]: lists outside the row's groups go after all inside them.
            scores += 4.0 * ~coarse.inside(vectors[a : a + BLOCK_ROWS])
        if count < scores.shape[1]:
            top = np.argpartition(scores, count - 1, axis=1)[:, :count]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        order = np.lexsort((top, np.take_along_axis(scores, top, axis=1)), axis=1)
        ranked[a : a + BLOCK_ROWS] = np.take_along_axis(top, order, axis=1)
    return ranked


@dataclass(frozen=True)
class _Coarse:
    """The second level of a centroid table: groups of near lists.

    Attributes:
        tops: (groups, dim) the groups' centroids.
        groups: (nlist,) each list's group.
    """

    tops: np.ndarray
    groups: np.ndarray

    def nearest_groups(self, vectors: np.ndarray) -> np.ndarray:
        """Each row's :data:`COARSE_PROBES` nearest groups (the ranking of :func:`nearest_lists`)."""
        return nearest_lists(vectors, self.tops, COARSE_PROBES)

    def inside(self, vectors: np.ndarray) -> np.ndarray:
        """(rows, nlist) bool: whether each list is in one of each row's nearest groups."""
        near = np.zeros((len(vectors), len(self.tops)), dtype=bool)
        np.put_along_axis(near, self.nearest_groups(vectors), True, axis=1)
        inside: np.ndarray = near[:, self.groups]
        return inside


_coarse_kept: dict[bytes, _Coarse] = {}


def _coarse(centroids: np.ndarray) -> _Coarse | None:
    """The groups of a table of :data:`COARSE_FROM` lists or more (None below): k-means of the centroids.

    Found from the centroids alone, once per table and process (kept by a hash of their bytes),
    so every engine that has the centroids has the same groups.
    """
    if len(centroids) < COARSE_FROM:
        return None
    table = np.ascontiguousarray(centroids, dtype=np.float32)
    key = hashlib.blake2b(table.tobytes(), digest_size=16).digest() + repr(table.shape).encode()
    if key not in _coarse_kept:
        tops = _kmeans(table, round(math.sqrt(len(table))), 0, IvfReport())
        # Below COARSE_FROM groups, so ranked in one level.
        _coarse_kept[key] = _Coarse(tops, nearest_lists(table, tops, 1)[:, 0])
        while len(_coarse_kept) > _COARSE_KEPT:
            del _coarse_kept[next(iter(_coarse_kept))]
    return _coarse_kept[key]


def _nearest_in_groups(vectors: np.ndarray, centroids: np.ndarray, coarse: _Coarse, count: int) -> np.ndarray:
    """:func:`nearest_lists` in two levels: the nearest among the lists of each row's nearest groups.

    Rows whose groups hold fewer than ``count`` lists, or whose ``count``-th and next lists are
    within 1e-6, are ranked by :func:`_ranked_exactly` (the same order, in float64).
    """
    look = min(count + 1, len(centroids))
    indices, scores = search_top_k(vectors, coarse.nearest_groups(vectors), centroids, coarse.groups, look)
    ranked = np.ascontiguousarray(indices[:, :count])
    unsure = indices[:, count - 1] < 0
    if look > count:
        unsure |= (indices[:, count] >= 0) & (scores[:, count - 1] - scores[:, count] < _TIE)
    redo = np.flatnonzero(unsure)
    if len(redo):
        ranked[redo] = _ranked_exactly(vectors[redo], centroids, count)
    return ranked


def group_lists(centroids: np.ndarray, groups: int, seed: int) -> np.ndarray:
    """A group for each list, near lists together (k-means of the centroids): how Spark spreads them.

    A row's nearest lists then mostly share a group, so it is sent to few groups.
    """
    if groups <= 1:
        return np.zeros(len(centroids), dtype=np.int64)
    if len(centroids) <= groups:
        return np.arange(len(centroids), dtype=np.int64)
    tops = train(centroids, groups, seed, IvfReport())
    return nearest_lists(centroids, tops, 1)[:, 0]


def list_sizes(lists: np.ndarray, nlist: int) -> np.ndarray:
    """Rows in each list."""
    return np.bincount(lists, minlength=nlist).astype(np.int64)


def probe(
    queries: np.ndarray, centroids: np.ndarray, nprobe: int, sizes: np.ndarray, need: np.ndarray | int = 0
) -> np.ndarray:
    """The lists each query row is scored against: its ``nprobe`` nearest, and more if needed.

    A row whose nearest lists hold fewer than ``need`` corpus rows (its k, at most the corpus'
    size) probes further lists, nearest first, until they hold enough: an approximate top-k is
    never shorter than the exact one.

    Returns:
        ``(rows, width)`` int64 list numbers, -1 where a row probes fewer than ``width``.
    """
    probes = nearest_lists(queries, centroids, nprobe)
    wanted = np.minimum(np.broadcast_to(np.asarray(need, dtype=np.int64), (len(queries),)), sizes.sum())
    short = np.flatnonzero(sizes[probes].sum(axis=1) < wanted)
    if not len(short):
        return probes
    ranked = _ranked_exactly(queries[short], centroids, len(centroids))
    held = np.cumsum(sizes[ranked], axis=1)
    # The first position whose lists hold enough, counted from 1; never fewer than nprobe lists.
    counts = np.maximum(np.argmax(held >= wanted[short, None], axis=1) + 1, probes.shape[1])
    width = int(counts.max())
    wide = np.full((len(queries), width), -1, dtype=np.int64)
    wide[:, : probes.shape[1]] = probes
    wide[short] = np.where(np.arange(width) < counts[:, None], ranked[:, :width], -1)
    return wide
