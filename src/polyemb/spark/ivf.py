"""Spark's ivf method: the core's cells and list-by-list search, spread over partitions.

- **Centroids** are trained on the driver by the core (:func:`polyemb.ivf.cells.train`) from the
  right rows of smallest key (:func:`~polyemb.ivf.cells.row_keys`), collected: the rows pandas,
  DuckDB and the command line train on, whatever the partitioning.
- **Lists**: each row's nearest centroid, a column added in one pass (the centroids ship with
  the task); the lists' sizes are counted once.
- **Search**: a small right side is shipped with the task and searched by each Arrow batch of
  left rows. A large one is split by list into about ``right rows / block_rows`` groups (a
  k-means of the centroids, so that a row's nearest lists mostly share a group): each right row
  goes to its list's group, each left row to the groups of its probed lists (about 2 to 4 at
  nprobe 8 to 64, against one copy per block for the exact join), in chunks, and each
  (group, chunk) cell runs the core's search on the pairs it holds. Every (left row, probed
  list) pair is scored in exactly one cell, so merging the cells' top-k per left row, as the
  exact join merges its blocks', gives the core's answer.

Near-duplicates (:mod:`polyemb.spark.dedup`) run the same cells with a threshold; their exact
method is the same cells with one list, cut into blocks by a hash of the row id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F

from polyemb.ivf import Ivf, IvfReport
from polyemb.ivf.calibrate import choose_nprobe, lists_needed, pair_lists_needed, recall_curve
from polyemb.ivf.cells import group_lists, nearest_lists, probe, row_keys, sortable_keys, train
from polyemb.ivf.index import choose_nlist, fixed_nprobe
from polyemb.ivf.search import search_above, search_top_k
from polyemb.ivf.settings import CALIBRATION_ROWS, TRAIN_ROWS_PER_LIST
from polyemb.options import Score
from polyemb.scores import PAIR_COLUMNS, score_spec
from polyemb.similarity import NEIGHBOURS, normalize_rows
from polyemb.spark._pairs import (
    PAIR_L,
    PAIR_R,
    PAIR_SCORE,
    R_COLUMN,
    corpus_shape,
    exact_pairs,
    kept,
    pair_column,
    pair_schema,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "Cells",
    "calibrated_pairs_nprobe",
    "cell_pairs_above",
    "exact_cells",
    "ivf_cells",
    "ivf_top_pairs",
    "with_lists",
]

# Columns added to rows of ``id, vector[, r]``: internal names.
_LIST, _GROUP, _PROBES, _GROUPS, _CHUNK, _KEY = (
    "__polyemb_list",
    "__polyemb_group",
    "__polyemb_probes",
    "__polyemb_groups",
    "__polyemb_chunk",
    "__polyemb_key",
)
_ABOVE_SCHEMA = f"{PAIR_L} long, {PAIR_R} long, {PAIR_SCORE} float"


@dataclass(frozen=True)
class Cells:
    """What the driver knows of the cells: centroids, how lists are grouped, and nprobe.

    Attributes:
        centroids: (nlist, dim) unit centroids; one zero centroid for the exact method.
        groups: The group of each list (which cells its rows go to).
        nprobe: Lists a row probes; 0 for the exact method (every row probes list 0).
        blocks: For the exact method, the blocks rows are hashed into; 0 for ivf.
    """

    centroids: np.ndarray
    groups: np.ndarray
    nprobe: int
    blocks: int = 0

    @property
    def dim(self) -> int:
        """The vectors' length."""
        return int(self.centroids.shape[1])

    @property
    def group_count(self) -> int:
        """Groups the rows are spread over (blocks, for the exact method)."""
        return max(self.blocks, int(self.groups.max(initial=0)) + 1)


# ---------------------------------------------------------------------- rows as arrays


def _unit(vectors: pd.Series, dim: int) -> np.ndarray:
    """A pandas column of vectors as unit float32 rows (the core's normalization)."""
    if not len(vectors):
        return np.zeros((0, dim), np.float32)
    return normalize_rows(np.stack(vectors.to_numpy()).astype(np.float32, copy=False))


