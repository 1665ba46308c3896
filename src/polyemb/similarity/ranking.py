"""Each query row's best corpus rows, block by block: :func:`top_k`, and :func:`top_pairs` for joins.

How a pair is scored comes from the table in :mod:`polyemb.scores`; :func:`top_pairs` is the one
function every engine's join calls. The helpers without ``__all__`` entries are shared with
:mod:`polyemb.maxsim` and :mod:`polyemb.ivf`, which rank the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch

from polyemb.errors import InvalidInputError
from polyemb.options import Method, Score, check_positive_int
from polyemb.scores import PAIR_COLUMNS, ScoreSpec, score_spec
from polyemb.similarity.vectors import normalize_rows

if TYPE_CHECKING:
    # polyemb.ivf builds on this module, so it is imported where the ivf method is asked for.
    from polyemb.ivf import Ivf, IvfReport

__all__ = ["BLOCK_ROWS", "NEIGHBOURS", "Neighbourhoods", "Pairs", "neighbourhood", "top_k", "top_pairs"]

# Rows of the (query block x corpus block) score matrix computed at once: 4096 x 4096 float32
# is 64 MiB, which bounds top_k's memory whatever the table sizes.
BLOCK_ROWS = 4_096
# Neighbours in the margin and CSLS neighbourhoods: the k of LASER's bitext mining.
NEIGHBOURS = 4


def neighbourhood(
    queries: np.ndarray, corpus: np.ndarray, k: int = NEIGHBOURS, *, block_rows: int = BLOCK_ROWS
) -> np.ndarray:
    """Mean cosine of each query row with its ``k`` nearest corpus rows: r(x) in margin and CSLS.

    A sentence that is close to many (a hub) has a high mean; scoring relative to it is what
    keeps hubs from being everyone's nearest neighbour across languages. 0 for an empty corpus.
    """
    _, scores = top_k(queries, corpus, k, block_rows=block_rows)
    return scores.mean(axis=1) if scores.shape[1] else np.zeros(len(scores), dtype=np.float32)


Neighbourhoods: TypeAlias = tuple[np.ndarray | None, np.ndarray | None]
"""``(r of each query row over the corpus, r of each corpus row over the queries)``."""


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    score: Score = "cosine",
    neighbourhoods: Neighbourhoods | None = None,
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
        score: A score of :data:`polyemb.scores.SCORE_TABLE`: ``"cosine"``, ``"margin"`` or ``"csls"``.
        neighbourhoods: For margin and CSLS, ``(r of each query over the corpus, r of each
            corpus row over the queries)``; a side that is None is computed here with
            :func:`neighbourhood`. Scores without neighbourhoods ignore it.
        neighbours: k of the neighbourhoods computed here (4, as LASER uses).
        block_rows: Rows of a block on each side.

    Returns:
        ``(indices, scores)``, each ``(len(queries), min(k, len(corpus)))``.

    Example:
        >>> indices, scores = top_k(np.eye(2), np.array([[0.0, 1.0], [1.0, 0.1]]), 1)
        >>> indices.tolist()
        [[1], [0]]
    """
    check_positive_int("k", k)
    spec = score_spec(score)
    q, c = unit_pair(queries, corpus)
    return _ranked(q, c, k, spec, neighbourhoods, neighbours, block_rows)


@dataclass(frozen=True)
class Pairs:
    """Top-k pairs as flat rows: by query row, then best first, ties to the lower corpus row.

    Attributes:
        query: int64 query row of each pair.
        corpus: int64 corpus row of each pair.
        score: float32 score of each pair.
        columns: The columns the score adds (its entry in :data:`polyemb.scores.SCORE_TABLE`),
            float32, by name: ``{"cosine": ...}`` for margin and CSLS, empty for cosine.
    """

    query: np.ndarray
    corpus: np.ndarray
    score: np.ndarray
    columns: dict[str, np.ndarray]


