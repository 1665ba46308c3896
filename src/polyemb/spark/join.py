"""Semantic top-k joins in Spark: exact, block by block, with matrix products on the workers.

Left x right rows never exist in Spark. The right side's vectors are cut into blocks:

- **small** (at most ``broadcast_mb`` of vectors): one block, shipped with the task (in the
  function Spark sends to every worker) and scored against each Arrow batch of left rows: no
  shuffle of the left side at all;
- **large**: blocks of about ``block_rows`` rows (rows go to blocks by a hash of their id),
  spread over partitions. Left rows are cut into chunks of the same size; every (chunk, block)
  pair meets in one group of a co-grouped ``applyInPandas``, so a worker holds one chunk and one
  block at a time; each pair's partial top-k lists are merged per left row. Each left row is
  shuffled once per right block and each right row once per left chunk, so the shuffle grows as
  ``rows x other side's rows / block_rows``: make ``block_rows`` as large as a worker's memory allows.

Both use the core's :func:`polyemb.similarity.top_pairs` (:func:`polyemb.maxsim.top_chunk_pairs`
with ``chunks=True``, whose right rows are their windows, a block never splitting a row), so
Spark, pandas and DuckDB give the same pairs and scores on the same vectors; which columns a
score adds comes from the core's table (:data:`polyemb.scores.SCORE_TABLE`). Ties go to the
earlier right row (its position in the right DataFrame as Spark reads it). The exact scoring is
in :mod:`polyemb.spark._pairs`; ``method="ivf"`` in :mod:`polyemb.spark.ivf`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from polyemb.arrow import MODEL_METADATA
from polyemb.embedder import check_same_model
from polyemb.encoder import describe
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.maxsim import CHUNK_COLUMNS
from polyemb.options import (
    Delivery,
    JoinHow,
    LongTexts,
    Method,
    Precision,
    Score,
    check_mib,
    check_positive_int,
)
from polyemb.scores import added_columns, join_names, score_spec
from polyemb.similarity import check_join
from polyemb.spark._pairs import (
    PAIR_END,
    PAIR_L,
    PAIR_R,
    PAIR_SCORE,
    PAIR_START,
    exact_neighbourhood,
    exact_pairs,
    kept,
    pair_column,
)
from polyemb.spark.delivery import active_session, model_source
from polyemb.spark.ivf import ivf_top_pairs
from polyemb.spark.udfs import chunks_with, col_named, embed_with, name_fold

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["semantic_join"]

# Row ids and vectors added to the user's rows: internal names, so that no user column can
# clash with them.
LEFT_ID, RIGHT_ID, VECTOR = "__polyemb_lid", "__polyemb_rid", "__polyemb_vec"
# With chunks=True: the right rows' chunks (a list of windows per row).
CHUNKS = "__polyemb_chunks"
BLOCK_ROWS = 65_536
BROADCAST_MB = 64.0


def semantic_join(
    left: DataFrame,
    right: DataFrame,
    left_on: str,
    right_on: str | None = None,
    *,
    k: int = 1,
    threshold: float | None = None,
    how: JoinHow = "inner",
    score: Score = "cosine",
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
    model: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    suffixes: tuple[str, str] = ("_x", "_y"),
    score_column: str = "score",
    block_rows: int = BLOCK_ROWS,
    broadcast_mb: float = BROADCAST_MB,
    spark: SparkSession | None = None,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    chunks: bool = False,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> DataFrame:
    """Join each left row with its ``k`` best-scoring right rows, block by block.

    Args:
        left: The left DataFrame.
        right: The right DataFrame.
        left_on: A text column (embedded here) or a vector column (``array<float>``) of ``left``.
        right_on: The same of ``right``; default ``left_on``.
        k: Matches per left row.
        threshold: Keep only matches whose score is at least this.
        how: ``"inner"`` drops left rows without a match (a NULL key, or none above the
            threshold); ``"left"`` keeps them once, with NULL right columns and score.
        score: ``"cosine"``; or ``"margin"`` / ``"csls"``, which score a pair relative to both
            rows' 4 nearest neighbours on the other side (best across languages; these add a
            ``cosine`` column). As :meth:`DataFrame.emb.join <polyemb.pandas.EmbDataFrameAccessor.join>`.
        method: ``"exact"`` (every pair scored); ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings:
            each left row is scored against the right rows of its nearest lists, with centroids
            trained on the driver (see :mod:`polyemb.spark.ivf`); the same pairs as pandas'.
        report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
        model: For text columns: hub id or folder; None: ``$POLYEMB_MODEL``, else the default.
        store: For text columns: a vector store folder (see :func:`embed_incremental`): only
            texts it lacks are embedded.
        suffixes: Added to column names found in both DataFrames.
        score_column: Name of the score column.
        block_rows: Rows per block of a large right side (and per chunk of the left side): what
            one worker holds of each at a time.
        broadcast_mb: A right side with at most this many MiB of vectors is shipped whole with
            the task instead.
        spark: The session; None: the active one.
        delivery: How executors get the model, for text columns.
        batch_size: Texts per forward pass, for text columns.
        precision: For text columns.
        max_seq_length: For text columns.
        revision: For text columns.
        chunks: Score each right text by its best window (max-sim over ``embed_chunks``) and add
            that window's ``start`` and ``end`` in the right text; ``right_on`` must hold texts.
            As :meth:`DataFrame.emb.join <polyemb.pandas.EmbDataFrameAccessor.join>`. Exact only.
        long_texts: For text columns, as for :func:`polyemb.load`.
        stride: For text columns and ``chunks``, as for :func:`polyemb.load`.

    Returns:
        Left columns, right columns, then the score (and ``cosine`` for margin and CSLS; and
        ``start``, ``end`` with ``chunks``). Row order, as with any Spark join, is not kept.

    Raises:
        ColumnNotFoundError: A key column is missing.
        ModelMismatchError: Two vector columns made by different models.
        InvalidInputError: An option that means nothing (k, threshold NaN, block_rows,
            broadcast_mb, how, score, method), or suffixes that leave two columns of one name.

    Example:
        >>> polyemb.spark.semantic_join(orders, products, "description", "name", k=3, score="margin")
    """
    cut = check_join(k, threshold, how, score, method)
    k, block_rows = check_positive_int("k", k), check_positive_int("block_rows", block_rows)
    broadcast_mb = check_mib("broadcast_mb", broadcast_mb, zero=True)
    settings = method_settings(method)
    if chunks and settings is not None:
        raise InvalidInputError("chunks=True scores every window exactly: use method='exact' with it")
    added = added_columns(score, score_column) + (CHUNK_COLUMNS if chunks else ())
    right_on = left_on if right_on is None else right_on
    for frame, column, side in ((left, left_on, "left"), (right, right_on, "right")):
        if column not in frame.columns:
            raise ColumnNotFoundError.from_missing(column, frame.columns, f"the {side} DataFrame")
    session = active_session(spark)
    embed = Embedding(
        session,
        model,
        store,
        delivery,
        batch_size,
        precision,
        max_seq_length,
        revision,
        long_texts=long_texts,
        stride=stride,
    )
    left_rows, left_model = embed(left.withColumn(LEFT_ID, F.monotonically_increasing_id()), left_on)
    right_ids = right.withColumn(RIGHT_ID, F.monotonically_increasing_id())
    right_rows, right_model = embed.chunked(right_ids, right_on) if chunks else embed(right_ids, right_on)
    check_same_model(left_model, right_model, "semantic_join")
    # Keep the vectors (texts are embedded once), whatever the plan reads them for. A lost
    # partition is recomputed from its lineage.
    left_rows, right_rows = kept(left_rows), kept(right_rows)
    lvec = left_rows.where(F.col(VECTOR).isNotNull()).select(
        F.col(LEFT_ID).alias("id"), F.col(VECTOR).alias("vector")
    )
    rvec = (
        _windows(right_rows)
        if chunks
        else right_rows.where(F.col(VECTOR).isNotNull()).select(
            F.col(RIGHT_ID).alias("id"), F.col(VECTOR).alias("vector")
        )
    )
    if settings is not None:
        report = report if report is not None else IvfReport()
        pairs = ivf_top_pairs(lvec, rvec, k, score, settings, report, block_rows, broadcast_mb)
    else:
        if score_spec(score).neighbourhoods:
            # r(x) and r(y): each row's mean cosine with its 4 nearest rows on the other side.
            left_r = exact_neighbourhood(lvec, rvec, block_rows, broadcast_mb)
            right_r = exact_neighbourhood(rvec, lvec, block_rows, broadcast_mb)
            lvec = kept(lvec.join(left_r, "id"))
            rvec = kept(rvec.join(right_r, "id"))
        pairs = exact_pairs(lvec, rvec, k, score, block_rows, broadcast_mb)
    if cut is not None:
        pairs = pairs.where(F.col(PAIR_SCORE) >= cut)
    return assemble(left_rows, right_rows, pairs, how, added, suffixes)


# ---------------------------------------------------------------------- vectors


class Embedding:
    """Turns a key column into vectors in ``VECTOR``: embedded if texts (the model shipped once)."""

    def __init__(
        self,
        spark: SparkSession,
        model: str | os.PathLike[str] | None,
        store: str | os.PathLike[str] | None,
        delivery: Delivery,
        batch_size: int | None,
        precision: Precision,
        max_seq_length: int | None,
        revision: str | None,
        *,
        long_texts: LongTexts = "truncate",
        stride: int | None = None,
    ) -> None:
        self.spark, self.model, self.store, self.delivery = spark, model, store, delivery
        self.batch_size, self.precision = batch_size, precision
        self.max_seq_length, self.revision = max_seq_length, revision
        self.long_texts, self.stride = long_texts, stride
        self._udf: Any = None
        self._provenance: str | None = None
        self._source: Any = None

    def __call__(self, frame: DataFrame, column: str) -> tuple[DataFrame, str | None]:
        """``frame`` plus ``VECTOR``, and the vectors' provenance (None if unknown)."""
        kind = frame.schema[column].dataType.simpleString()
        if kind in ("array<float>", "array<double>"):
            provenance = frame.schema[column].metadata.get(MODEL_METADATA.decode())
            return frame.withColumn(VECTOR, col_named(column).cast("array<float>")), provenance
        if kind != "string":
            raise InvalidInputError(
                f"column {column!r} is {kind}: give a text (string) or vector (array<float>) column"
            )
        if self.store is not None:
            from polyemb.spark.store import embed_incremental

            embedded = embed_incremental(
                frame,
                column,
                self.store,
                self.model,
                spark=self.spark,
                vector_column=VECTOR,
                delivery=self.delivery,
                batch_size=self.batch_size,
                precision="fp32" if self.precision == "auto" else self.precision,
                max_seq_length=self.max_seq_length,
                revision=self.revision,
                long_texts=self.long_texts,
                stride=self.stride,
            )
            return embedded, embedded.schema[VECTOR].metadata.get(MODEL_METADATA.decode())
        if self._udf is None:
            self._udf = embed_with(self._shipped(), self.batch_size)
        return frame.withColumn(VECTOR, self._udf(col_named(column))), self._provenance

    def chunked(self, frame: DataFrame, column: str) -> tuple[DataFrame, str | None]:
        """``frame`` plus ``CHUNKS``, each text's windows (``embed_chunks``), and their provenance."""
        kind = frame.schema[column].dataType.simpleString()
        if kind != "string":
            raise InvalidInputError(f"column {column!r} is {kind}: chunks=True needs a text (string) column")
        chunks = chunks_with(self._shipped(), self.batch_size)
        return frame.withColumn(CHUNKS, chunks(col_named(column))), self._provenance

    def _shipped(self) -> Any:
        """The model shipped to the executors (once), its provenance noted."""
        if self._source is None:
            self._source = model_source(
                self.spark,
                self.model,
                delivery=self.delivery,
                precision=self.precision,
                max_seq_length=self.max_seq_length,
                revision=self.revision,
                long_texts=self.long_texts,
                stride=self.stride,
            )
            spec = describe(self.model, max_seq_length=self.max_seq_length, revision=self.revision)
            self._provenance = spec.provenance
        return self._source