def _padded(column: pd.Series) -> np.ndarray:
    """A pandas column of int arrays of varying length as one int64 matrix, -1 where shorter."""
    lengths = np.fromiter((len(row) for row in column), dtype=np.int64, count=len(column))
    matrix = np.full((len(column), int(lengths.max(initial=0))), -1, dtype=np.int64)
    if len(column):
        matrix[np.arange(matrix.shape[1])[None, :] < lengths[:, None]] = np.concatenate(column.to_numpy())
    return matrix


def _by_id(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in id order, so that the core's "lower row first" among equal scores is "earlier row"."""
    return rows.sort_values("id", kind="stable")


def _r(rows: pd.DataFrame) -> np.ndarray | None:
    column = rows.get(R_COLUMN)
    return None if column is None else column.to_numpy(dtype=np.float32)


# ---------------------------------------------------------------------- training


def _smallest_keys(frame: DataFrame, seed: int, count: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, unit vectors)`` of ``frame``'s ``count`` rows of smallest key, collected in key order."""

    def keyed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            unit = _unit(batch["vector"], dim)
            keys = sortable_keys(row_keys(unit, seed))
            yield pd.DataFrame({"id": batch["id"], _KEY: keys, "vector": list(unit)})

    rows = (
        frame.select("id", "vector")
        .mapInPandas(keyed, f"id long, {_KEY} long, vector array<float>")
        .orderBy(_KEY)
        .limit(count)
        .toPandas()
    )
    vectors = (
        np.stack(rows["vector"].to_numpy()).astype(np.float32)
        if len(rows)
        else np.zeros((0, dim), np.float32)
    )
    return rows["id"].to_numpy(dtype=np.int64), vectors


def ivf_cells(
    corpus: DataFrame, settings: Ivf, report: IvfReport, block_rows: int, count: int, dim: int
) -> Cells:
    """Centroids trained on the driver from ``corpus``'s sample; lists grouped for ``block_rows``."""
    nlist = choose_nlist(settings, count, report)
    _, sample = _smallest_keys(corpus, settings.seed, TRAIN_ROWS_PER_LIST * nlist, dim)
    centroids = train(sample, nlist, settings.seed, report)
    report.nlist, report.trained_on = len(centroids), len(sample)
    groups = group_lists(centroids, math.ceil(count / block_rows), settings.seed)
    return Cells(centroids, groups, 0)


def exact_cells(count: int, dim: int, block_rows: int) -> Cells:
    """The exact method as cells: one list, its rows hashed into blocks of about ``block_rows``."""
    return Cells(
        np.zeros((1, dim), np.float32), np.zeros(1, np.int64), 0, max(1, math.ceil(count / block_rows))
    )


def with_lists(frame: DataFrame, cells: Cells) -> DataFrame:
    """``frame`` (``id, vector[, r]``) plus each row's list and its list's group, kept."""
    centroids, groups, blocks = cells.centroids, cells.groups, cells.blocks
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in frame.schema.fields)

    def listed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            lists = nearest_lists(_unit(batch["vector"], centroids.shape[1]), centroids, 1)[:, 0]
            yield batch.assign(**{_LIST: lists, _GROUP: groups[lists]})

    added = frame.mapInPandas(listed, f"{schema}, {_LIST} long, {_GROUP} long")
    if blocks:
        added = added.withColumn(_GROUP, F.pmod(F.xxhash64("id"), F.lit(blocks)))
    return kept(added)


def list_sizes(frame: DataFrame, cells: Cells) -> np.ndarray:
    """Rows in each list of ``frame`` (which has the list column)."""
    sizes = np.zeros(len(cells.centroids), dtype=np.int64)
    for row in frame.groupBy(_LIST).count().collect():
        sizes[row[0]] = row[1]
    return sizes


# ---------------------------------------------------------------------- cells


def _probed(queries: DataFrame, cells: Cells, sizes: np.ndarray, need: int) -> DataFrame:
    """``queries`` plus each row's probed lists and the groups they are in, kept."""
    centroids, groups, nprobe, blocks = cells.centroids, cells.groups, cells.nprobe, cells.blocks
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in queries.schema.fields)

    def probed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if blocks:  # exact: every row probes the one list, in every block
                probes = np.zeros((len(batch), 1), dtype=np.int64)
                reached = [np.arange(blocks)] * len(batch)
            else:
                probes = probe(_unit(batch["vector"], centroids.shape[1]), centroids, nprobe, sizes, need)
                reached = [np.unique(groups[row[row >= 0]]) for row in probes]
            yield batch.assign(**{_PROBES: [row[row >= 0] for row in probes], _GROUPS: reached})

    return kept(queries.mapInPandas(probed, f"{schema}, {_PROBES} array<long>, {_GROUPS} array<long>"))


