"""Spark's cells: the core's ivf cells (and the exact method as cells), spread over partitions.

- **Centroids** are trained on the driver by the core (:func:`polyemb.ivf.cells.train`) from the
  rows of smallest key (:func:`~polyemb.ivf.cells.row_keys`), collected: the rows pandas, DuckDB
  and the command line train on, whatever the partitioning.
- **Lists**: each row's nearest centroid, a column added in one pass (the centroids ship with
  the task); the lists' sizes are counted once.
- **Cells**: a large corpus is split by list into about ``corpus rows / block_rows`` groups (a
  k-means of the centroids, so that a row's nearest lists mostly share a group): each corpus row
  goes to its list's group, each query row to the groups of its probed lists (about 2 to 4 at
  nprobe 8 to 64, against one copy per block for the exact join), in chunks, and each
  (group, chunk) cell runs the core's search on the pairs it holds. Every (query row, probed
  list) pair is scored in exactly one cell. The exact method is the same cells with one list,
  cut into blocks by a hash of the row id.

Top-k joins on these cells: :mod:`polyemb.spark.ivf`; near-duplicates: :mod:`polyemb.spark.dedup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from polyemb.ivf import Ivf, IvfReport
from polyemb.ivf.calibrate import choose_nprobe, pair_lists_needed, recall_curve
from polyemb.ivf.cells import group_lists, nearest_lists, probe, row_keys, sortable_keys, train
from polyemb.ivf.index import choose_nlist, fixed_nprobe
from polyemb.ivf.search import search_above
from polyemb.ivf.settings import CALIBRATION_ROWS, TRAIN_ROWS_PER_LIST
from polyemb.similarity import normalize_rows
from polyemb.spark._pairs import PAIR_L, PAIR_R, PAIR_SCORE, R_COLUMN, kept

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "LIST",
    "PROBES",
    "Cells",
    "Search",
    "broadcast",
    "by_id",
    "calibrated_pairs_nprobe",
    "cell_pairs_above",
    "exact_cells",
    "fits",
    "in_cells",
    "ivf_cells",
    "list_sizes",
    "padded",
    "r_of",
    "smallest_keys",
    "unit_rows",
    "with_lists",
]

# Columns added to rows of ``id, vector[, r]``: internal names.
LIST, _GROUP, PROBES, _GROUPS, _CHUNK, _KEY = (
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


def unit_rows(vectors: pd.Series, dim: int) -> np.ndarray:
    """A pandas column of vectors as unit float32 rows (the core's normalization)."""
    if not len(vectors):
        return np.zeros((0, dim), np.float32)
    return normalize_rows(np.stack(vectors.to_numpy()).astype(np.float32, copy=False))


def padded(column: pd.Series) -> np.ndarray:
    """A pandas column of int arrays of varying length as one int64 matrix, -1 where shorter."""
    lengths = np.fromiter((len(row) for row in column), dtype=np.int64, count=len(column))
    matrix = np.full((len(column), int(lengths.max(initial=0))), -1, dtype=np.int64)
    if len(column):
        matrix[np.arange(matrix.shape[1])[None, :] < lengths[:, None]] = np.concatenate(column.to_numpy())
    return matrix


def by_id(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in id order, so that the core's "lower row first" among equal scores is "earlier row"."""
    return rows.sort_values("id", kind="stable")


def r_of(rows: pd.DataFrame) -> np.ndarray | None:
    """The rows' neighbourhoods (r), if they have them."""
    column = rows.get(R_COLUMN)
    return None if column is None else column.to_numpy(dtype=np.float32)


# ---------------------------------------------------------------------- training


def smallest_keys(frame: DataFrame, seed: int, count: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, unit vectors)`` of ``frame``'s ``count`` rows of smallest key, collected in key order."""

    def keyed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            unit = unit_rows(batch["vector"], dim)
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
    _, sample = smallest_keys(corpus, settings.seed, TRAIN_ROWS_PER_LIST * nlist, dim)
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
            lists = nearest_lists(unit_rows(batch["vector"], centroids.shape[1]), centroids, 1)[:, 0]
            yield batch.assign(**{LIST: lists, _GROUP: groups[lists]})

    added = frame.mapInPandas(listed, f"{schema}, {LIST} long, {_GROUP} long")
    if blocks:
        added = added.withColumn(_GROUP, F.pmod(F.xxhash64("id"), F.lit(blocks)))
    return kept(added)


def list_sizes(frame: DataFrame, cells: Cells) -> np.ndarray:
    """Rows in each list of ``frame`` (which has the list column)."""
    sizes = np.zeros(len(cells.centroids), dtype=np.int64)
    for row in frame.groupBy(LIST).count().collect():
        sizes[row[0]] = row[1]
    return sizes


# ---------------------------------------------------------------------- cells


def _with_probes(queries: DataFrame, cells: Cells, sizes: np.ndarray, need: int) -> DataFrame:
    """``queries`` plus each row's probed lists and the groups they are in, kept."""
    centroids, groups, nprobe, blocks = cells.centroids, cells.groups, cells.nprobe, cells.blocks
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in queries.schema.fields)

    def probed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if blocks:  # exact: every row probes the one list, in every block
                probes = np.zeros((len(batch), 1), dtype=np.int64)
                reached = [np.arange(blocks)] * len(batch)
            else:
                probes = probe(unit_rows(batch["vector"], centroids.shape[1]), centroids, nprobe, sizes, need)
                reached = [np.unique(groups[row[row >= 0]]) for row in probes]
            yield batch.assign(**{PROBES: [row[row >= 0] for row in probes], _GROUPS: reached})

    return kept(queries.mapInPandas(probed, f"{schema}, {PROBES} array<long>, {_GROUPS} array<long>"))


Search = Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]
"""A cell's work: ``(query rows, corpus rows) -> pair rows``."""


