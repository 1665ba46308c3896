"""``DataFrame.emb``: the semantic join, as ``DataFrame.emb.join`` in pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from polyemb.chunks import chunks_of_table
from polyemb.embedder import check_same_model
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.maxsim import CHUNK_COLUMNS, join_chunk_rows
from polyemb.options import JoinHow, Method, Score
from polyemb.polars._chunks import chunk_table, offsets
from polyemb.polars._columns import (
    EncodeOptions,
    Encoding,
    both_sides,
    float_series,
    matrix_of,
    rows_with_nulls,
)
from polyemb.scores import added_columns, join_names
from polyemb.similarity import check_join, join_rows
from polyemb.store.stored import default_encoder_or

if TYPE_CHECKING:
    from typing import Unpack

    from polyemb.encoder import Encoder
    from polyemb.store import VectorStore

__all__ = ["EmbFrameNamespace"]


class EmbFrameNamespace:
    """``DataFrame.emb``: the semantic join."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self._df = frame

    def join(
        self,
        right: pl.DataFrame,
        left_on: str,
        right_on: str | None = None,
        *,
        k: int = 1,
        threshold: float | None = None,
        how: JoinHow = "inner",
        score: Score = "cosine",
        chunks: bool = False,
        method: Method | Ivf = "exact",
        report: IvfReport | None = None,
        suffixes: tuple[str, str] = ("_x", "_y"),
        score_column: str = "score",
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.DataFrame:
        """Join each left row with its ``k`` best-scoring right rows (also across languages).

        The same join, options and rows as pandas' ``DataFrame.emb.join``: it works block by
        block (:func:`polyemb.similarity.join_rows`), never holding the whole left x right score
        matrix, and ties go to the earlier right row.

        Args:
            right: The other DataFrame (a LazyFrame: ``.collect()`` it first).
            left_on: A text or vector column of this DataFrame.
            right_on: A text or vector column of ``right``; default ``left_on``.
            k: Matches per left row.
            threshold: Keep only matches whose score is at least this.
            how: ``"inner"`` drops left rows without a match (NULL key or none above the
                threshold); ``"left"`` keeps them once, with NULL right columns and score.
            score: ``"cosine"``; or ``"margin"`` / ``"csls"``, which score a pair relative to both
                rows' 4 nearest neighbours on the other side (best across languages). These add
                a ``cosine`` column.
            chunks: Score each right text by its best window (max-sim over
                :meth:`~polyemb.polars.EmbSeriesNamespace.chunks`) and add that window's ``start``
                and ``end`` in the right text (NULL where unmatched). Exact only.
            method: ``"exact"`` (every pair scored); ``"ivf"`` or :class:`polyemb.ivf.Ivf`
                settings: each left row is scored against the right rows of its nearest lists
                (approximate; ``Ivf(recall=0.95)`` calibrates how many). As pandas'.
            report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
            suffixes: Added to column names found in both tables, as pandas' ``merge`` does.
            score_column: Name of the score column.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            Left columns, right columns, then the Float64 score (and the score's own columns;
            then ``start`` and ``end`` with ``chunks``), ordered by left row, then by
            decreasing score.

        Raises:
            ColumnNotFoundError: ``left_on`` or ``right_on`` is not a column.
            ModelMismatchError: The two columns hold vectors of different models.

        Example:
            >>> orders.emb.join(products, left_on="description", right_on="name", k=3, score="margin")
        """
        if not isinstance(right, pl.DataFrame):
            hint = ": call .collect() on it first" if isinstance(right, pl.LazyFrame) else ""
            raise InvalidInputError(f"right must be a DataFrame, got {type(right).__name__}{hint}")
        check_join(k, threshold, how, score, method)
        names = added_columns(score, score_column)
        # Before anything is embedded: a clash of names would only show once the join is done.
        join_names(self._df.columns, right.columns, suffixes, [*names, *CHUNK_COLUMNS] if chunks else names)
        right_on = left_on if right_on is None else right_on
        encoding = Encoding(encoder, store, options)
        if chunks:
            if method_settings(method) is not None:
                raise InvalidInputError("chunks=True scores every window exactly: use method='exact' with it")
            return self._join_chunks(
                right, left_on, right_on, k, names, encoding, threshold, how, score, suffixes
            )
        lvec, lvalid, rvec, rvalid = both_sides(
            _column(self._df, left_on, "left"), _column(right, right_on, "right"), encoding, "join"
        )
        rows = join_rows(
            lvec,
            lvalid,
            rvec,
            rvalid,
            k,
            threshold=threshold,
            how=how,
            score=score,
            method=method,
            report=report,
        )
        matched = rows.right >= 0
        added = [
            float_series(name, values, matched)
            for name, values in zip(names, [rows.score, *rows.columns.values()], strict=True)
        ]
        return _assemble(self._df, right, rows.left, rows.right, added, suffixes)

    def _join_chunks(
        self,
        right: pl.DataFrame,
        left_on: str,
        right_on: str,
        k: int,
        names: tuple[str, ...],
        encoding: Encoding,
        threshold: float | None,
        how: JoinHow,
        score: Score,
        suffixes: tuple[str, str],
    ) -> pl.DataFrame:
        """The join with each right text scored by its best window (the core's ``join_chunk_rows``)."""
        lvec, lvalid, model = matrix_of(_column(self._df, left_on, "left"), encoding)
        found = chunks_of_table(
            chunk_table(_column(right, right_on, "right"), encoding.encoder, encoding.options)
        )
        check_same_model(model, default_encoder_or(encoding.encoder).provenance, "join")
        rows = join_chunk_rows(
            lvec, lvalid, found.vectors, found.row, k, threshold=threshold, how=how, score=score
        )
        matched = rows.right >= 0
        added = [
            float_series(name, values, matched)
            for name, values in zip(names, [rows.score, *rows.columns.values()], strict=True)
        ]
        return _assemble(
            self._df, right, rows.left, rows.right, [*added, *offsets(found, rows.chunk)], suffixes
        )


def _column(frame: pl.DataFrame, name: str, side: str) -> pl.Series:
    if not isinstance(name, str):  # a list of names, an expression: not one column's name
        raise InvalidInputError(
            f"a join matches one column per side; {side}_on is {type(name).__name__} ({name!r:.60}): "
            "give one column's name"
        )
    if name not in frame.columns:
        raise ColumnNotFoundError.from_missing(name, frame.columns, f"the {side} DataFrame")
    return frame.get_column(name)


def _assemble(
    left: pl.DataFrame,
    right: pl.DataFrame,
    left_rows: np.ndarray,
    right_rows: np.ndarray,
    added: list[pl.Series],
    suffixes: tuple[str, str],
) -> pl.DataFrame:
    """Left rows, right rows (-1: all NULL) and the ``added`` columns side by side, named as pandas does."""
    left_names, right_names = join_names(
        left.columns, right.columns, suffixes, [column.name for column in added]
    )
    left_part = left.select(pl.all().gather(rows_with_nulls(left_rows))).rename(left_names)
    right_part = right.select(pl.all().gather(rows_with_nulls(right_rows))).rename(right_names)
    return pl.concat([left_part, right_part, pl.DataFrame(added)], how="horizontal")