def _windows(rows: DataFrame) -> DataFrame:
    """``(id, window, start, end, vector)``: the right rows' windows, one row each."""
    exploded = rows.where(F.col(CHUNKS).isNotNull()).select(
        F.col(RIGHT_ID).alias("id"), F.posexplode(CHUNKS).alias("window", "c")
    )
    return exploded.select("id", "window", "c.start", "c.end", F.col("c.vector").alias("vector"))


# ---------------------------------------------------------------------- assembly


def assemble(
    left_rows: DataFrame,
    right_rows: DataFrame,
    pairs: DataFrame,
    how: JoinHow,
    added: tuple[str, ...],
    suffixes: tuple[str, str],
) -> DataFrame:
    """Left columns, right columns, then ``added`` (the score, the score's own), named as ``merge`` does."""
    left_cols = [c for c in left_rows.columns if c not in (LEFT_ID, VECTOR)]
    right_cols = [c for c in right_rows.columns if c not in (RIGHT_ID, VECTOR, CHUNKS)]
    fold = name_fold(left_rows.sparkSession)
    left_names, right_names = join_names(left_cols, right_cols, suffixes, added, fold=fold)
    left_part = left_rows.select(
        F.col(LEFT_ID).alias(PAIR_L), *[col_named(c).alias(n) for c, n in left_names.items()]
    )
    right_part = right_rows.select(
        F.col(RIGHT_ID).alias(PAIR_R), *[col_named(c).alias(n) for c, n in right_names.items()]
    )
    joined = left_part.join(pairs.join(right_part, PAIR_R, "inner"), PAIR_L, how)
    score_column, *own = added
    offsets = {"start": PAIR_START, "end": PAIR_END} if CHUNKS in right_rows.columns else {}
    own = [name for name in own if name not in offsets]
    scores = [F.col(PAIR_SCORE).alias(score_column), *[F.col(pair_column(name)).alias(name) for name in own]]
    scores += [F.col(column).alias(name) for name, column in offsets.items()]
    return joined.select(*[col_named(n) for n in [*left_names.values(), *right_names.values()]], *scores)
