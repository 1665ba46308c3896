"""The pandas UDFs: ``embed``, ``semantic_similarity`` and ``embed_chunks``.

``embed(text) -> array<float>``, ``semantic_similarity(a, b) -> float`` and
``embed_chunks(text) -> array<struct<start, end, tokens, vector>>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

from polyemb.arrow import texts_from_arrow
from polyemb.batching import check_batch_size
from polyemb.chunks import Chunks, chunks_of_table
from polyemb.errors import InvalidInputError
from polyemb.options import Delivery, LongTexts, Precision, check_sql_prefix
from polyemb.similarity import paired_cosines
from polyemb.spark.delivery import ModelSource, model_source, worker_encoder

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "CHUNKS_TYPE",
    "col_named",
    "embed_chunks_udf",
    "embed_udf",
    "has_column",
    "name_fold",
    "register",
    "similarity_udf",
]

CHUNKS_TYPE = ArrayType(
    StructType(
        [
            StructField("start", IntegerType()),
            StructField("end", IntegerType()),
            StructField("tokens", IntegerType()),
            StructField("vector", ArrayType(FloatType())),
        ]
    )
)
"""What ``embed_chunks`` returns: each window of the text, to ``explode``."""


def col_named(name: str) -> Any:
    """A column by its exact name: dots and spaces in it are not struct paths."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def name_fold(spark: SparkSession) -> Callable[[str], str]:
    """How the session tells column names apart: case-folded, unless ``spark.sql.caseSensitive`` is true.

    Spark resolves ``Score`` and ``score`` as one name by default, so a check that they differ
    must fold them too (else the new column is an ambiguous reference, or replaces the other).
    """
    sensitive = str(spark.conf.get("spark.sql.caseSensitive", "false")).strip().lower() == "true"
    return str if sensitive else str.casefold


def has_column(df: DataFrame, name: str) -> bool:
    """Whether ``df`` has a column that its session takes ``name`` for (:func:`name_fold`)."""
    fold = name_fold(df.sparkSession)
    return fold(name) in {fold(column) for column in df.columns}


