"""``Expr.emb``: encoding and similarity as Polars expressions, in eager and lazy queries alike.

Each expression is a ``map_batches`` marked elementwise (a row's vector depends on its text
alone), so Polars' streaming engine runs it batch by batch: a ``scan_parquet(...)
.with_columns(...).sink_parquet(...)`` query encodes a file of any size in bounded memory.
Like every Polars expression, the result keeps its input's name: ``.alias()`` renames it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from polyemb.errors import InvalidInputError
from polyemb.polars._columns import EncodeOptions, Encoding, encode_series
from polyemb.polars._series import paired_similarity, similarity_to_text

if TYPE_CHECKING:
    from typing import Unpack

    from polyemb.encoder import Encoder
    from polyemb.store import VectorStore

__all__ = ["EmbExprNamespace"]


class EmbExprNamespace:
    """``Expr.emb``: ``encode`` and ``similarity`` as expressions.

    Both take ``encoder=`` (default :func:`polyemb.default_encoder`), ``store=`` (a
    :class:`~polyemb.store.VectorStore`) and the encoding options of
    :class:`~polyemb.polars.EncodeOptions` (``batch_size``, ``show_progress``).
    """

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    def encode(
        self,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.Expr:
        """Encode texts into ``pl.Array(pl.Float32, dim)`` vectors, NULL where the text is NULL.

        The output type needs the model's dimension, so the encoder (by default the default
        one) is loaded when the expression is made, not when it runs.

        Args:
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            An expression; when it runs, a column of texts gives vectors, any other column an
            ``InvalidInputError`` naming it.

        Example:
            >>> df.with_columns(pl.col("title").emb.encode().alias("vector"))
        """
        encoding = Encoding(encoder, store, options)
        dim = encoding.embedder.dim

        def run(column: pl.Series) -> pl.Series:
            return encode_series(column, encoding)

        return self._expr.map_batches(run, return_dtype=pl.Array(pl.Float32, dim), is_elementwise=True)

    def similarity(
        self,
        other: str | pl.Expr,
        *,
        encoder: Encoder | None = None,
        store: VectorStore | None = None,
        **options: Unpack[EncodeOptions],
    ) -> pl.Expr:
        """Cosine similarity of each row with one text, or with another expression's row.

        Either side may hold texts or vectors: vectors are compared as they are, without
        encoding. Two text columns are encoded together, so a text on both sides is encoded once.

        Args:
            other: One str, or an expression of texts or vectors (``pl.col("w")``).
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            store: A vector store to look texts up in (and add new ones to).
            **options: Passed to ``encode`` (``batch_size``, ``show_progress``).

        Returns:
            A Float64 expression; NULL where either side is NULL.

        Raises:
            InvalidInputError: ``other`` is neither a str nor an expression.

        Example:
            >>> df.with_columns(pl.col("v").emb.similarity(pl.col("w")).alias("score"))
        """
        encoding = Encoding(encoder, store, options)
        if isinstance(other, str):
            text = other

            def to_text(column: pl.Series) -> pl.Series:
                return similarity_to_text(column, text, encoding, column.name)

            return self._expr.map_batches(to_text, return_dtype=pl.Float64, is_elementwise=True)
        if isinstance(other, pl.Expr):

            def paired(columns: Sequence[pl.Series]) -> pl.Series:
                left, right = columns
                return paired_similarity(left, right, encoding, left.name)

            return pl.map_batches([self._expr, other], paired, return_dtype=pl.Float64, is_elementwise=True)
        raise InvalidInputError(
            f"other must be a str or an expression (pl.col(...)), got {type(other).__name__}"
        )
