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
earlier right row (its position in the right DataFrame as Spark reads it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from polyemb.arrow import MODEL_METADATA
from polyemb.embedder import check_same_model
from polyemb.encoder import describe
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.maxsim import CHUNK_COLUMNS, top_chunk_pairs
from polyemb.options import Delivery, JoinHow, LongTexts, Precision, Score, check_positive_int
from polyemb.scores import added_columns, score_spec
from polyemb.similarity import NEIGHBOURS, check_join, top_pairs
from polyemb.spark.delivery import active_session, model_source
from polyemb.spark.udfs import chunks_with, col_named, embed_with

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["semantic_join"]

# Row ids and vectors added to the user's rows, and the pair rows' columns: internal names, so
# that no user column can clash with them.
_LID, _RID, _VEC = "__polyemb_lid", "__polyemb_rid", "__polyemb_vec"
_L, _R, _SCORE = "__polyemb_l", "__polyemb_r", "__polyemb_score"
# The column of each row's neighbourhood (r) beside its id and vector, for margin and CSLS.
_NEIGHBOURHOOD = "r"
# With chunks=True: the right rows' chunks, and the pair rows' offsets of the best right window.
_CHUNKS, _START, _END = "__polyemb_chunks", "__polyemb_start", "__polyemb_end"
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
    """Join each left row with its ``k`` best-scoring right rows, exactly, block by block.

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
            As :meth:`DataFrame.emb.join <polyemb.pandas.EmbDataFrameAccessor.join>`.
        long_texts: For text columns, as for :func:`polyemb.load`.
        stride: For text columns and ``chunks``, as for :func:`polyemb.load`.

    Returns:
        Left columns, right columns, then the score (and ``cosine`` for margin and CSLS; and
        ``start``, ``end`` with ``chunks``). Row order, as with any Spark join, is not kept.

    Raises:
        ColumnNotFoundError: A key column is missing.
        ModelMismatchError: Two vector columns made by different models.

    Example:
        >>> polyemb.spark.semantic_join(orders, products, "description", "name", k=3, score="margin")
    """
    check_join(k, threshold, how, score)
    check_positive_int("block_rows", block_rows)
    added = added_columns(score, score_column) + (CHUNK_COLUMNS if chunks else ())
    right_on = left_on if right_on is None else right_on
    for frame, column, side in ((left, left_on, "left"), (right, right_on, "right")):
        if column not in frame.columns:
            raise ColumnNotFoundError.from_missing(column, frame.columns, f"the {side} DataFrame")
    session = active_session(spark)
    embed = _Embedding(
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
    left_rows, left_model = embed(left.withColumn(_LID, F.monotonically_increasing_id()), left_on)
    right_ids = right.withColumn(_RID, F.monotonically_increasing_id())
    right_rows, right_model = embed.chunked(right_ids, right_on) if chunks else embed(right_ids, right_on)
    check_same_model(left_model, right_model, "semantic_join")
    # Keep the vectors (texts are embedded once), whatever the plan reads them for. A lost
    # partition is recomputed from its lineage.
    left_rows, right_rows = _kept(left_rows), _kept(right_rows)
    lvec = left_rows.where(F.col(_VEC).isNotNull()).select(
        F.col(_LID).alias("id"), F.col(_VEC).alias("vector")
    )
    rvec = (
        _windows(right_rows)
        if chunks
        else right_rows.where(F.col(_VEC).isNotNull()).select(
            F.col(_RID).alias("id"), F.col(_VEC).alias("vector")
        )
    )
    if score_spec(score).neighbourhoods:
        # r(x) and r(y): each row's mean cosine with its 4 nearest rows on the other side.
        left_r = _neighbourhood(lvec, rvec, block_rows, broadcast_mb)
        right_r = _neighbourhood(rvec, lvec, block_rows, broadcast_mb)
        lvec = _kept(lvec.join(left_r, "id"))
        rvec = _kept(rvec.join(right_r, "id"))
    pairs = _top_pairs(lvec, rvec, k, score, block_rows, broadcast_mb)
    if threshold is not None:
        pairs = pairs.where(F.col(_SCORE) >= threshold)
    return _assemble(left_rows, right_rows, pairs, how, added, suffixes)


# ---------------------------------------------------------------------- vectors


class _Embedding:
    """Turns a key column into vectors in ``_VEC``: embedded if texts (the model shipped once)."""

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
        """``frame`` plus ``_VEC``, and the vectors' provenance (None if unknown)."""
        kind = frame.schema[column].dataType.simpleString()
        if kind in ("array<float>", "array<double>"):
            provenance = frame.schema[column].metadata.get(MODEL_METADATA.decode())
            return frame.withColumn(_VEC, col_named(column).cast("array<float>")), provenance
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
                vector_column=_VEC,
                delivery=self.delivery,
                batch_size=self.batch_size,
                precision="fp32" if self.precision == "auto" else self.precision,
                max_seq_length=self.max_seq_length,
                revision=self.revision,
                long_texts=self.long_texts,
                stride=self.stride,
            )
            return embedded, embedded.schema[_VEC].metadata.get(MODEL_METADATA.decode())
        if self._udf is None:
            self._udf = embed_with(self._shipped(), self.batch_size)
        return frame.withColumn(_VEC, self._udf(col_named(column))), self._provenance

    def chunked(self, frame: DataFrame, column: str) -> tuple[DataFrame, str | None]:
        """``frame`` plus ``_CHUNKS``, each text's windows (``embed_chunks``), and their provenance."""
        kind = frame.schema[column].dataType.simpleString()
        if kind != "string":
            raise InvalidInputError(f"column {column!r} is {kind}: chunks=True needs a text (string) column")
        chunks = chunks_with(self._shipped(), self.batch_size)
        return frame.withColumn(_CHUNKS, chunks(col_named(column))), self._provenance

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
    exploded = rows.where(F.col(_CHUNKS).isNotNull()).select(
        F.col(_RID).alias("id"), F.posexplode(_CHUNKS).alias("window", "c")
    )
    return exploded.select("id", "window", "c.start", "c.end", F.col("c.vector").alias("vector"))


def _kept(frame: DataFrame) -> DataFrame:
    """``frame`` persisted (memory, then disk) and computed now."""
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    return frame


# ---------------------------------------------------------------------- scoring


def _neighbourhood(queries: DataFrame, corpus: DataFrame, block_rows: int, broadcast_mb: float) -> DataFrame:
    """``(id, r)``: each query row's mean cosine with its 4 nearest corpus rows."""
    nearest = _top_pairs(queries, corpus, NEIGHBOURS, "cosine", block_rows, broadcast_mb)
    return nearest.groupBy(F.col(_L).alias("id")).agg(F.avg(_SCORE).cast("float").alias(_NEIGHBOURHOOD))


def _pair_column(name: str) -> str:
    """The pair rows' name for a column the score adds (see :data:`polyemb.scores.SCORE_TABLE`)."""
    return f"__polyemb_added_{name}"


def _pair_schema(score: Score, offsets: bool = False) -> str:
    """The pair rows' schema: left id, right id, score, each column the score adds (and offsets)."""
    added = "".join(f", {_pair_column(name)} float" for name in score_spec(score).columns)
    windows = f", {_START} int, {_END} int" if offsets else ""
    return f"{_L} long, {_R} long, {_SCORE} float{added}{windows}"


def _top_pairs(
    queries: DataFrame, corpus: DataFrame, k: int, score: Score, block_rows: int, broadcast_mb: float
) -> DataFrame:
    """``(lid, rid, score, cosine)``: the exact top-k corpus rows of every query row.

    ``queries`` and ``corpus`` have columns ``id``, ``vector`` (and ``r`` for margin and CSLS); a
    side of windows (:func:`_windows`) has a row per window, scored by max-sim per id.
    """
    count, dim, smallest = corpus.agg(F.count("*"), F.max(F.size("vector")), F.min(F.size("vector"))).first()
    if not count:
        return queries.sparkSession.createDataFrame([], _pair_schema(score, "start" in corpus.columns))
    low, high = queries.agg(F.min(F.size("vector")), F.max(F.size("vector"))).first()
    lengths = {dim, smallest, low, high} - {None}
    if len(lengths) > 1:
        raise InvalidInputError(
            f"the vectors to join have different lengths {sorted(lengths)}: both sides must come "
            "from one model"
        )
    if count * dim * 4 <= broadcast_mb * 2**20:
        return _broadcast_pairs(queries, corpus, k, score)
    return _blocked_pairs(queries, corpus, k, score, block_rows, count)


@dataclass(frozen=True)
class _Block:
    """A pandas batch of ``id, vector[, r]`` (or of windows) in id (then window) order, as numpy.

    In id order, so that the core's "lower index first" among equal scores is "earlier row".
    """

    ids: np.ndarray  # int64 id of each vector
    matrix: np.ndarray  # float32 vectors
    r: np.ndarray | None  # one per id, in id order; None without neighbourhoods
    start: np.ndarray | None  # a side of windows: each window's offsets; None for plain rows
    end: np.ndarray | None

    @classmethod
    def of(cls, rows: pd.DataFrame) -> _Block:
        windowed = "window" in rows.columns
        rows = rows.sort_values(["id", "window"] if windowed else "id", kind="stable")
        ids = rows["id"].to_numpy(dtype=np.int64)
        matrix = (
            np.stack(rows["vector"].to_numpy()).astype(np.float32, copy=False)
            if len(rows)
            else np.zeros((0, 0), np.float32)
        )
        column = rows.get(_NEIGHBOURHOOD)
        first = np.unique(ids, return_index=True)[1]
        r = column.to_numpy(dtype=np.float32)[first] if column is not None else None
        if not windowed:
            return cls(ids, matrix, r, None, None)
        return cls(ids, matrix, r, rows["start"].to_numpy(np.int32), rows["end"].to_numpy(np.int32))


def _score(left: _Block, right: _Block, k: int, score: Score) -> pd.DataFrame:
    """One (left batch, right block) pair: its top-k by the core's ``top_pairs``, as pair rows."""
    if left.start is None and right.start is None:
        pairs = top_pairs(left.matrix, right.matrix, k, score=score, neighbourhoods=(left.r, right.r))
        columns = {_L: left.ids[pairs.query], _R: right.ids[pairs.corpus], _SCORE: pairs.score}
        columns.update({_pair_column(name): values for name, values in pairs.columns.items()})
        return pd.DataFrame(columns)
    # Rows of windows (either side) by max-sim; the ids are the row labels.
    by_chunk = top_chunk_pairs(
        left.matrix,
        right.matrix,
        k,
        query_rows=left.ids,
        corpus_rows=right.ids,
        score=score,
        neighbourhoods=(left.r, right.r),
    )
    columns = {_L: by_chunk.query, _R: by_chunk.corpus, _SCORE: by_chunk.score}
    columns.update({_pair_column(name): values for name, values in by_chunk.columns.items()})
    if right.start is not None and right.end is not None:
        columns.update({_START: right.start[by_chunk.corpus_chunk], _END: right.end[by_chunk.corpus_chunk]})
    return pd.DataFrame(columns)


def _broadcast_pairs(queries: DataFrame, corpus: DataFrame, k: int, score: Score) -> DataFrame:
    """A small corpus, shipped with the task: each batch of queries scored against all of it."""
    right = _Block.of(corpus.toArrow().to_pandas())

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield _score(_Block.of(batch), right, k, score)

    return queries.mapInPandas(run, _pair_schema(score, right.start is not None))


def _blocked_pairs(
    queries: DataFrame, corpus: DataFrame, k: int, score: Score, block_rows: int, count: int
) -> DataFrame:
    """A large corpus in blocks: every (query chunk, corpus block) pair meets in one group."""
    blocks = max(1, -(-count // block_rows))
    chunks = max(1, -(-queries.count() // block_rows))
    # Spread rows over blocks and chunks by id; replicate each side once per block of the other.
    # Every key an int on both sides: pmod of a long is a long, a sequence of ints is ints, and
    # co-grouped keys of different types never meet.
    corpus_keys = corpus.withColumn(
        "__block", F.pmod(F.xxhash64("id"), F.lit(blocks)).cast("int")
    ).withColumn("__chunk", F.explode(F.sequence(F.lit(0), F.lit(chunks - 1))))
    query_keys = queries.withColumn(
        "__chunk", F.pmod(F.xxhash64("id"), F.lit(chunks)).cast("int")
    ).withColumn("__block", F.explode(F.sequence(F.lit(0), F.lit(blocks - 1))))

    def run(query_rows: pd.DataFrame, corpus_rows: pd.DataFrame) -> pd.DataFrame:
        return _score(_Block.of(query_rows), _Block.of(corpus_rows), k, score)

    partial = (
        query_keys.groupBy("__chunk", "__block")
        .cogroup(corpus_keys.groupBy("__chunk", "__block"))
        .applyInPandas(run, _pair_schema(score, "start" in corpus.columns))
    )
    # Merge the blocks' partial lists: the k best per left row, ties to the earlier right row.
    order = Window.partitionBy(_L).orderBy(F.col(_SCORE).desc(), F.col(_R).asc())
    return partial.withColumn("__rank", F.row_number().over(order)).where(F.col("__rank") <= k).drop("__rank")


# ---------------------------------------------------------------------- assembly


def _assemble(
    left_rows: DataFrame,
    right_rows: DataFrame,
    pairs: DataFrame,
    how: JoinHow,
    added: tuple[str, ...],
    suffixes: tuple[str, str],
) -> DataFrame:
    """Left columns, right columns, then ``added`` (the score, the score's own), named as ``merge`` does."""
    left_cols = [c for c in left_rows.columns if c not in (_LID, _VEC)]
    right_cols = [c for c in right_rows.columns if c not in (_RID, _VEC, _CHUNKS)]
    clash = set(left_cols) & set(right_cols)
    left_names = {c: f"{c}{suffixes[0]}" if c in clash else c for c in left_cols}
    right_names = {c: f"{c}{suffixes[1]}" if c in clash else c for c in right_cols}
    taken = [name for name in added if name in {*left_names.values(), *right_names.values()}]
    if taken:
        raise InvalidInputError(
            f"the joined tables already have a column {taken[0]!r}; choose another score_column"
        )
    left_part = left_rows.select(
        F.col(_LID).alias(_L), *[col_named(c).alias(n) for c, n in left_names.items()]
    )
    right_part = right_rows.select(
        F.col(_RID).alias(_R), *[col_named(c).alias(n) for c, n in right_names.items()]
    )
    joined = left_part.join(pairs.join(right_part, _R, "inner"), _L, how)
    score_column, *own = added
    offsets = {"start": _START, "end": _END} if _CHUNKS in right_rows.columns else {}
    own = [name for name in own if name not in offsets]
    scores = [F.col(_SCORE).alias(score_column), *[F.col(_pair_column(name)).alias(name) for name in own]]
    scores += [F.col(column).alias(name) for name, column in offsets.items()]
    return joined.select(*[col_named(n) for n in [*left_names.values(), *right_names.values()]], *scores)