def embed_udf(
    model: str | os.PathLike[str] | None = None,
    *,
    spark: SparkSession | None = None,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> Callable[..., Any]:
    """A pandas UDF ``embed(text) -> array<float>``: unit vectors, NULL in -> NULL out.

    Args:
        model: Hub id or folder; None: ``$POLYEMB_MODEL`` on the driver, else the default model.
        spark: The session whose executors run it; None: the active session.
        delivery: ``"auto"``, ``"broadcast"``, ``"artifact"`` or ``"path"`` (see
            :mod:`polyemb.spark.delivery`): auto ships the model's files, by broadcast on classic
            Spark and as a session artifact on Spark Connect.
        batch_size: Texts per forward pass on the workers; None: by token budget.
        precision: ``"auto"`` (fp16 on GPU tasks, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``,
            ``"int8"`` (CPU executors with AVX2 only; fastest with VNNI).
        max_seq_length: Tokens per text; None: the model's.
        revision: Hub revision.
        long_texts: ``"truncate"`` or ``"mean"``, as for :func:`polyemb.load`.
        stride: Tokens consecutive windows share, as for :func:`polyemb.load`.

    Example:
        >>> from pyspark.sql import functions as F
        >>> embed = polyemb.spark.embed_udf("/models/mstsb")
        >>> df.withColumn("vector", embed(F.col("title")))
    """
    source = model_source(
        spark,
        model,
        delivery=delivery,
        precision=precision,
        max_seq_length=max_seq_length,
        revision=revision,
        long_texts=long_texts,
        stride=stride,
    )
    return embed_with(source, batch_size)


def embed_chunks_udf(
    model: str | os.PathLike[str] | None = None,
    *,
    spark: SparkSession | None = None,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    stride: int | None = None,
) -> Callable[..., Any]:
    """A pandas UDF ``embed_chunks(text)``: every window of the text (:data:`CHUNKS_TYPE`).

    As :meth:`polyemb.Encoder.encode_chunks`: ``start`` and ``end`` are character offsets
    (``substring(text, start + 1, end - start)`` is a window's text), ``tokens`` what the model
    read, ``vector`` the window's unit vector. NULL in, NULL out; ``F.explode`` gives a row per
    window. Arguments as for :func:`embed_udf`; ``stride``: tokens consecutive windows share
    (None: a quarter of the window).

    Example:
        >>> chunks = polyemb.spark.embed_chunks_udf("/models/mstsb")
        >>> df.select("id", F.posexplode(chunks("body")).alias("chunk", "c"))
    """
    source = model_source(
        spark,
        model,
        delivery=delivery,
        precision=precision,
        max_seq_length=max_seq_length,
        revision=revision,
        stride=stride,
    )
    return chunks_with(source, batch_size)


def similarity_udf(
    model: str | os.PathLike[str] | None = None,
    *,
    spark: SparkSession | None = None,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> Callable[..., Any]:
    """A pandas UDF ``semantic_similarity(a, b) -> float``: the cosine of two texts' vectors.

    Either argument may be a literal (``F.lit("query")``): it is encoded once per batch. NULL if
    either side is NULL. Arguments as for :func:`embed_udf`.
    """
    source = model_source(
        spark,
        model,
        delivery=delivery,
        precision=precision,
        max_seq_length=max_seq_length,
        revision=revision,
        long_texts=long_texts,
        stride=stride,
    )
    return _similarity_with(source, batch_size)


def register(
    spark: SparkSession,
    model: str | os.PathLike[str] | None = None,
    *,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    prefix: str = "",
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> None:
    """Register ``embed``, ``semantic_similarity`` and ``embed_chunks`` for Spark SQL (behind ``prefix``).

    The model is shipped once for all functions. Arguments as for :func:`embed_udf`; works on
    classic and Spark Connect sessions alike.

    Example:
        >>> polyemb.spark.register(spark, "/models/mstsb")
        >>> spark.sql("SELECT id, embed(title) AS v FROM articles")
    """
    check_sql_prefix(prefix)
    source = model_source(
        spark,
        model,
        delivery=delivery,
        precision=precision,
        max_seq_length=max_seq_length,
        revision=revision,
        long_texts=long_texts,
        stride=stride,
    )
    spark.udf.register(f"{prefix}embed", embed_with(source, batch_size))
    spark.udf.register(f"{prefix}semantic_similarity", _similarity_with(source, batch_size))
    spark.udf.register(f"{prefix}embed_chunks", chunks_with(source, batch_size))


# ---------------------------------------------------------------------- worker side


def _texts(series: pd.Series, column: str) -> list[str | None]:
    try:
        array = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"{column} holds non-text values: {exc}") from exc
    return texts_from_arrow(array, name=column)


def _list_series(vectors: np.ndarray, valid: np.ndarray) -> pd.Series:
    """Vectors as the object Series Spark turns into array<float>: row views, None where NULL."""
    rows: list[np.ndarray | None] = list(vectors)  # views into the matrix, no copies
    for position in np.flatnonzero(~valid).tolist():
        rows[position] = None
    return pd.Series(rows, dtype=object)


def _chunk_series(found: Chunks, tokens: np.ndarray, rows: int) -> pd.Series:
    """Chunks as the object Series Spark turns into :data:`CHUNKS_TYPE`: None for a NULL text.

    Spark converts an array of structs from Python values (it maps an Arrow-backed Series value
    by value, and its NA is not None), so each window is a dict; its vector a view into the matrix.
    """
    out: list[list[dict[str, Any]] | None] = [None] * rows
    starts, ends, counts = found.start.tolist(), found.end.tolist(), tokens.tolist()
    for window, row in enumerate(found.row.tolist()):
        chunk = {
            "start": starts[window],
            "end": ends[window],
            "tokens": counts[window],
            "vector": found.vectors[window],
        }
        windows = out[row]
        if windows is None:
            out[row] = [chunk]
        else:
            windows.append(chunk)
    return pd.Series(out, dtype=object)


def embed_with(source: ModelSource, batch_size: int | None) -> Callable[..., Any]:
    """The ``embed`` pandas UDF for a model already shipped (errors name the column)."""
    batch_size = check_batch_size(batch_size)  # on the driver: not in every task, after the model shipped

    def make(labels: tuple[str, ...]) -> Callable[..., Any]:
        @pandas_udf(ArrayType(FloatType()))  # type: ignore[untyped-decorator]
        def embed(texts: pd.Series) -> pd.Series:
            items = _texts(texts, f"embed(): {labels[0]}")  # before the model: a type error costs no load
            encoder = worker_encoder(source)
            vectors, valid = encoder.encode_nullable(items, batch_size=batch_size, show_progress=False)
            return _list_series(vectors, valid)

        return embed  # type: ignore[no-any-return]

    return _naming_columns(make, 1)


def chunks_with(source: ModelSource, batch_size: int | None) -> Callable[..., Any]:
    """The ``embed_chunks`` pandas UDF for a model already shipped (the source's stride)."""
    batch_size = check_batch_size(batch_size)  # on the driver: not in every task, after the model shipped

    def make(labels: tuple[str, ...]) -> Callable[..., Any]:
        @pandas_udf(CHUNKS_TYPE)  # type: ignore[untyped-decorator]
        def embed_chunks(texts: pd.Series) -> pd.Series:
            items = _texts(texts, f"embed_chunks(): {labels[0]}")
            encoder = worker_encoder(source)
            table = encoder.encode_chunks(items, batch_size=batch_size, show_progress=False)
            return _chunk_series(chunks_of_table(table), table.column("tokens").to_numpy(), len(items))

        return embed_chunks  # type: ignore[no-any-return]

    return _naming_columns(make, 1)


def _similarity_with(source: ModelSource, batch_size: int | None) -> Callable[..., Any]:
    batch_size = check_batch_size(batch_size)  # on the driver: not in every task, after the model shipped

    def make(labels: tuple[str, ...]) -> Callable[..., Any]:
        @pandas_udf(FloatType())  # type: ignore[untyped-decorator]
        def semantic_similarity(left: pd.Series, right: pd.Series) -> pd.Series:
            a = _texts(left, f"semantic_similarity(): {labels[0]}")
            b = _texts(right, f"semantic_similarity(): {labels[1]}")
            encoder = worker_encoder(source)
            vectors, valid = encoder.encode_nullable(a + b, batch_size=batch_size, show_progress=False)
            scores, ok = paired_cosines(vectors, valid, len(a))
            return pd.Series(scores).where(ok)  # NaN, which Spark reads as NULL

        return semantic_similarity  # type: ignore[no-any-return]

    return _naming_columns(make, 2)


def _naming_columns(make: Callable[[tuple[str, ...]], Callable[..., Any]], arity: int) -> Callable[..., Any]:
    """A pandas UDF whose errors name the columns it was called on.

    Inside a pandas UDF a column arrives unnamed, so each call builds the UDF again with the
    names of its columns for the error messages. The result keeps the pandas UDF's attributes,
    so ``spark.udf.register`` takes it like any pandas UDF (SQL errors name the argument).
    """
    generic = make(tuple(f"argument {i + 1}" for i in range(arity)))

    def call(*columns: Any) -> Any:
        return make(tuple(_column_label(column) for column in columns))(*columns)

    for attribute in (
        "func",
        "returnType",
        "evalType",
        "deterministic",
        "asNondeterministic",
        "__name__",
        "__doc__",
    ):
        setattr(call, attribute, getattr(generic, attribute))
    return call


def _column_label(column: Any) -> str:
    if isinstance(column, str):
        return f"column {column!r}"
    text = str(column)  # Column<'title'> or an expression
    return f"column {text[7:-1]}" if text.startswith("Column<") else f"argument {text}"
