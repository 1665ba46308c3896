"""``DataFrame.emb``: the semantic join."""

from __future__ import annotations

import pandas as pd

from polyemb.embedder import check_same_model
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.maxsim import CHUNK_COLUMNS
from polyemb.options import JoinHow, Method, Score
from polyemb.pandas._chunks import chunk_table, join_by_chunks
from polyemb.pandas._columns import assemble_join, both_sides, column, lazy_embedder, matrix_of
from polyemb.scores import added_columns, join_names
from polyemb.similarity import check_join, join_rows
from polyemb.store import VectorStore
from polyemb.store.stored import default_encoder_or

__all__ = ["EmbDataFrameAccessor"]


class EmbDataFrameAccessor:
    """``DataFrame.emb``: the semantic join."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._df = frame

    def join(
        self,
        right: pd.DataFrame,
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
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.DataFrame:
        """Join each left row with its ``k`` best-scoring right rows (also across languages).

        Works block by block (:func:`polyemb.similarity.join_rows`), never holding the whole
        left x right score matrix. Ties go to the earlier right row. ``method="ivf"`` scores
        each left row against part of the right side only (see ``docs/joins.md``).

        Args:
            right: The other DataFrame.
            left_on: A text or vector column of this DataFrame.
            right_on: A text or vector column of ``right``; default ``left_on``.
            k: Matches per left row.
            threshold: Keep only matches whose score is at least this.
            how: ``"inner"`` drops left rows without a match (NA key or none above the
                threshold); ``"left"`` keeps them once, with NA right columns and score.
            score: ``"cosine"``; or ``"margin"`` / ``"csls"``, which score a pair relative to both
                rows' 4 nearest neighbours on the other side, so that a sentence close to
                everything (a hub) does not match everyone; best for matching across languages.
                These add a ``cosine`` column.
            chunks: Score each right text by its best window (max-sim over :meth:`EmbSeriesAccessor.chunks`)
                and add that window's ``start`` and ``end`` in the right text (NA where unmatched).
                The left rows are encoded as without it; the right column must hold texts.
            method: ``"exact"`` (every pair scored); ``"ivf"`` or :class:`polyemb.ivf.Ivf`
                settings: each left row is scored against the right rows of its nearest lists
                (approximate; ``Ivf(recall=0.95)`` calibrates how many on a sample).
            report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
            suffixes: Added to column names found in both tables, as ``merge`` does.
            score_column: Name of the score column.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            batch_size: Passed to ``encode``.
            show_progress: Passed to ``encode``.

        Returns:
            Left columns, right columns, then the score; a fresh RangeIndex, ordered by left
            row, then by decreasing score.

        Raises:
            ModelMismatchError: The two columns hold vectors of different models.
        """
        if not isinstance(right, pd.DataFrame):
            raise InvalidInputError(f"right must be a DataFrame, got {type(right).__name__}")
        check_join(k, threshold, how, score, method)
        names = added_columns(score, score_column)
        # Before anything is embedded: a clash of names would only show once the join is done.
        join_names(
            list(self._df.columns),
            list(right.columns),
            suffixes,
            [*names, *CHUNK_COLUMNS] if chunks else names,
        )
        right_on = left_on if right_on is None else right_on
        options = {"batch_size": batch_size, "show_progress": show_progress}
        left_column, right_column = column(self._df, left_on, "left"), column(right, right_on, "right")
        embedder = lazy_embedder(encoder, store)
        if chunks:
            if method_settings(method) is not None:
                raise InvalidInputError("chunks=True scores every window exactly: use method='exact' with it")
            lvec, lvalid, model = matrix_of(left_column, embedder, **options)
            table = chunk_table(right_column, encoder, **options)
            check_same_model(model, default_encoder_or(encoder).provenance, "join")
            left_rows, right_rows, added = join_by_chunks(
                lvec, lvalid, table, k, names, threshold=threshold, how=how, score=score
            )
            return assemble_join(self._df, right, left_rows, right_rows, added, suffixes)
        lvec, lvalid, rvec, rvalid = both_sides(left_column, right_column, embedder, "join", options)
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
        added = dict(zip(names, [rows.score, *rows.columns.values()], strict=True))
        return assemble_join(self._df, right, rows.left, rows.right, added, suffixes)