def top_pairs(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int | np.ndarray,
    *,
    score: Score = "cosine",
    neighbourhoods: Neighbourhoods | None = None,
    neighbours: int = NEIGHBOURS,
    block_rows: int = BLOCK_ROWS,
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
) -> Pairs:
    """Each query row's ``k`` best corpus rows as flat pairs, with the columns the score adds.

    What every engine's join is made of: :func:`top_k`, flattened, plus the score's own columns
    (the cosine of each pair for margin and CSLS), so no engine branches on the score. With
    ``method="ivf"``, the best rows among each query row's probed lists
    (:class:`polyemb.ivf.IvfIndex`), with approximate neighbourhoods for margin and CSLS.

    Args:
        queries: (n, dim) vectors (normalized here).
        corpus: (m, dim) vectors.
        k: Pairs per query row: one positive int, or one per query row (int array of length n).
        score: A score of :data:`polyemb.scores.SCORE_TABLE`.
        neighbourhoods: As for :func:`top_k`.
        neighbours: As for :func:`top_k`.
        block_rows: As for :func:`top_k`.
        method: ``"exact"``, ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings.
        report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.

    Returns:
        The pairs; a query row has ``min(its k, len(corpus))`` of them.

    Raises:
        InvalidInputError: A k below 1, an unknown score or method, or vectors of different
            dimensions.

    Example:
        >>> pairs = top_pairs(np.eye(2), np.eye(2), 1, score="csls")
        >>> pairs.corpus.tolist(), sorted(pairs.columns)
        ([0, 1], ['cosine'])
    """
    from polyemb.ivf import IvfIndex, IvfReport, method_settings

    spec = score_spec(score)
    settings = method_settings(method)
    q, c = unit_pair(queries, corpus)
    ks = per_query_k(k, len(q))
    if settings is not None:
        report = report or IvfReport()
        index = IvfIndex.build(c, settings, report, queries=q, k=int(ks.max(initial=1)))
        return index.pairs(
            q,
            ks,
            score=spec.name,
            neighbourhoods=neighbourhoods,
            neighbours=neighbours,
            settings=settings,
            report=report,
        )
    indices, scores = _ranked(q, c, int(ks.max(initial=1)), spec, neighbourhoods, neighbours, block_rows)
    taken = np.arange(indices.shape[1]) < ks[:, None]
    rows, chosen = np.nonzero(taken)[0].astype(np.int64), indices[taken]
    columns = {name: PAIR_COLUMNS[name](q[rows], c[chosen]) for name in spec.columns}
    return Pairs(rows, chosen, scores[taken], columns)


