"""``Series.emb``: encode, compare, search and find near-duplicates, as ``Series.emb`` in pandas.

Also the two similarity functions that the expressions of :mod:`polyemb.polars._expr` run on
each batch, so that a Series and an expression give one answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from polyemb.chunks import chunks_of_table
from polyemb.embedder import check_same_model
from polyemb.errors import InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.maxsim import top_chunk_pairs
from polyemb.near_duplicates import check_threshold, connected_groups, first_of_groups, pairs_above
from polyemb.options import Keep, Method, check_keep
from polyemb.polars._chunks import chunk_frame, chunk_table, offsets
from polyemb.polars._columns import (
    EncodeOptions,
    Encoding,
    both_sides,
    describe,
    encode_series,
    float_series,
    kind_of,
    matrix_of,
)
from polyemb.similarity import cosine_of_valid, query_row, top_k

if TYPE_CHECKING:
    from typing import Unpack

    from polyemb.encoder import Encoder
    from polyemb.store import VectorStore

__all__ = ["EmbSeriesNamespace", "paired_similarity", "similarity_to_text"]


def similarity_to_text(series: pl.Series, text: str, encoding: Encoding, name: str) -> pl.Series:
    """Cosine of each row of ``series`` (texts or vectors) with one text; NULL where the row is.

    Raises:
        ModelMismatchError: ``series`` holds vectors of another model than the encoder's.
    """
    matrix, valid, model = matrix_of(series, encoding)
    check_same_model(model, encoding.embedder.provenance, "similarity")
    return float_series(name, *cosine_of_valid(matrix, valid, encoding.query(text), np.ones(1, dtype=bool)))


def paired_similarity(left: pl.Series, right: pl.Series, encoding: Encoding, name: str) -> pl.Series:
    """Cosine of the rows at the same position of two columns; a one-row side meets every row.

    Raises:
        InvalidInputError: The columns have different lengths (and neither is one row).
        ModelMismatchError: The two sides' vectors come from different models.
    """
    if len(left) != len(right) and 1 not in (len(left), len(right)):
        raise InvalidInputError(
            f"similarity compares rows at the same position, but {describe(left)} has {len(left)} "
            f"rows and {describe(right)} has {len(right)}"
        )
    lvec, lvalid, rvec, rvalid = both_sides(left, right, encoding, "similarity")
    return float_series(name, *cosine_of_valid(lvec, lvalid, rvec, rvalid))


class EmbSeriesNamespace:
    """``Series.emb``: the methods of pandas' ``Series.emb``, with Polars types.

    A Series holds texts (String, Categorical or Enum) or vectors (what ``.emb.encode()``
    returns, ``Array(Float32, dim)``, or any Array or List of floats); NULL rows are NULL in every
    result. Every method takes ``encoder=`` (default :func:`polyemb.default_encoder`), ``store=``
    (a :class:`~polyemb.store.VectorStore`) and the encoding options of :class:`EncodeOptions`
    (``batch_size``, ``show_progress``).
    """

    def __init__(self, series: pl.Series) -> None:
        self._s = series

    def encode(
        self,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.Series:
        """Encode a Series of texts.

        Args:
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            A Series of ``pl.Array(pl.Float32, dim)`` with the same name; NULL where the text was
            NULL. The vectors come from the core's matrix through Arrow, without a copy.

        Raises:
            InvalidInputError: The Series holds vectors already, or neither texts nor vectors.

        Example:
            >>> pl.Series("title", ["a cat", None]).emb.encode()
        """
        return encode_series(self._s, Encoding(encoder, store, options))

    def to_numpy(self) -> np.ndarray:
        """A vector Series as an ``(n, dim)`` float32 matrix; NULL rows are rows of NaN.

        Raises:
            InvalidInputError: The Series holds texts (call ``.emb.encode()`` first).
        """
        if kind_of(self._s) == "texts":
            raise InvalidInputError(f"{describe(self._s)} holds texts, not vectors; call .emb.encode() first")
        matrix, valid, _ = matrix_of(self._s, Encoding(None, None, {}))
        if not valid.all():
            matrix[~valid] = np.nan
        return matrix

    def similarity(
        self,
        other: pl.Series | str,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.Series:
        """Cosine similarity of each row with ``other``'s row at the same position, or with one text.

        Args:
            other: A Series of texts or vectors of the same length (or of one row, compared with
                every row), or one str.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            A Float64 Series named ``similarity``; NULL where either side is NULL.

        Raises:
            ModelMismatchError: The two sides' vectors come from different models.

        Example:
            >>> df["title"].emb.similarity("interest rates")
        """
        encoding = Encoding(encoder, store, options)
        if isinstance(other, str):
            return similarity_to_text(self._s, other, encoding, "similarity")
        if isinstance(other, pl.Series):
            return paired_similarity(self._s, other, encoding, "similarity")
        raise InvalidInputError(f"other must be a Series or a str, got {type(other).__name__}")

    def search(
        self,
        query: str | np.ndarray | list[float],
        k: int = 10,
        *,
        chunks: bool = False,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.DataFrame:
        """The ``k`` rows most similar to ``query``, best first.

        Args:
            query: A text (encoded with the encoder) or a vector.
            k: How many rows.
            chunks: Score each text by its best window (:meth:`chunks`, max-sim) instead of its
                one vector, and add that window's ``start`` and ``end`` (character offsets).
                Texts only; the store is not used for the windows.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            A DataFrame with the matching rows' positions (``index``, as ``with_row_index``
            numbers them), their values (in a column named as the Series, else ``value``) and a
            Float64 ``score`` (then ``start`` and ``end`` with ``chunks``). NULL rows never match.

        Raises:
            InvalidInputError: The query is neither a text nor one vector of finite numbers
                (:func:`polyemb.similarity.query_row`), or the Series is named as one of the
                other columns.

        Example:
            >>> df["title"].emb.search("frog species", k=5)
        """
        encoding = Encoding(encoder, store, options)
        column = self._s.name or "value"
        taken = ("index", "score", "start", "end") if chunks else ("index", "score")
        if column in taken:
            raise InvalidInputError(
                f"search names its columns {column!r} (the Series' name) and {', '.join(taken)}: "
                f"rename the Series first"
            )
        checked = query if isinstance(query, str) else query_row(query)  # before any encoding
        if chunks:
            found = chunks_of_table(chunk_table(self._s, encoder, options))
            query_vector = encoding.query(checked) if isinstance(checked, str) else checked
            pairs = top_chunk_pairs(query_vector, found.vectors, k, corpus_rows=found.row)
            rows, score_values = pairs.corpus, pairs.score
            added = offsets(found, pairs.corpus_chunk)
        else:
            matrix, valid, model = matrix_of(self._s, encoding)
            if isinstance(checked, str):
                check_same_model(model, encoding.embedder.provenance, "search")
                query_vector = encoding.query(checked)
            else:
                query_vector = checked
            positions = np.flatnonzero(valid)
            indices, scores = top_k(query_vector, matrix[positions], k)
            rows, score_values, added = positions[indices[0]], scores[0], []
        return pl.DataFrame(
            [
                pl.Series("index", rows, dtype=pl.get_index_type()),
                self._s.gather(rows).alias(column),
                pl.Series("score", score_values.astype(np.float64)),
                *added,
            ]
        )

    def chunks(
        self,
        *,
        stride: int | None = None,
        encoder: Encoder | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.DataFrame:
        """Every window of every text, one row each (:meth:`polyemb.Encoder.encode_chunks`).

        Args:
            stride: Tokens consecutive windows share; None: the encoder's.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            **options: Passed to ``encode_chunks`` (``batch_size``, ``show_progress``).

        Returns:
            ``index`` (the text's row position, repeated), ``chunk`` (0, 1, ... within the text),
            ``start`` and ``end`` (character offsets: ``text[start:end]`` is the window's text),
            ``tokens`` and ``vector`` (``pl.Array(pl.Float32, dim)``, unit length). A NULL text
            has no rows; an empty one has one.

        Example:
            >>> parts = df["body"].emb.chunks()
        """
        Encoding(encoder, None, options)  # a misspelt option fails here, as everywhere
        return chunk_frame(chunk_table(self._s, encoder, options, stride))

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
        **options: Unpack[EncodeOptions],
    ) -> pl.DataFrame | pl.Series:
        """Rows whose cosine similarity is at least ``threshold``.

        With a multilingual model, translations of one sentence count as near-duplicates.

        Args:
            threshold: Cosine similarity, -1 to 1.
            groups: Return a group id per row instead of the pairs.
            keep: ``"first"``: return this Series without its near-duplicates: each group (rows
                linked by a chain of pairs) keeps only its first row.
            method: ``"exact"`` (every pair compared); ``"ivf"`` or :class:`polyemb.ivf.Ivf`
                settings: each row is compared with the rows of its nearest lists only
                (approximate; ``Ivf(recall=0.99)`` calibrates how many). As pandas'.
            report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            Pairs (default): a DataFrame with one row per pair, best first: ``left`` and
            ``right`` (row positions, ``left`` the earlier row), ``score``, and for texts
            ``left_text`` and ``right_text``. Groups: an Int64 Series named ``group``, the same id
            for rows linked by a chain of near-duplicate pairs, NULL for rows in no pair. Keep:
            the Series less all but the first row of each group.

        Example:
            >>> df["title"].emb.near_duplicates(0.9, groups=True)
        """
        check_threshold(threshold)
        method_settings(method)
        if keep is not None:
            check_keep(keep)
            if groups:
                raise InvalidInputError("give groups=True or keep=, not both")
        matrix, valid, _ = matrix_of(self._s, Encoding(encoder, store, options))
        positions = np.flatnonzero(valid)
        i, j, scores = pairs_above(matrix[positions], threshold, method=method, report=report)
        if groups or keep is not None:
            ids = np.full(len(self._s), -1, dtype=np.int64)
            ids[positions] = connected_groups(len(positions), i, j)
            if keep is not None:
                return self._s.gather(np.flatnonzero(first_of_groups(ids)))
            return pl.Series("group", pa.array(ids, mask=ids < 0))
        left, right = positions[i], positions[j]
        index = pl.get_index_type()
        pairs = [
            pl.Series("left", left, dtype=index),
            pl.Series("right", right, dtype=index),
            pl.Series("score", scores.astype(np.float64)),
        ]
        if kind_of(self._s) == "texts":
            pairs += [self._s.gather(left).alias("left_text"), self._s.gather(right).alias("right_text")]
        return pl.DataFrame(pairs)