Search = Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]
"""A cell's work: ``(query rows, corpus rows) -> pair rows``."""


def _in_cells(
    queries: DataFrame,
    corpus: DataFrame,
    cells: Cells,
    sizes: np.ndarray,
    need: int,
    search: Search,
    schema: str,
    block_rows: int,
) -> DataFrame:
    """Every (query row, probed list) pair meets in one (group, chunk) cell; ``search`` runs in each."""
    probed = _probed(queries, cells, sizes, need)
    copies = probed.agg(F.sum(F.size(_GROUPS))).first()[0] or 0
    chunks = max(1, math.ceil(copies / (cells.group_count * block_rows)))
    query_keys = probed.withColumn(_GROUP, F.explode(_GROUPS)).withColumn(
        _CHUNK, F.pmod(F.xxhash64("id"), F.lit(chunks))
    )
    corpus_keys = corpus.withColumn(
        _CHUNK, F.explode(F.sequence(F.lit(0), F.lit(chunks - 1)).cast("array<long>"))
    )
    return (
        query_keys.groupBy(_GROUP, _CHUNK)
        .cogroup(corpus_keys.groupBy(_GROUP, _CHUNK))
        .applyInPandas(search, schema)
    )


def _broadcast(queries: DataFrame, corpus: DataFrame, search: Search, schema: str) -> DataFrame:
    """A small corpus shipped with the task: each batch of query rows searches all of it."""
    rows = corpus.toPandas()

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield search(batch, rows)

    return queries.mapInPandas(run, schema)


def _fits(count: int, dim: int, broadcast_mb: float) -> bool:
    return count * dim * 4 <= broadcast_mb * 2**20


# ---------------------------------------------------------------------- top-k


def _top_k_search(k: int, score: Score, cells: Cells, sizes: np.ndarray, probed: bool) -> Search:
    """A cell's top-k search: the core's :func:`~polyemb.ivf.search.search_top_k` as pair rows."""
    spec = score_spec(score)
    centroids, nprobe, dim = cells.centroids, cells.nprobe, cells.dim

    def search(query_rows: pd.DataFrame, corpus_rows: pd.DataFrame) -> pd.DataFrame:
        corpus_rows = _by_id(corpus_rows)
        queries, corpus = _unit(query_rows["vector"], dim), _unit(corpus_rows["vector"], dim)
        if probed:
            probes = _padded(query_rows[_PROBES])
        else:
            probes = probe(queries, centroids, nprobe, sizes, k)
        lists = corpus_rows[_LIST].to_numpy(dtype=np.int64)
        indices, scores = search_top_k(
            queries, probes, corpus, lists, k, score=score, query_r=_r(query_rows), corpus_r=_r(corpus_rows)
        )
        rows, slots = np.nonzero(indices >= 0)
        chosen = indices[rows, slots]
        columns = {
            PAIR_L: query_rows["id"].to_numpy(dtype=np.int64)[rows],
            PAIR_R: corpus_rows["id"].to_numpy(dtype=np.int64)[chosen],
            PAIR_SCORE: scores[rows, slots],
        }
        for name in spec.columns:
            columns[pair_column(name)] = PAIR_COLUMNS[name](queries[rows], corpus[chosen])
        return pd.DataFrame(columns)

    return search


def _searched(
    queries: DataFrame,
    corpus: DataFrame,
    k: int,
    score: Score,
    cells: Cells,
    sizes: np.ndarray,
    block_rows: int,
    broadcast_mb: float,
) -> DataFrame:
    """Each query row's top ``k`` among its probed lists: pair rows ``(l, r, score, added...)``."""
    schema = pair_schema(score)
    count = int(sizes.sum())
    if _fits(count, cells.dim, broadcast_mb):
        return _broadcast(queries, corpus, _top_k_search(k, score, cells, sizes, probed=False), schema)
    search = _top_k_search(k, score, cells, sizes, probed=True)
    partial = _in_cells(queries, corpus, cells, sizes, k, search, schema, block_rows)
    # Merge the cells' partial lists: the k best per left row, ties to the earlier right row.
    order = Window.partitionBy(PAIR_L).orderBy(F.col(PAIR_SCORE).desc(), F.col(PAIR_R).asc())
    return partial.withColumn("__rank", F.row_number().over(order)).where(F.col("__rank") <= k).drop("__rank")