def in_cells(
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
    probed = _with_probes(queries, cells, sizes, need)
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


def broadcast(queries: DataFrame, corpus: DataFrame, search: Search, schema: str) -> DataFrame:
    """A small corpus shipped with the task: each batch of query rows searches all of it."""
    rows = corpus.toPandas()

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield search(batch, rows)

    return queries.mapInPandas(run, schema)


def fits(count: int, dim: int, broadcast_mb: float) -> bool:
    """Whether ``count`` vectors of ``dim`` floats fit in ``broadcast_mb`` (shipped with the task)."""
    return count * dim * 4 <= broadcast_mb * 2**20


# ---------------------------------------------------------------------- pairs above a threshold


def _above_search(threshold: float, dim: int) -> Search:
    """A cell's threshold search: the core's :func:`~polyemb.ivf.search.search_above` as pair rows."""

    def search(query_rows: pd.DataFrame, corpus_rows: pd.DataFrame) -> pd.DataFrame:
        corpus_rows = by_id(corpus_rows)
        queries, corpus = unit_rows(query_rows["vector"], dim), unit_rows(corpus_rows["vector"], dim)
        lists = corpus_rows[LIST].to_numpy(dtype=np.int64)
        q, c, s = search_above(queries, padded(query_rows[PROBES]), corpus, lists, threshold)
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
    found = in_cells(
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
    sample_ids, sample = smallest_keys(frame, settings.seed + 1, CALIBRATION_ROWS, dim)
    sample_lists = nearest_lists(sample, centroids, 1)[:, 0]

    def needed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = unit_rows(batch["vector"], dim)
            left, right = np.nonzero(sample @ rows.T >= threshold)
            other = batch["id"].to_numpy(dtype=np.int64)[right] != sample_ids[left]  # not a row with itself
            left, right = left[other], right[other]
            lists = batch[LIST].to_numpy(dtype=np.int64)[right]
            found = pair_lists_needed(sample[left], rows[right], sample_lists[left], lists, centroids)
            yield pd.DataFrame({"needed": found[:, 0]})

    counts = (
        frame.select("id", "vector", LIST).mapInPandas(needed, "needed long").toPandas()["needed"].to_numpy()
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
