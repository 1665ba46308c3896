"""Spark's ivf method for top-k joins: the core's search in the cells of :mod:`polyemb.spark.cells`.

A small right side is shipped with the task and searched by each Arrow batch of left rows; a
larger one is spread over cells of lists, and the cells' partial top-k are merged per left row
as the exact join merges its blocks' (score descending, ties to the earlier right row), which
gives the core's answer. ``recall=`` runs the exact top-k of the calibration rows (the exact
join's blocks) and ranks each neighbour's list, as the core does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F

from polyemb.ivf import Ivf, IvfReport
from polyemb.ivf.calibrate import choose_nprobe, lists_needed, recall_curve
from polyemb.ivf.cells import probe
from polyemb.ivf.index import fixed_nprobe
from polyemb.ivf.search import search_top_k
from polyemb.ivf.settings import CALIBRATION_ROWS
from polyemb.options import Score
from polyemb.scores import PAIR_COLUMNS, score_spec
from polyemb.similarity import NEIGHBOURS
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
from polyemb.spark.cells import (
    LIST,
    PROBES,
    Cells,
    Search,
    broadcast,
    by_id,
    fits,
    in_cells,
    ivf_cells,
    list_sizes,
    padded,
    r_of,
    smallest_keys,
    unit_rows,
    with_lists,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["ivf_top_pairs"]

# ---------------------------------------------------------------------- top-k


def _top_k_search(k: int, score: Score, cells: Cells, sizes: np.ndarray, probed: bool) -> Search:
    """A cell's top-k search: the core's :func:`~polyemb.ivf.search.search_top_k` as pair rows."""
    spec = score_spec(score)
    centroids, nprobe, dim = cells.centroids, cells.nprobe, cells.dim

    def search(query_rows: pd.DataFrame, corpus_rows: pd.DataFrame) -> pd.DataFrame:
        corpus_rows = by_id(corpus_rows)
        queries, corpus = unit_rows(query_rows["vector"], dim), unit_rows(corpus_rows["vector"], dim)
        if probed:
            probes = padded(query_rows[PROBES])
        else:
            probes = probe(queries, centroids, nprobe, sizes, k)
        lists = corpus_rows[LIST].to_numpy(dtype=np.int64)
        indices, scores = search_top_k(
            queries,
            probes,
            corpus,
            lists,
            k,
            score=score,
            query_r=r_of(query_rows),
            corpus_r=r_of(corpus_rows),
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
    if fits(count, cells.dim, broadcast_mb):
        return broadcast(queries, corpus, _top_k_search(k, score, cells, sizes, probed=False), schema)
    search = _top_k_search(k, score, cells, sizes, probed=True)
    partial = in_cells(queries, corpus, cells, sizes, k, search, schema, block_rows)
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
        nprobe = _calibrated(queries, corpus, k, "cosine", cells, settings, report, block_rows, broadcast_mb)
    else:
        nprobe = fixed_nprobe(settings, len(cells.centroids), report)
    report.nprobe = nprobe
    report.seconds = round(time.perf_counter() - started, 3)
    report.log()
    cells = Cells(cells.centroids, cells.groups, nprobe)
    if score_spec(score).neighbourhoods:
        query_sizes = list_sizes(queries, cells)

        def with_r(cells: Cells) -> tuple[DataFrame, DataFrame]:
            left_r = _neighbourhoods(queries, corpus, cells, sizes, block_rows, broadcast_mb)
            right_r = _neighbourhoods(corpus, queries, cells, query_sizes, block_rows, broadcast_mb)
            return kept(queries.join(left_r, "id")), kept(corpus.join(right_r, "id"))

        scored_queries, scored_corpus = with_r(cells)
        if settings.recall is not None:
            # As the core's IvfIndex.calibrate_score: again for the score's own top-k, never lower.
            started = time.perf_counter()
            raised = _calibrated(
                queries, scored_corpus, k, score, cells, settings, report, block_rows, broadcast_mb, sizes
            )
            report.seconds = round(report.seconds + time.perf_counter() - started, 3)
            if raised > nprobe:
                stale = (scored_queries, scored_corpus)
                cells = Cells(cells.centroids, cells.groups, raised)
                scored_queries, scored_corpus = with_r(cells)
                for frame in stale:  # found again at the raised nprobe: free their cache
                    frame.unpersist()
            report.nprobe = cells.nprobe
            report.log()
        queries, corpus = scored_queries, scored_corpus
    return _searched(queries, corpus, k, score, cells, sizes, block_rows, broadcast_mb)


def _calibrated(
    queries: DataFrame,
    corpus: DataFrame,
    k: int,
    score: Score,
    cells: Cells,
    settings: Ivf,
    report: IvfReport,
    block_rows: int,
    broadcast_mb: float,
    sizes: np.ndarray | None = None,
) -> int:
    """Nprobe for ``settings.recall``: the exact top-k of the calibration rows, and their lists' ranks.

    For margin and CSLS (``corpus`` has its rows' ``r``, ``sizes`` its list sizes), the
    calibration rows' neighbourhoods are found at ``cells.nprobe``, the result is never below
    it, and the estimate is of that score's top-k.
    """
    _, sample = smallest_keys(queries, settings.seed + 1, CALIBRATION_ROWS, cells.dim)
    if not len(sample):  # no recall to estimate: the report's estimate stays None
        if sizes is not None:  # the score's pass, after the cosine pass said so
            return cells.nprobe
        report.note("recall= needs the left rows to calibrate on; the default nprobe is used")
        return fixed_nprobe(settings, len(cells.centroids), report)
    spark = queries.sparkSession
    rows = spark.createDataFrame(
        pd.DataFrame({"id": np.arange(len(sample), dtype=np.int64), "vector": list(sample)}),
        "id long, vector array<float>",
    )
    scored = score_spec(score).neighbourhoods and sizes is not None
    if scored and sizes is not None:
        rows_r = _neighbourhoods(with_lists(rows, cells), corpus, cells, sizes, block_rows, broadcast_mb)
        rows = rows.join(rows_r, "id")
    scored_columns = ("id", "vector", R_COLUMN) if scored else ("id", "vector")
    exact = exact_pairs(rows, corpus.select(*scored_columns), k, score, block_rows, broadcast_mb)
    found = (
        exact.join(corpus.select(F.col("id").alias(PAIR_R), F.col(LIST)), PAIR_R)
        .select(PAIR_L, LIST)
        .toPandas()
    )
    neighbour_lists = np.full((len(sample), k), -1, dtype=np.int64)
    slot = found.groupby(PAIR_L).cumcount().to_numpy()
    neighbour_lists[found[PAIR_L].to_numpy(), slot] = found[LIST].to_numpy()
    needed = lists_needed(sample, cells.centroids, neighbour_lists)
    mean, error = recall_curve(needed, len(cells.centroids))
    nprobe = choose_nprobe(mean, error, float(settings.recall or 1))[0]
    nprobe = max(nprobe, cells.nprobe) if scored else nprobe
    report.recall_target, report.recall_estimate = settings.recall, round(float(mean[nprobe - 1]), 4)
    report.calibration_rows = len(sample)
    return nprobe
