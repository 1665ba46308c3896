"""``Series.emb``: encode, compare, search, cut into windows and find near-duplicates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from polyemb.arrow import vector_model
from polyemb.embedder import Embedder, check_same_model
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.near_duplicates import check_threshold, connected_groups, first_of_groups, pairs_above
from polyemb.options import Keep, Method, check_keep
from polyemb.pandas._chunks import chunk_frame, chunk_table, search_by_chunks
from polyemb.pandas._columns import (
    align,
    both_sides,
    holds_vectors,
    is_vector_dtype,
    lazy_embedder,
    matrix_of,
    series_name,
    vector_series,
    vectors_of,
)
from polyemb.similarity import cosine_of_valid, query_row, top_k
from polyemb.store import VectorStore

__all__ = ["EmbSeriesAccessor"]


class EmbSeriesAccessor:
    """``Series.emb``: encode texts, compare, search and find near-duplicates.

    Every method takes ``encoder=`` (default :func:`polyemb.default_encoder`) and ``store=`` (a
    :class:`~polyemb.store.VectorStore`: texts it already holds for the model are not embedded
    again, new ones are stored), plus ``batch_size`` and ``show_progress`` for encoding.
    """

    def __init__(self, series: pd.Series) -> None:
        self._s = series

    def to_numpy(self) -> np.ndarray:
        """A vector Series as an ``(n, dim)`` float32 matrix; NA rows are rows of NaN.

        Raises:
            InvalidInputError: The Series holds texts (call ``.emb.encode()`` first).
        """
        if not holds_vectors(self._s):
            raise InvalidInputError(
                f"{series_name(self._s)} holds texts, not vectors; call .emb.encode() first"
            )
        matrix, valid, _ = vectors_of(self._s)
        if not valid.all():
            matrix[~valid] = np.nan
        return matrix

    @property
    def model(self) -> str | None:
        """The provenance of the model that made a vector Series, None if unknown."""
        return vector_model(self._s.dtype.pyarrow_dtype) if is_vector_dtype(self._s.dtype) else None

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
            (``.emb.model``), so two columns of two models' vectors are not compared by mistake
            (a column that ``pd.concat`` fills from two models keeps the first one's).

        Raises:
            InvalidInputError: A value that is neither a str nor NA (the message names its label).
        """
        if holds_vectors(self._s):
            raise InvalidInputError(f"{series_name(self._s)} already holds vectors")
        embedder = lazy_embedder(encoder, store)
        options = {"batch_size": batch_size, "show_progress": show_progress}
        matrix, valid, model = matrix_of(self._s, embedder, **options)
        return vector_series(matrix, valid, self._s.index, self._s.name, model)

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
        embedder = lazy_embedder(encoder, store)
        if isinstance(other, str):
            left, valid, model = matrix_of(self._s, embedder, **options)
            check_same_model(model, embedder().provenance, "similarity")
            query = embedder().encode([other])
            scores, ok = cosine_of_valid(left, valid, query, np.ones(1, dtype=bool))
        elif isinstance(other, pd.Series):
            left, left_valid, right, right_valid = both_sides(
                series, align(series, other), embedder, "similarity", options
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
            vector, in a column named as the Series, ``value`` if it has no name) and a ``score``
            column, then with ``chunks`` the best window's ``start`` and ``end``. NA rows never match.

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
        embedder = lazy_embedder(encoder, store)
        options = {"batch_size": batch_size, "show_progress": show_progress}
        added: dict[str, Any] = {}
        if chunks:
            query_vector = _query_vector(checked, embedder, embedder().provenance)
            rows, scores, added = search_by_chunks(chunk_table(self._s, encoder, **options), query_vector, k)
        else:
            matrix, valid, model = matrix_of(self._s, embedder, **options)
            query_vector = _query_vector(checked, embedder, model)
            positions = np.flatnonzero(valid)
            indices, best = top_k(query_vector, matrix[positions], k)
            rows, scores = positions[indices[0]], best[0]
        found = self._s.iloc[rows].to_frame(column)  # the values keep their dtype (object: any str)
        found["score"] = scores.astype(np.float64)
        for name, values in added.items():
            found[name] = values
        return found

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
            A DataFrame indexed by each window's text's label (repeated), with ``row`` (the
            text's position in the Series: unique where labels repeat), ``chunk`` (0, 1, ...
            within the text), ``start`` and ``end`` (character offsets: ``text[start:end]`` is the
            window's text), ``tokens`` (special tokens included) and ``vector``. NA texts have no
            rows; a text that fits in one window is one row, its ``long_texts="truncate"`` vector.

        Example:
            >>> parts = df["body"].emb.chunks()
            >>> texts = df["body"].to_numpy()[parts["row"]]
            >>> [text[start:end] for text, start, end in zip(texts, parts["start"], parts["end"])]
        """
        options = {"stride": stride, "batch_size": batch_size, "show_progress": show_progress}
        return chunk_frame(chunk_table(self._s, encoder, **options), self._s.index)

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
        embedder = lazy_embedder(encoder, store)
        matrix, valid, _ = matrix_of(self._s, embedder, batch_size=batch_size, show_progress=show_progress)
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
        if not holds_vectors(self._s):  # the texts keep their dtype (object: any str)
            frame["left_text"] = self._s.iloc[left].reset_index(drop=True)
            frame["right_text"] = self._s.iloc[right].reset_index(drop=True)
        return frame


def _query_vector(query: str | np.ndarray, embedder: Callable[[], Embedder], model: str | None) -> np.ndarray:
    """A search's query as one row: a text encoded (by the model of the rows searched), or a checked row."""
    if not isinstance(query, str):
        return query
    check_same_model(model, embedder().provenance, "search")
    return embedder().encode([query])