def unit_pair(queries: np.ndarray, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as unit rows of one dimension.

    An engine may not know the dimension of an empty side (an empty Arrow list column is
    ``(0, 0)``): it takes the other side's, and simply has no pairs.
    """
    q, c = normalize_rows(queries), normalize_rows(corpus)
    if not len(q):
        return q.reshape(0, c.shape[1]), c
    if not len(c):
        return q, c.reshape(0, q.shape[1])
    if q.shape[1] != c.shape[1]:
        raise InvalidInputError(f"vectors of dimension {q.shape[1]} and {c.shape[1]} cannot be compared")
    return q, c


def per_query_k(k: int | np.ndarray, rows: int) -> np.ndarray:
    """``k`` as one int64 per query row, checked."""
    if np.ndim(k) == 0:
        return np.full(rows, check_positive_int("k", k), dtype=np.int64)
    ks = np.asarray(k)
    if ks.shape != (rows,) or not np.issubdtype(ks.dtype, np.integer):
        raise InvalidInputError(
            f"k must be a positive int or one int per query row ({rows}); got {ks.dtype} of shape {ks.shape}"
        )
    if rows and ks.min() < 1:
        raise InvalidInputError(f"k must be a positive integer, got {int(ks.min())}")
    return ks.astype(np.int64, copy=False)


def _ranked(
    q: np.ndarray,
    c: np.ndarray,
    k: int,
    spec: ScoreSpec,
    neighbourhoods: Neighbourhoods | None,
    neighbours: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of unit rows: query block by query block, each against the whole corpus."""
    keep = min(k, len(c))
    indices = np.zeros((len(q), keep), dtype=np.int64)
    scores = np.zeros((len(q), keep), dtype=np.float32)
    if keep == 0 or len(q) == 0:
        return indices, scores
    query_r, corpus_r = _neighbourhood_tensors(q, c, spec, neighbourhoods, neighbours, block_rows)
    corpus_t = torch.from_numpy(c)
    with torch.inference_mode():
        for q0 in range(0, len(q), block_rows):
            rows = slice(q0, q0 + block_rows)
            best_idx, best_val = _best_in_corpus(
                torch.from_numpy(q[rows]), corpus_t, keep, spec, query_r[rows], corpus_r, block_rows
            )
            indices[rows], scores[rows] = best_idx.numpy(), best_val.numpy()
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _neighbourhood_tensors(
    q: np.ndarray,
    c: np.ndarray,
    spec: ScoreSpec,
    given: Neighbourhoods | None,
    neighbours: int,
    block_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' r as tensors (a missing side computed here); empty for a score without them."""
    if not spec.neighbourhoods:
        return torch.zeros(0), torch.zeros(0)
    query_r, corpus_r = given if given is not None else (None, None)
    if query_r is None:
        query_r = neighbourhood(q, c, neighbours, block_rows=block_rows)
    if corpus_r is None:
        corpus_r = neighbourhood(c, q, neighbours, block_rows=block_rows)
    for r, rows, side in ((query_r, len(q), "query"), (corpus_r, len(c), "corpus")):
        if np.shape(r) != (rows,):
            raise InvalidInputError(
                f"the {side} neighbourhoods have shape {np.shape(r)}; {spec.name} needs one per {side} "
                f"row ({rows})"
            )
    return torch.from_numpy(np.array(query_r, dtype=np.float32)), torch.from_numpy(
        np.array(corpus_r, dtype=np.float32)
    )


def _best_in_corpus(
    q_block: torch.Tensor,
    corpus: torch.Tensor,
    keep: int,
    spec: ScoreSpec,
    query_r: torch.Tensor,
    corpus_r: torch.Tensor,
    block_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns, values)``: a block of queries' ``keep`` best corpus rows, corpus block by block."""
    best_val = torch.empty((len(q_block), 0))
    best_idx = torch.empty((len(q_block), 0), dtype=torch.int64)
    for c0 in range(0, len(corpus), block_rows):
        block = spec.rescore(
            q_block @ corpus[c0 : c0 + block_rows].T, query_r, corpus_r[c0 : c0 + block_rows]
        )
        val, idx = first_best(block, min(keep, block.shape[1]))
        best_val = torch.cat([best_val, val], dim=1)
        best_idx = torch.cat([best_idx, idx + c0], dim=1)
        if best_val.shape[1] > keep:  # a few candidates: order them fully, ties by index
            by_index = best_idx.argsort(dim=1)
            best_val, best_idx = best_val.gather(1, by_index), best_idx.gather(1, by_index)
            pick = best_val.argsort(dim=1, descending=True, stable=True)[:, :keep]
            best_val, best_idx = best_val.gather(1, pick), best_idx.gather(1, pick)
    return best_idx, best_val


def first_best(block: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``keep`` highest values and their columns; among equal values the lower column.

    ``torch.topk`` alone may keep any of several tied columns; rows where a tie crosses the
    cut are sorted stably instead. Duplicate vectors do not always tie: the product may round
    their scores differently in the last bit.
    """
    values, columns = block.topk(keep, dim=1)
    last = values[:, -1:]
    tied = ((block == last).sum(dim=1) > (values == last).sum(dim=1)).nonzero().flatten()
    if len(tied):
        order = block[tied].argsort(dim=1, descending=True, stable=True)[:, :keep]
        values[tied], columns[tied] = block[tied].gather(1, order), order
    return values, columns
