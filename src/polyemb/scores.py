"""The table of join scores: one entry per score, read by the core's top-k and by every engine.

An entry says what a score needs (both sides' neighbourhoods, or nothing), which columns a join
adds beside it, and how it turns a block of cosines into scores. Engines read the entry, never
the score's name, so adding a score is one entry here (with its tests) and nothing in pandas,
DuckDB or Spark. Torch-free at import (torch appears in annotations only), so the command line
can read the table for its help.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from polyemb.errors import InvalidInputError
from polyemb.options import SCORES, Score, check_choice

if TYPE_CHECKING:
    import torch

__all__ = [
    "IDENTICAL",
    "PAIR_COLUMNS",
    "SCORE_TABLE",
    "ScoreSpec",
    "added_columns",
    "check_free",
    "join_names",
    "joined_names",
    "score_spec",
]

Name = TypeVar("Name", bound=Hashable)
"""A column name: a string in Spark and Polars, any hashable label in pandas."""


def _same(name: Any) -> Any:
    """Names as they are: two names are one only if equal (pandas, Polars)."""
    return name


IDENTICAL = 1.0 - 1e-5
"""The cosine from which two unit vectors count as identical: float32 rounding puts an identical
pair's computed cosine just below 1 (0.99999994 for all-MiniLM-L6-v2's vectors)."""

Rescore = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``(cosines, query_r, corpus_r) -> scores`` for a (queries x corpus) block."""


@dataclass(frozen=True)
class ScoreSpec:
    """One score of the table.

    Attributes:
        name: The name users give (``score=``), one of :data:`polyemb.options.SCORES`.
        neighbourhoods: Whether the score needs r, each row's mean cosine with its nearest rows
            on the other side (see :func:`polyemb.similarity.neighbourhood`).
        columns: The columns a join adds beside the score, each a key of :data:`PAIR_COLUMNS`.
        rescore: Turns a (queries x corpus) block of cosines into this score, given the block's
            query r and corpus r (empty tensors when ``neighbourhoods`` is False).
        threshold_cap: A join threshold above this is taken as this; None: as given. Cosine's
            is :data:`IDENTICAL`, so that ``threshold=1.0`` keeps identical texts.
    """

    name: Score
    neighbourhoods: bool
    columns: tuple[str, ...]
    rescore: Rescore
    threshold_cap: float | None = None


def _pair_cosine(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """Cosine of each pair of unit rows ``(queries[i], corpus[i])``."""
    cosines: np.ndarray = np.einsum("ij,ij->i", queries, corpus).astype(np.float32)
    return cosines


PAIR_COLUMNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"cosine": _pair_cosine}
"""How each added column is computed from the unit vectors of the pairs (float32, one per pair)."""


def _cosine(cosines: torch.Tensor, query_r: torch.Tensor, corpus_r: torch.Tensor) -> torch.Tensor:
    return cosines


def _margin(cosines: torch.Tensor, query_r: torch.Tensor, corpus_r: torch.Tensor) -> torch.Tensor:
    # A floor on the denominator: rows whose neighbours are orthogonal (r = 0) must not divide by 0.
    return cosines / ((query_r[:, None] + corpus_r[None, :]) / 2).clamp(min=1e-6)


def _csls(cosines: torch.Tensor, query_r: torch.Tensor, corpus_r: torch.Tensor) -> torch.Tensor:
    return 2 * cosines - query_r[:, None] - corpus_r[None, :]


SCORE_TABLE: dict[Score, ScoreSpec] = {
    spec.name: spec
    for spec in (
        # Plain cosine of the two unit vectors.
        ScoreSpec("cosine", neighbourhoods=False, columns=(), rescore=_cosine, threshold_cap=IDENTICAL),
        # Ratio margin (Artetxe & Schwenk, 2019): cos(x, y) / ((r(x) + r(y)) / 2).
        ScoreSpec("margin", neighbourhoods=True, columns=("cosine",), rescore=_margin),
        # CSLS (Conneau et al., 2018): 2 cos(x, y) - r(x) - r(y).
        ScoreSpec("csls", neighbourhoods=True, columns=("cosine",), rescore=_csls),
    )
}
"""Every score, by name; its keys are :data:`polyemb.options.SCORES` (a test holds them equal)."""


