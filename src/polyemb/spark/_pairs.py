"""Spark's pair rows and the exact top-k of one side against another, block by block.

What :mod:`polyemb.spark.join` (exact and ivf), :mod:`polyemb.spark.ivf` and
:mod:`polyemb.spark.dedup` share: the internal column names of pair rows, the schema of pair rows
for a score, keeping a DataFrame, and the exact top-k (a small corpus shipped with the task, a
large one in blocks co-grouped with chunks of the queries; see :mod:`polyemb.spark.join`), of
rows or of rows of windows (``chunks=True``: a row per window, scored by max-sim per id).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from polyemb.errors import InvalidInputError
from polyemb.maxsim import top_chunk_pairs
from polyemb.options import Score
from polyemb.scores import score_spec
from polyemb.similarity import NEIGHBOURS, top_pairs

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# The pair rows' columns: internal names, so that no user column can clash with them.
PAIR_L, PAIR_R, PAIR_SCORE = "__polyemb_l", "__polyemb_r", "__polyemb_score"
# The column of each row's neighbourhood (r) beside its id and vector, for margin and CSLS.
R_COLUMN = "r"
# The pair rows' offsets of the best right window (joins with chunks=True).
PAIR_START, PAIR_END = "__polyemb_start", "__polyemb_end"


def kept(frame: DataFrame) -> DataFrame:
    """``frame`` persisted (memory, then disk) and computed now."""
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    return frame


def exact_neighbourhood(
    queries: DataFrame, corpus: DataFrame, block_rows: int, broadcast_mb: float
) -> DataFrame:
    """``(id, r)``: each query row's mean cosine with its 4 nearest corpus rows."""
    nearest = exact_pairs(queries, corpus, NEIGHBOURS, "cosine", block_rows, broadcast_mb)
    return nearest.groupBy(F.col(PAIR_L).alias("id")).agg(F.avg(PAIR_SCORE).cast("float").alias(R_COLUMN))


def pair_column(name: str) -> str:
    """The pair rows' name for a column the score adds (see :data:`polyemb.scores.SCORE_TABLE`)."""
    return f"__polyemb_added_{name}"


def pair_schema(score: Score, offsets: bool = False) -> str:
    """The pair rows' schema: left id, right id, score, each column the score adds (and offsets)."""
    added = "".join(f", {pair_column(name)} float" for name in score_spec(score).columns)
    windows = f", {PAIR_START} int, {PAIR_END} int" if offsets else ""
    return f"{PAIR_L} long, {PAIR_R} long, {PAIR_SCORE} float{added}{windows}"


def corpus_shape(queries: DataFrame, corpus: DataFrame) -> tuple[int, int]:
    """``(rows, vector length)`` of ``corpus``, once both sides are known to have one length.

    Raises:
        InvalidInputError: Vectors of different lengths (both sides must come from one model).
    """
    count, dim, smallest = corpus.agg(F.count("*"), F.max(F.size("vector")), F.min(F.size("vector"))).first()
    low, high = queries.agg(F.min(F.size("vector")), F.max(F.size("vector"))).first()
    lengths = {dim, smallest, low, high} - {None}
    if len(lengths) > 1:
        raise InvalidInputError(
            f"the vectors to join have different lengths {sorted(lengths)}: both sides must come "
            "from one model"
        )
    return int(count), int(dim or high or 0)


def exact_pairs(
    queries: DataFrame, corpus: DataFrame, k: int, score: Score, block_rows: int, broadcast_mb: float
) -> DataFrame:
    """``(lid, rid, score, cosine)``: the exact top-k corpus rows of every query row.

    ``queries`` and ``corpus`` have columns ``id``, ``vector`` (and ``r`` for margin and CSLS); a
    side of windows has a row per window (``id, window, start, end, vector``), scored by max-sim
    per id, and a corpus of windows adds the best window's offsets to each pair.
    """
    count, dim = corpus_shape(queries, corpus)
    if not count:
        return queries.sparkSession.createDataFrame([], pair_schema(score, "start" in corpus.columns))
    if count * dim * 4 <= broadcast_mb * 2**20:
        return _broadcast_pairs(queries, corpus, k, score, block_rows)
    return _blocked_pairs(queries, corpus, k, score, block_rows, count)


