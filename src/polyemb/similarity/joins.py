"""A semantic join as row positions: :func:`join_rows`, what every engine's join assembles.

:func:`with_unmatched` is shared with :mod:`polyemb.maxsim`'s join over chunks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from polyemb.errors import InvalidInputError
from polyemb.options import JOIN_HOWS, JoinHow, Method, Score, check_choice, check_positive_int
from polyemb.scores import score_spec
from polyemb.similarity.ranking import BLOCK_ROWS, NEIGHBOURS, top_pairs

if TYPE_CHECKING:
    from polyemb.ivf import Ivf, IvfReport

__all__ = ["JoinRows", "check_join", "join_rows"]


def check_join(
    k: int, threshold: float | None, how: str, score: str, method: object = "exact"
) -> float | None:
    """Check a join's options (before the engines spend time encoding); the threshold to compare scores with.

    That is ``threshold`` itself, or the score's ``threshold_cap`` where it is lower: for cosine
    :data:`polyemb.scores.IDENTICAL`, so that ``threshold=1.0`` keeps identical texts, whose
    float32 cosine can fall just below 1 (as near-duplicates take it).
    """
    from polyemb.ivf import method_settings

    check_positive_int("k", k)
    check_choice("how", how, JOIN_HOWS)
    spec = score_spec(score)
    method_settings(method)
    if threshold is None:
        return None
    # numbers.Real: numpy's float32 too, as near-duplicates take it.
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise InvalidInputError(f"threshold must be a number (not NaN) or None, got {threshold!r}")
    return float(threshold) if spec.threshold_cap is None else min(float(threshold), spec.threshold_cap)


@dataclass(frozen=True)
class JoinRows:
    """The pairs of a semantic join, as row positions: what every engine's join assembles.

    Ordered by left row, then by decreasing score, then by right row (so ties go to the earlier
    right row). Unmatched left rows of a ``how="left"`` join have right row -1 and NaN scores.
    """

    left: np.ndarray  # int64 left row positions
    right: np.ndarray  # int64 right row positions, -1 where unmatched
    score: np.ndarray  # float64 score of the pair
    columns: dict[str, np.ndarray]  # float64 columns the score adds (Pairs.columns), by name


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
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
) -> JoinRows:
    """The ``k`` best right rows of each valid left row, by ``score``, at or above ``threshold``.

    Rows whose ``valid`` is False (NULL) never match; margin and CSLS neighbourhoods are taken
    over the valid rows only. ``how="left"`` keeps every left row once it has no match.
    ``method`` and ``report`` are :func:`top_pairs`'.
    """
    cut = check_join(k, threshold, how, score, method)
    lpos, rpos = np.flatnonzero(left_valid), np.flatnonzero(right_valid)
    pairs = top_pairs(
        left[lpos],
        right[rpos],
        k,
        score=score,
        neighbours=neighbours,
        block_rows=block_rows,
        method=method,
        report=report,
    )
    left_rows, right_rows = lpos[pairs.query], rpos[pairs.corpus]
    # One row per value (the score, then the added columns), one column per pair.
    values = np.vstack([pairs.score, *pairs.columns.values()]).astype(np.float64)
    if cut is not None:
        keep = values[0] >= cut
        left_rows, right_rows, values = left_rows[keep], right_rows[keep], values[:, keep]
    if how == "left":
        left_rows, right_rows, values = with_unmatched(len(left), left_rows, right_rows, values)
    columns = dict(zip(pairs.columns, values[1:], strict=True))
    return JoinRows(left_rows.astype(np.int64), right_rows.astype(np.int64), values[0], columns)


def with_unmatched(
    n_left: int, left_rows: np.ndarray, right_rows: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs plus each left row without one (right row -1, NaN values), in left row order."""
    unmatched = np.setdiff1d(np.arange(n_left), left_rows)
    left_rows = np.concatenate([left_rows, unmatched])
    right_rows = np.concatenate([right_rows, np.full(len(unmatched), -1)])
    values = np.concatenate([values, np.full((len(values), len(unmatched)), np.nan)], axis=1)
    order = np.argsort(left_rows, kind="stable")
    return left_rows[order], right_rows[order], values[:, order]