def _neighbourhoods(
    queries: DataFrame,
    corpus: DataFrame,
    cells: Cells,
    sizes: np.ndarray,
    block_rows: int,
    broadcast_mb: float,
) -> DataFrame:
    """``(id, r)``: each query row's mean cosine with its 4 nearest corpus rows among its lists."""
    nearest = _searched(queries, corpus, NEIGHBOURS, "cosine", cells, sizes, block_rows, broadcast_mb)
    return nearest.groupBy(F.col(PAIR_L).alias("id")).agg(F.avg(PAIR_SCORE).cast("float").alias(R_COLUMN))


def ivf_top_pairs(
    queries: DataFrame,
    corpus: DataFrame,
    k: int,
    score: Score,
    settings: Ivf,
    report: IvfReport,
    block_rows: int,
    broadcast_mb: float,
) -> DataFrame:
    """Pair rows ``(l, r, score, added...)``: each query row's ``k`` best among its probed lists.

    ``queries`` and ``corpus`` have columns ``id`` and ``vector``. Trains the centroids, adds the
    lists, chooses nprobe (calibrated for ``settings.recall``), and fills ``report``.
    """
    started = time.perf_counter()
    count, dim = corpus_shape(queries, corpus)
    if not count:
        report.note("the right side has no vectors: no pairs")
        return queries.sparkSession.createDataFrame([], pair_schema(score))
    cells = ivf_cells(corpus, settings, report, block_rows, count, dim)
    queries, corpus = with_lists(queries, cells), with_lists(corpus, cells)
    sizes = list_sizes(corpus, cells)
    if settings.recall is not None:
        nprobe = _calibrated(queries, corpus, k, cells, settings, report, block_rows, broadcast_mb)
    else:
        nprobe = fixed_nprobe(settings, len(cells.centroids), report)
    report.nprobe = nprobe
    report.seconds = round(time.perf_counter() - started, 3)
    report.log()
    cells = Cells(cells.centroids, cells.groups, nprobe)
    if score_spec(score).neighbourhoods:
        query_sizes = list_sizes(queries, cells)
        left_r = _neighbourhoods(queries, corpus, cells, sizes, block_rows, broadcast_mb)
        right_r = _neighbourhoods(corpus, queries, cells, query_sizes, block_rows, broadcast_mb)
        queries, corpus = kept(queries.join(left_r, "id")), kept(corpus.join(right_r, "id"))
    return _searched(queries, corpus, k, score, cells, sizes, block_rows, broadcast_mb)


def _calibrated(
    queries: DataFrame,
    corpus: DataFrame,
    k: int,
    cells: Cells,
    settings: Ivf,
    report: IvfReport,
    block_rows: int,
    broadcast_mb: float,
) -> int:
    """Nprobe for ``settings.recall``: the exact top-k of the calibration rows, and their lists' ranks."""
    _, sample = _smallest_keys(queries, settings.seed + 1, CALIBRATION_ROWS, cells.dim)
    spark = queries.sparkSession
    rows = spark.createDataFrame(
        pd.DataFrame({"id": np.arange(len(sample), dtype=np.int64), "vector": list(sample)}),
        "id long, vector array<float>",
    )
    exact = exact_pairs(rows, corpus.select("id", "vector"), k, "cosine", block_rows, broadcast_mb)
    found = (
        exact.join(corpus.select(F.col("id").alias(PAIR_R), F.col(_LIST)), PAIR_R)
        .select(PAIR_L, _LIST)
        .toPandas()
    )
    neighbour_lists = np.full((len(sample), k), -1, dtype=np.int64)
    slot = found.groupby(PAIR_L).cumcount().to_numpy()
    neighbour_lists[found[PAIR_L].to_numpy(), slot] = found[_LIST].to_numpy()
    needed = lists_needed(sample, cells.centroids, neighbour_lists)
    nprobe, estimate = choose_nprobe(*recall_curve(needed, len(cells.centroids)), float(settings.recall or 1))
    report.recall_target, report.recall_estimate = settings.recall, round(estimate, 4)
    report.calibration_rows = len(sample)
    return nprobe