def score_spec(score: Any) -> ScoreSpec:
    """The table's entry for ``score``.

    Raises:
        InvalidInputError: ``score`` is not one of :data:`polyemb.options.SCORES`.

    Example:
        >>> score_spec("margin").columns
        ('cosine',)
    """
    name: Score = check_choice("score", score, SCORES)
    return SCORE_TABLE[name]


def added_columns(score: Any, score_column: str) -> tuple[str, ...]:
    """The columns a join adds, in order: ``score_column``, then the score's own columns.

    Raises:
        InvalidInputError: ``score_column`` is the name of one of the score's own columns.

    Example:
        >>> added_columns("csls", "similarity")
        ('similarity', 'cosine')
    """
    spec = score_spec(score)
    if score_column in spec.columns:
        raise InvalidInputError(
            f"score={spec.name!r} adds a {score_column!r} column: choose another score_column"
        )
    return (score_column, *spec.columns)


def check_free(
    taken: Collection[str], added: Sequence[str], *, fold: Callable[[str], Hashable] = _same
) -> None:
    """Refuse a join whose added columns (``added``, the score column first) would overwrite one of ``taken``.

    ``fold``: how the engine tells names apart (Spark: case-folded by default).

    Raises:
        InvalidInputError: A column of the tables has the name of one the join adds; the
            message says which fix applies.
    """
    folded = {fold(name) for name in taken}
    for position, name in enumerate(added):
        if fold(name) in folded:
            fix = (
                "rename it, or choose another score_column"
                if position == 0
                else f"rename it (the join adds {', '.join(added)})"
            )
            raise InvalidInputError(f"the joined tables already have a column {name!r}: {fix}")


def joined_names(
    left: Sequence[Name], right: Sequence[Name], suffixes: Any, *, fold: Callable[[Any], Hashable] = _same
) -> tuple[dict[Name, Name | str], dict[Name, Name | str]]:
    """How a join names the left and the right columns: ``suffixes`` added to names found in both.

    ``fold``: how the engine tells names apart (Spark: case-folded by default, so ``ID`` and
    ``id`` are found in both).

    Returns:
        Two mappings, from each side's column names to the joined table's.

    Raises:
        InvalidInputError: ``suffixes`` is not two strings, or they leave a name twice in the
            joined table (both empty, or a suffixed name that one side already has).

    Example:
        >>> joined_names(["id", "text"], ["id", "label"], ("_x", "_y"))
        ({'id': 'id_x', 'text': 'text'}, {'id': 'id_y', 'label': 'label'})
    """
    if (
        not isinstance(suffixes, (tuple, list))
        or len(suffixes) != 2
        or not all(isinstance(suffix, str) for suffix in suffixes)
    ):
        raise InvalidInputError(f"suffixes must be two strings, like ('_x', '_y'); got {suffixes!r}")
    clash = {fold(c) for c in left} & {fold(c) for c in right}
    left_names = {c: f"{c}{suffixes[0]}" if fold(c) in clash else c for c in left}
    right_names = {c: f"{c}{suffixes[1]}" if fold(c) in clash else c for c in right}
    joined = Counter([*(fold(left_names[c]) for c in left), *(fold(right_names[c]) for c in right)])
    renamed = [
        *(left_names[c] for c in left if fold(c) in clash),
        *(right_names[c] for c in right if fold(c) in clash),
    ]
    for name in sorted(renamed, key=str):
        if joined[fold(name)] > 1:
            raise InvalidInputError(
                f"suffixes {tuple(suffixes)!r} leave two columns named {name!r} in the joined "
                "table: choose suffixes that tell the two sides' columns apart"
            )
    return left_names, right_names


def join_names(
    left: Sequence[Name],
    right: Sequence[Name],
    suffixes: Any,
    added: Sequence[str],
    *,
    fold: Callable[[Any], Hashable] = _same,
) -> tuple[dict[Name, Name | str], dict[Name, Name | str]]:
    """:func:`joined_names`, checked against the ``added`` columns (:func:`check_free`).

    What every engine's join names its columns by; cheap, so a join calls it before it embeds
    anything, and again when it assembles the result.
    """
    left_names, right_names = joined_names(left, right, suffixes, fold=fold)
    taken: set[Any] = {*left_names.values()} | {*right_names.values()}
    check_free(taken, added, fold=fold)
    return left_names, right_names
