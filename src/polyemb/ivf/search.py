"""Exact scores inside the probed lists, list by list: top-k lists, or the pairs above a threshold.

Query rows go in the order of their nearest probed list, in chunks; for each list, every row of
the chunk that probes it is scored against the list's rows in one matrix product, and its best
rows are kept in the query's place for that list; once every list is done, each query's top-k is
taken from its places (score descending, ties to the lower corpus row: the exact
:func:`polyemb.similarity.top_k`'s order). Which (query, list) pairs are scored, not the order
they come in, decides the answer, so an engine that splits the
corpus or the queries and merges the parts' top-k gets the same rows.

The loop runs on numpy with one BLAS thread per worker thread (as many as torch's intra-op
threads): its products are small, and a BLAS pool per product spins more than it computes on a
loaded machine (measured: 5x the CPU time with 2 BLAS threads on 2 busy cores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from polyemb.scores import ScoreSpec, score_spec

__all__ = ["Progress", "search_above", "search_top_k"]

Progress = Callable[[int, int], None]
"""Told ``(done, total)`` as work is done: (query row, list) pairs here, blocks for exact search."""

_T = TypeVar("_T")
# Query rows below which a part is not worth a thread of its own.
_PART_ROWS = 2_048
# Bytes of candidates (score and row of each probed list's best rows) a worker holds at once.
_CANDIDATE_BYTES = 64 * 2**20
# Query rows scored against one list at once: their copy and scores stay a few MiB, in the heap.
# (Above 32 MiB, glibc maps every temporary afresh: measured at 1M rows in 7,812 lists, ranking
# each row's nearest list spent 12 s of 19 s in the kernel, faulting in 49 MiB copies.)
_LIST_ROWS = 4_096
_NONE = np.iinfo(np.int64).max


class _Grouped:
    """The corpus rows grouped by list: list L's rows are ``rows[offsets[L]:offsets[L + 1]]``.

    Within a list, rows keep their corpus order, so the lower column is the earlier row.
    """

    def __init__(self, corpus: np.ndarray, lists: np.ndarray, nlist: int) -> None:
        self.order = np.argsort(lists, kind="stable")
        self.rows = np.ascontiguousarray(corpus[self.order], dtype=np.float32)
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))])

    def members(self, list_number: int) -> slice:
        return slice(int(self.offsets[list_number]), int(self.offsets[list_number + 1]))


def _probed(probes: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(list, query rows probing it, its place in their probes)`` for each probed list, in list order."""
    flat = probes.ravel()
    at = np.flatnonzero(flat >= 0)
    flat = flat[at]
    order = np.argsort(flat, kind="stable")
    at, flat = at[order], flat[order]
    owners, slots = np.divmod(at, max(probes.shape[1], 1))
    numbers, starts = np.unique(flat, return_index=True)
    ends = np.append(starts[1:], len(flat))
    for number, a, b in zip(numbers.tolist(), starts.tolist(), ends.tolist(), strict=True):
        yield number, owners[a:b], slots[a:b]


