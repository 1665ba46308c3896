"""pandas: the ``.emb`` accessor on Series and DataFrames.

``import polyemb.pandas`` registers it. A Series holds either texts (any string or object
dtype) or vectors (what ``.emb.encode()`` returns: a fixed-size list of float32, or any list of
floats). Missing values (None, NaN, pd.NA) are NA in every result, in the same row.

Example:
    >>> import polyemb.pandas
    >>> df["vector"] = df["title"].emb.encode()
    >>> df["title"].emb.search("climate policy", k=5)
    >>> orders.emb.join(products, left_on="description", right_on="name", k=1)
    >>> df["body"].emb.search("refund policy", k=5, chunks=True)   # the best passage's offsets
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.errors import InvalidInputError, MissingDependencyError

try:
    import pandas as pd
except ImportError as exc:  # pragma: no cover - exercised only without pandas
    raise MissingDependencyError("polyemb.pandas needs pandas: pip install 'polyemb[pandas]'") from exc

from polyemb import _pandas_dtypes
from polyemb._pandas_chunks import chunk_frame, join_by_chunks, search_by_chunks
from polyemb._pandas_columns import align as _align
from polyemb._pandas_columns import assemble_join as _assemble
from polyemb._pandas_columns import column as _column
from polyemb._pandas_columns import holds_vectors as _holds_vectors
from polyemb._pandas_columns import is_vector_dtype as _is_vector_dtype
from polyemb._pandas_columns import labelled as _labelled
from polyemb._pandas_columns import not_a_text as _not_a_text
from polyemb._pandas_columns import series_name as _name
from polyemb._pandas_columns import vector_series as _vector_series
from polyemb._pandas_columns import vectors_of as _vectors_of
from polyemb.arrow import vector_model, vector_type
from polyemb.embedder import Embedder, check_same_model
from polyemb.encoder import Encoder
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.near_duplicates import check_threshold, connected_groups, first_of_groups, pairs_above
from polyemb.options import JoinHow, Keep, Method, Score, check_keep
from polyemb.scores import added_columns
from polyemb.similarity import check_join, cosine_of_valid, join_rows, query_row, top_k
from polyemb.store import VectorStore, embedder_for
from polyemb.store.stored import default_encoder_or

__all__ = ["EmbDataFrameAccessor", "EmbSeriesAccessor", "vector_dtype"]


def vector_dtype(dim: int, model: str | None = None) -> pd.ArrowDtype:
    """The dtype of a vector Series: ``pd.ArrowDtype(pa.list_(pa.float32(), dim))``.

    ``model`` (a provenance) rides in the type's metadata; the dtype equals the plain one.
    """
    return pd.ArrowDtype(vector_type(dim, model))


class EmbSeriesAccessor:
    """``Series.emb``: encode texts, compare, search and find near-duplicates.

    Every method takes ``encoder=`` (default :func:`polyemb.default_encoder`) and ``store=`` (a
    :class:`~polyemb.store.VectorStore`: texts it already holds for the model are not embedded
    again, new ones are stored), plus ``batch_size`` and ``show_progress`` for encoding.
    """

    def __init__(self, series: pd.Series) -> None:
        self._s = series

    # ------------------------------------------------------------------ conversions

    def _texts(self) -> list[str | None]:
        series = self._s
        na = series.isna().to_numpy(dtype=bool)
        values = series.to_numpy(dtype=object, copy=True)
        values[na] = None
        return values.tolist()  # type: ignore[no-any-return]

    def _vectors(
        self, embedder: Callable[[], Embedder], **options: Any
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        """``(matrix, valid, model)``: encoded if the Series holds texts, read if vectors."""
        series = self._s
        if _holds_vectors(series):
            return _vectors_of(series)
        matrix, valid = _encode_labelled(embedder(), series, self._texts(), **options)
        return matrix, valid, embedder().provenance

    def to_numpy(self) -> np.ndarray:
        """A vector Series as an ``(n, dim)`` float32 matrix; NA rows are rows of NaN.

        Raises:
            InvalidInputError: The Series holds texts (call ``.emb.encode()`` first).
        """
        if not _holds_vectors(self._s):
            raise InvalidInputError(f"{_name(self._s)} holds texts, not vectors; call .emb.encode() first")
        matrix, valid, _ = _vectors_of(self._s)
        if not valid.all():
            matrix[~valid] = np.nan
        return matrix

    @property
    def model(self) -> str | None:
        """The provenance of the model that made a vector Series, None if unknown."""
        return vector_model(self._s.dtype.pyarrow_dtype) if _is_vector_dtype(self._s.dtype) else None

    # ------------------------------------------------------------------ methods

    def encode(
        self,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.Series:
        """Encode a Series of texts.

        Returns:
            A Series of dtype ``pd.ArrowDtype(pa.list_(pa.float32(), dim))`` with the same index
            and name; NA where the text was NA. The dtype records the model's provenance
            (``.emb.model``), so vectors of two models are never compared by mistake.

        Raises:
            InvalidInputError: A value that is neither a str nor NA (the message names its label).
        """
        if _holds_vectors(self._s):
            raise InvalidInputError(f"{_name(self._s)} already holds vectors")
        embedder = _lazy_embedder(encoder, store)
        matrix, valid, model = self._vectors(embedder, batch_size=batch_size, show_progress=show_progress)
        return _vector_series(matrix, valid, self._s.index, self._s.name, model)

    def similarity(
        self,
        other: pd.Series | str,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.Series:
        """Cosine similarity of each row with ``other``'s row of the same label, or with one text.

        Args:
            other: A Series of texts or vectors with the same index labels (in any order, as
                pandas arithmetic aligns them; labels that do not match are an error), or one
                str compared with every row.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            batch_size: Passed to ``encode``.
            show_progress: Passed to ``encode``.

        Returns:
            A float64 Series with this Series' index; NaN where either side is NA.

        Raises:
            ModelMismatchError: The two sides' vectors come from different models.
        """
        options = {"batch_size": batch_size, "show_progress": show_progress}
        series = self._s
        embedder = _lazy_embedder(encoder, store)
        if isinstance(other, str):
            left, valid, model = self._vectors(embedder, **options)
            check_same_model(model, embedder().provenance, "similarity")
            query = embedder().encode([other])
            scores, ok = cosine_of_valid(left, valid, query, np.ones(1, dtype=bool))
        elif isinstance(other, pd.Series):
            left, left_valid, right, right_valid = _both_sides(
                series, _align(series, other), embedder, "similarity", options
            )
            scores, ok = cosine_of_valid(left, left_valid, right, right_valid)
        else:
            raise InvalidInputError(f"other must be a Series or a str, got {type(other).__name__}")
        return pd.Series(scores.astype(np.float64), index=series.index, name="similarity").where(ok)

    def search(
        self,
        query: str | np.ndarray | list[float],
        k: int = 10,
        *,
        chunks: bool = False,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.DataFrame:
        """The ``k`` rows most similar to ``query``, best first.

        Args:
            query: A text (encoded with the encoder) or a vector.
            k: How many rows.
            chunks: Score each text by its best window (:meth:`chunks`) instead of its one
                vector, and return that window's ``start`` and ``end``: passage search over long texts.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to); windows are not stored.
            batch_size: Passed to ``encode``.
            show_progress: Passed to ``encode``.

        Returns:
            A DataFrame indexed by the matching rows' labels, with the row's value (text or
            vector, in a column named as the Series) and a ``score`` column, then with ``chunks``
            the best window's ``start`` and ``end``. NA rows never match.

        Raises:
            InvalidInputError: The query is neither a text nor one vector of finite numbers
                (:func:`polyemb.similarity.query_row`), or the Series is named as one of those
                other columns.
        """
        column = self._s.name if self._s.name is not None else "value"
        taken = ("score", "start", "end") if chunks else ("score",)
        if column in taken:
            raise InvalidInputError(
                f"search names its columns {column!r} (the Series' name) and {', '.join(taken)}: "
                f"rename the Series first"
            )
        checked = query if isinstance(query, str) else query_row(query)  # before any encoding
        embedder = _lazy_embedder(encoder, store)
        options = {"batch_size": batch_size, "show_progress": show_progress}
        added: dict[str, Any] = {}
        if chunks:
            query_vector = _query_vector(checked, embedder, embedder().provenance)
            rows, scores, added = search_by_chunks(self._chunk_table(encoder, **options), query_vector, k)
        else:
            matrix, valid, model = self._vectors(embedder, **options)
            query_vector = _query_vector(checked, embedder, model)
            positions = np.flatnonzero(valid)
            indices, best = top_k(query_vector, matrix[positions], k)
            rows, scores = positions[indices[0]], best[0]
        found_rows = self._s.iloc[rows]
        return pd.DataFrame(
            {column: found_rows.array, "score": scores.astype(np.float64), **added},
            index=found_rows.index,
        )

    def chunks(
        self,
        *,
        stride: int | None = None,
        encoder: Encoder | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.DataFrame:
        """Every window of every text, one row each (:meth:`polyemb.Encoder.encode_chunks`).

        Args:
            stride: Tokens consecutive windows share; None: the encoder's.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            batch_size: Windows per forward pass.
            show_progress: A progress bar.

        Returns:
            A DataFrame indexed by each window's text's label (repeated), with ``chunk`` (0, 1,
            ... within the text), ``start`` and ``end`` (character offsets: ``text[start:end]`` is
            the window's text), ``tokens`` (special tokens included) and ``vector``. NA texts have
            no rows; a text that fits in one window is one row, its ``long_texts="truncate"`` vector.

        Example:
            >>> parts = df["body"].emb.chunks()
            >>> parts.join(df["body"]).apply(lambda r: r.body[r.start : r.end], axis=1)
        """
        table = self._chunk_table(encoder, stride=stride, batch_size=batch_size, show_progress=show_progress)
        return chunk_frame(table, self._s.index)

    def _chunk_table(self, encoder: Encoder | None, **options: Any) -> pa.Table:
        """The chunk table of a Series of texts, errors naming the row."""
        if _holds_vectors(self._s):
            raise InvalidInputError(f"{_name(self._s)} holds vectors; chunks are cut from texts")
        texts = self._texts()
        model = default_encoder_or(encoder)
        return _labelled(self._s, texts, lambda: model.encode_chunks(texts, **options))

    def near_duplicates(
        self,
        threshold: float = 0.9,
        *,
        groups: bool = False,
        keep: Keep | None = None,
        method: Method | Ivf = "exact",
        report: IvfReport | None = None,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> pd.DataFrame | pd.Series:
        """Rows whose cosine similarity is at least ``threshold``.

        With a multilingual model, translations of one sentence count as near-duplicates.

        Args:
            threshold: Cosine similarity, -1 to 1.
            groups: Return a group id per row instead of the pairs.
            keep: ``"first"``: return this Series without its near-duplicates: each group (rows
                linked by a chain of pairs) keeps only its first row.
            method: ``"exact"`` (every pair compared); ``"ivf"`` or :class:`polyemb.ivf.Ivf`
                settings: each row is compared with the rows of its nearest lists (approximate;
                ``Ivf(recall=0.99)`` calibrates how many on a sample).
            report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            batch_size: Passed to ``encode``.
            show_progress: Passed to ``encode``.

        Returns:
            Pairs (default): a DataFrame with one row per pair, best first: ``left`` and
            ``right`` (index labels, ``left`` the earlier row), ``score``, and for texts
            ``left_text`` and ``right_text``. Groups: an Int64 Series on this index, the same id
            for rows linked by a chain of near-duplicate pairs, NA for rows in no pair. Keep:
            this Series, less the rows dropped (NA rows are kept).

        Example:
            >>> df["title"].emb.near_duplicates(0.9, keep="first", method="ivf")
        """
        check_threshold(threshold)
        method_settings(method)
        if keep is not None:
            check_keep(keep)
            if groups:
                raise InvalidInputError("give groups=True or keep=, not both")
        embedder = _lazy_embedder(encoder, store)
        matrix, valid, _ = self._vectors(embedder, batch_size=batch_size, show_progress=show_progress)
        positions = np.flatnonzero(valid)
        i, j, scores = pairs_above(matrix[positions], threshold, method=method, report=report)
        left, right = positions[i], positions[j]
        if groups or keep is not None:
            ids = np.full(len(self._s), -1, dtype=np.int64)
            ids[positions] = connected_groups(len(positions), i, j)
            if keep is not None:
                return self._s[first_of_groups(ids)]
            result = pd.Series(ids, index=self._s.index, name="group", dtype="Int64")
            return result.mask(result < 0)
        index = self._s.index
        pairs = {"left": index[left], "right": index[right], "score": scores.astype(np.float64)}
        frame = pd.DataFrame(pairs)
        if not _holds_vectors(self._s):
            values = self._s.to_numpy(dtype=object)
            frame["left_text"] = values[left]
            frame["right_text"] = values[right]
        return frame


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
        right_on = left_on if right_on is None else right_on
        options = {"batch_size": batch_size, "show_progress": show_progress}
        left_column, right_column = _column(self._df, left_on, "left"), _column(right, right_on, "right")
        embedder = _lazy_embedder(encoder, store)
        if chunks:
            if method_settings(method) is not None:
                raise InvalidInputError("chunks=True scores every window exactly: use method='exact' with it")
            lvec, lvalid, model = left_column.emb._vectors(embedder, **options)
            table = right_column.emb._chunk_table(encoder, **options)
            check_same_model(model, default_encoder_or(encoder).provenance, "join")
            left_rows, right_rows, added = join_by_chunks(
                lvec, lvalid, table, k, names, threshold=threshold, how=how, score=score
            )
            return _assemble(self._df, right, left_rows, right_rows, added, suffixes)
        lvec, lvalid, rvec, rvalid = _both_sides(left_column, right_column, embedder, "join", options)
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
        return _assemble(self._df, right, rows.left, rows.right, added, suffixes)


# ---------------------------------------------------------------------- helpers


def _lazy_embedder(encoder: Encoder | None, store: VectorStore | None) -> Callable[[], Embedder]:
    """The embedder to encode with, made on first call (a Series of vectors needs none)."""
    return functools.cache(lambda: embedder_for(encoder, store))


def _both_sides(
    left: pd.Series, right: pd.Series, embedder: Callable[[], Embedder], what: str, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(left matrix, left valid, right matrix, right valid)`` of two Series of texts or vectors.

    Two Series of texts go through one encode call, so a text found on both sides is encoded once.

    Raises:
        ModelMismatchError: The two sides' vectors come from different models.
    """
    if not _holds_vectors(left) and not _holds_vectors(right):
        both = pd.concat([left, right], ignore_index=True)
        try:
            matrix, valid, _ = both.emb._vectors(embedder, **options)
        except InvalidInputError as exc:
            if exc.position is None:
                raise
            # Named by the side it came from and its label there, not by a place in ``both``.
            side, position = (
                (left, exc.position) if exc.position < len(left) else (right, exc.position - len(left))
            )
            raise _not_a_text(side, position, side.iloc[position]) from exc
        return matrix[: len(left)], valid[: len(left)], matrix[len(left) :], valid[len(left) :]
    lvec, lvalid, left_model = left.emb._vectors(embedder, **options)
    rvec, rvalid, right_model = right.emb._vectors(embedder, **options)
    check_same_model(left_model, right_model, what)
    return lvec, lvalid, rvec, rvalid


def _encode_labelled(
    embedder: Embedder, series: pd.Series, texts: list[str | None], **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    return _labelled(series, texts, lambda: embedder.encode_nullable(texts, **options))


def _query_vector(query: str | np.ndarray, embedder: Callable[[], Embedder], model: str | None) -> np.ndarray:
    """A search's query as one row: a text encoded (by the model of the rows searched), or a checked row."""
    if not isinstance(query, str):
        return query
    check_same_model(model, embedder().provenance, "search")
    return embedder().encode([query])


_pandas_dtypes.install()
pd.api.extensions.register_series_accessor("emb")(EmbSeriesAccessor)
pd.api.extensions.register_dataframe_accessor("emb")(EmbDataFrameAccessor)