# ---------------------------------------------------------------------- pairs above a threshold


def _above_search(threshold: float, dim: int) -> Search:
    """A cell's threshold search: the core's :func:`~polyemb.ivf.search.search_above` as pair rows."""

    def search(query_rows: pd.DataFrame, corpus_rows: pd.DataFrame) -> pd.DataFrame:
        corpus_rows = _by_id(corpus_rows)
        queries, corpus = _unit(query_rows["vector"], dim), _unit(corpus_rows["vector"], dim)
        lists = corpus_rows[_LIST].to_numpy(dtype=np.int64)
        q, c, s = search_above(queries, _padded(query_rows[_PROBES]), corpus, lists, threshold)
        return pd.DataFrame(
            {
                PAIR_L: query_rows["id"].to_numpy(dtype=np.int64)[q],
                PAIR_R: corpus_rows["id"].to_numpy(dtype=np.int64)[c],
                PAIR_SCORE: s,
            }
        )

    return search


def cell_pairs_above(frame: DataFrame, threshold: float, cells: Cells, block_rows: int) -> DataFrame:
    """Pair rows ``(l, r, score)`` of ``frame``'s rows with ``l < r`` and cosine >= ``threshold``.

    ``frame`` has ``id``, ``vector`` and the list columns (:func:`with_lists`). A pair is found
    when either row probes the other's list (every pair, for the exact cells); its score is the
    higher of the two directions'.
    """
    sizes = list_sizes(frame, cells)
    found = _in_cells(
        frame, frame, cells, sizes, 0, _above_search(threshold, cells.dim), _ABOVE_SCHEMA, block_rows
    )
    found = found.where(F.col(PAIR_L) != F.col(PAIR_R)).select(
        F.least(PAIR_L, PAIR_R).alias(PAIR_L), F.greatest(PAIR_L, PAIR_R).alias(PAIR_R), PAIR_SCORE
    )
    return found.groupBy(PAIR_L, PAIR_R).agg(F.max(PAIR_SCORE).alias(PAIR_SCORE))


def calibrated_pairs_nprobe(
    frame: DataFrame, threshold: float, cells: Cells, settings: Ivf, report: IvfReport
) -> int:
    """Nprobe for ``settings.recall`` of near-duplicate pairs: the calibration rows' exact pairs.

    The calibration rows ship with the task; each batch of ``frame`` gives their pairs above
    the threshold and the nprobe that finds each (:func:`~polyemb.ivf.calibrate.pair_lists_needed`).
    """
    centroids, dim = cells.centroids, cells.dim
    sample_ids, sample = _smallest_keys(frame, settings.seed + 1, CALIBRATION_ROWS, dim)
    sample_lists = nearest_lists(sample, centroids, 1)[:, 0]

    def needed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = _unit(batch["vector"], dim)
            left, right = np.nonzero(sample @ rows.T >= threshold)
            other = batch["id"].to_numpy(dtype=np.int64)[right] != sample_ids[left]  # not a row with itself
            left, right = left[other], right[other]
            lists = batch[_LIST].to_numpy(dtype=np.int64)[right]
            found = pair_lists_needed(sample[left], rows[right], sample_lists[left], lists, centroids)
            yield pd.DataFrame({"needed": found[:, 0]})

    counts = (
        frame.select("id", "vector", _LIST).mapInPandas(needed, "needed long").toPandas()["needed"].to_numpy()
    )
    report.recall_target, report.calibration_rows = settings.recall, len(sample)
    if not len(counts):
        report.note(
            f"no pair of the {len(sample)} calibration rows reaches {threshold}: the default nprobe is used"
        )
        return fixed_nprobe(Ivf(), len(centroids), report, pairs=True)
    nprobe, estimate = choose_nprobe(
        *recall_curve(counts[:, None], len(centroids)), float(settings.recall or 1)
    )
    report.recall_estimate = round(estimate, 4)
    return nprobe