@dataclass(frozen=True)
class VectorBlock:
    """A pandas batch of ``id, vector[, r]`` (or of windows) in id (then window) order, as numpy.

    In id order, so that the core's "lower index first" among equal scores is "earlier row".
    """

    ids: np.ndarray  # int64 id of each vector
    matrix: np.ndarray  # float32 vectors
    r: np.ndarray | None  # one per id, in id order; None without neighbourhoods
    start: np.ndarray | None  # a side of windows: each window's offsets; None for plain rows
    end: np.ndarray | None

    @classmethod
    def of(cls, rows: pd.DataFrame) -> VectorBlock:
        windowed = "window" in rows.columns
        rows = rows.sort_values(["id", "window"] if windowed else "id", kind="stable")
        ids = rows["id"].to_numpy(dtype=np.int64)
        matrix = (
            np.stack(rows["vector"].to_numpy()).astype(np.float32, copy=False)
            if len(rows)
            else np.zeros((0, 0), np.float32)
        )
        column = rows.get(R_COLUMN)
        first = np.unique(ids, return_index=True)[1]
        r = column.to_numpy(dtype=np.float32)[first] if column is not None else None
        if not windowed:
            return cls(ids, matrix, r, None, None)
        return cls(ids, matrix, r, rows["start"].to_numpy(np.int32), rows["end"].to_numpy(np.int32))


def _score(left: VectorBlock, right: VectorBlock, k: int, score: Score) -> pd.DataFrame:
    """One (left batch, right block) pair: its top-k by the core, as pair rows."""
    if left.start is None and right.start is None:
        pairs = top_pairs(left.matrix, right.matrix, k, score=score, neighbourhoods=(left.r, right.r))
        columns = {PAIR_L: left.ids[pairs.query], PAIR_R: right.ids[pairs.corpus], PAIR_SCORE: pairs.score}
        columns.update({pair_column(name): values for name, values in pairs.columns.items()})
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
    columns = {PAIR_L: by_chunk.query, PAIR_R: by_chunk.corpus, PAIR_SCORE: by_chunk.score}
    columns.update({pair_column(name): values for name, values in by_chunk.columns.items()})
    if right.start is not None and right.end is not None:
        chosen = by_chunk.corpus_chunk
        columns.update({PAIR_START: right.start[chosen], PAIR_END: right.end[chosen]})
    return pd.DataFrame(columns)


def _broadcast_pairs(
    queries: DataFrame, corpus: DataFrame, k: int, score: Score, block_rows: int
) -> DataFrame:
    """A small corpus, shipped with the task: each batch of queries scored against all of it.

    Queries that are rows of windows go in groups of whole rows (by a hash of the id, about
    ``block_rows`` windows a group): an Arrow batch may end inside a row, and a row's best
    window must be chosen among all of its windows.
    """
    right = VectorBlock.of(corpus.toArrow().to_pandas())
    schema = pair_schema(score, right.start is not None)
    if "window" not in queries.columns:

        def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for batch in batches:
                yield _score(VectorBlock.of(batch), right, k, score)

        return queries.mapInPandas(run, schema)

    groups = max(1, -(-queries.count() // block_rows))
    keyed = queries.withColumn("__group", F.pmod(F.xxhash64("id"), F.lit(groups)).cast("int"))

    def run_group(rows: pd.DataFrame) -> pd.DataFrame:
        return _score(VectorBlock.of(rows), right, k, score)

    return keyed.groupBy("__group").applyInPandas(run_group, schema)


def _blocked_pairs(
    queries: DataFrame, corpus: DataFrame, k: int, score: Score, block_rows: int, count: int
) -> DataFrame:
    """A large corpus in blocks: every (query chunk, corpus block) pair meets in one group.

    Rows go to blocks by their id, so the windows of one row stay in one block.
    """
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
        return _score(VectorBlock.of(query_rows), VectorBlock.of(corpus_rows), k, score)

    partial = (
        query_keys.groupBy("__chunk", "__block")
        .cogroup(corpus_keys.groupBy("__chunk", "__block"))
        .applyInPandas(run, pair_schema(score, "start" in corpus.columns))
    )
    # Merge the blocks' partial lists: the k best per left row, ties to the earlier right row.
    order = Window.partitionBy(PAIR_L).orderBy(F.col(PAIR_SCORE).desc(), F.col(PAIR_R).asc())
    return partial.withColumn("__rank", F.row_number().over(order)).where(F.col("__rank") <= k).drop("__rank")