def _in_parts(rows: int, work: Callable[[slice], _T]) -> list[_T]:
    """``work`` over consecutive slices of the query rows, one per worker thread."""
    threads = max(1, min(torch.get_num_threads(), rows // _PART_ROWS))
    bounds = np.linspace(0, rows, threads + 1).round().astype(int)
    parts = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with threadpool_limits(limits=1, user_api="blas"):
        if threads == 1:
            return [work(parts[0])]
        with ThreadPoolExecutor(threads, thread_name_prefix="polyemb-ivf") as pool:
            return list(pool.map(work, parts))


def _best_columns(scores: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``keep`` highest scores and their columns, in no order; ties to the lower column."""
    width = scores.shape[1]
    if keep >= width:
        return scores, np.broadcast_to(np.arange(width), scores.shape)
    columns = np.argpartition(scores, width - keep, axis=1)[:, width - keep :]
    values = np.take_along_axis(scores, columns, axis=1)
    # argpartition may keep any of several equal scores at the cut: such rows are sorted stably.
    tied = np.flatnonzero((scores >= values.min(axis=1, keepdims=True)).sum(axis=1) > keep)
    if len(tied):
        columns[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :keep]
        values[tied] = np.take_along_axis(scores[tied], columns[tied], axis=1)
    return values, columns


def _best_of(scores: np.ndarray, indices: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``keep`` best ``(scores, indices)``, best first, ties to the lower index."""
    if keep < scores.shape[1]:
        columns = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        cut = np.take_along_axis(scores, columns, axis=1).min(axis=1, keepdims=True)
        # Rows with more candidates at the cut than places: ranked whole, by score then index.
        # A cut of -inf is only padding (no row), whose order does not matter.
        tied = np.flatnonzero(((scores >= cut).sum(axis=1) > keep) & (cut[:, 0] > -np.inf))
        if len(tied):
            columns[tied] = np.lexsort((indices[tied], -scores[tied]), axis=1)[:, :keep]
        scores = np.take_along_axis(scores, columns, axis=1)
        indices = np.take_along_axis(indices, columns, axis=1)
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


def search_top_k(
    queries: np.ndarray,
    probes: np.ndarray,
    corpus: np.ndarray,
    lists: np.ndarray,
    k: int,
    *,
    score: str = "cosine",
    query_r: np.ndarray | None = None,
    corpus_r: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's ``k`` best corpus rows among those of its probed lists.

    Args:
        queries: (n, dim) unit vectors.
        probes: (n, width) lists each query row is scored against, -1 for none
            (:func:`polyemb.ivf.cells.probe`).
        corpus: (m, dim) unit vectors.
        lists: (m,) the list of each corpus row.
        k: Rows per query row.
        score: A score of :data:`polyemb.scores.SCORE_TABLE`.
        query_r: For margin and CSLS, each query row's neighbourhood.
        corpus_r: For margin and CSLS, each corpus row's neighbourhood.

    Returns:
        ``(indices, scores)``, each ``(n, min(k, m))``, best first; index -1 and score -inf
        where a row's lists held fewer rows.
    """
    spec = score_spec(score)
    keep = min(k, len(corpus))
    if not len(queries) or keep == 0:
        return np.zeros((len(queries), keep), np.int64), np.zeros((len(queries), keep), np.float32)
    nlist = int(max(lists.max(initial=-1), probes.max(initial=-1))) + 1
    grouped = _Grouped(corpus, lists, nlist)
    corpus_rescore = (
        None if corpus_r is None else torch.from_numpy(np.asarray(corpus_r, np.float32)[grouped.order])
    )
    query_rescore = None if query_r is None else torch.from_numpy(np.asarray(query_r, np.float32))

    # A place per probe of a row, as wide as a list can fill (no list gives more than its rows).
    width = max(probes.shape[1], 1)
    place = max(1, min(keep, int(np.diff(grouped.offsets).max(initial=0))))
    # Query rows whose candidates (each probed list's best rows) are held at once.
    chunk_rows = max(1, _CANDIDATE_BYTES // (12 * width * place))

    # Rows are taken in the order of their nearest probed list, so that the rows of a chunk share
    # lists: each list's product then covers many rows at once, however many lists there are.
    order = np.argsort(probes[:, 0], kind="stable") if probes.shape[1] else np.arange(len(queries))
    out_i = np.empty((len(queries), keep), dtype=np.int64)
    out_s = np.empty((len(queries), keep), dtype=np.float32)

    def chunk(at: np.ndarray) -> None:
        found_s = np.full((len(at), width * place), -np.inf, dtype=np.float32)
        found_i = np.full((len(at), width * place), _NONE, dtype=np.int64)
        for number, all_owners, all_slots in _probed(probes[at]):
            members = grouped.members(number)
            if members.start == members.stop:
                continue
            for a in range(0, len(all_owners), _LIST_ROWS):
                owners, slots = all_owners[a : a + _LIST_ROWS], all_slots[a : a + _LIST_ROWS]
                block = queries[at[owners]] @ grouped.rows[members].T
                if spec.neighbourhoods and query_rescore is not None and corpus_rescore is not None:
                    block = _rescored(spec, block, query_rescore[at[owners]], corpus_rescore[members])
                values, columns = _best_columns(block, min(keep, block.shape[1]))
                places = slots[:, None] * place + np.arange(values.shape[1])
                found_s[owners[:, None], places] = values
                found_i[owners[:, None], places] = grouped.order[columns + members.start]
        best_s, best_i = _best_of(found_s, found_i, keep)
        if best_s.shape[1] < keep:  # fewer places than k (a corpus of one row): padded
            pad = ((0, 0), (0, keep - best_s.shape[1]))
            best_s = np.pad(best_s, pad, constant_values=-np.inf)
            best_i = np.pad(best_i, pad, constant_values=_NONE)
        out_i[at], out_s[at] = np.where(best_i == _NONE, -1, best_i), best_s

    def part(rows: slice) -> None:
        for a in range(rows.start, rows.stop, chunk_rows):
            chunk(order[a : min(a + chunk_rows, rows.stop)])

    _in_parts(len(queries), part)
    return out_i, out_s


def _rescored(
    spec: ScoreSpec, cosines: np.ndarray, query_r: torch.Tensor, corpus_r: torch.Tensor
) -> np.ndarray:
    """A block of cosines turned into ``spec``'s score (the table's own formula, on torch tensors)."""
    rescored: np.ndarray = spec.rescore(torch.from_numpy(cosines), query_r, corpus_r).numpy()
    return rescored


class _Tally:
    """Work done by all worker threads, told to a :data:`Progress` callback."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.done += count
            self.progress(self.done, self.total)


def search_above(
    queries: np.ndarray,
    probes: np.ndarray,
    corpus: np.ndarray,
    lists: np.ndarray,
    threshold: float,
    *,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, corpus row) of a probed list whose cosine is at least ``threshold``.

    Returns:
        ``(query rows, corpus rows, cosines)``: int64, int64 and float32 arrays, in no set order.
    """
    if not len(queries) or not len(corpus):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    nlist = int(max(lists.max(initial=-1), probes.max(initial=-1))) + 1
    grouped = _Grouped(corpus, lists, nlist)
    tally = _Tally(progress, int((probes >= 0).sum()))

    def part(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mine = queries[rows]
        found_q, found_c, found_s = (
            [np.zeros(0, np.int64)],
            [np.zeros(0, np.int64)],
            [np.zeros(0, np.float32)],
        )
        for number, owners, _ in _probed(probes[rows]):
            members = grouped.members(number)
            block = mine[owners] @ grouped.rows[members].T
            hit_q, hit_c = np.nonzero(block >= threshold)
            found_q.append(owners[hit_q] + rows.start)
            found_c.append(grouped.order[hit_c + members.start])
            found_s.append(block[hit_q, hit_c])
            tally.add(len(owners))
        return np.concatenate(found_q), np.concatenate(found_c), np.concatenate(found_s)

    found = _in_parts(len(queries), part)
    return tuple(np.concatenate([f[n] for f in found]) for n in range(3))  # type: ignore[return-value]
