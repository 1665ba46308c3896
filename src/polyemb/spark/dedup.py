"""Near-duplicates in Spark: pairs of rows at or above a cosine, group ids, or the rows to keep.

The pairs come from the cells of :mod:`polyemb.spark.cells`: with ``method="ivf"`` each row is
scored against the rows of its nearest lists; with ``"exact"`` against every row (one list, in
blocks). Groups (rows linked by a chain of pairs) are the core's
:func:`~polyemb.near_duplicates.connected_groups` of the pairs, collected to the driver: the pairs of
a column must fit there (16 bytes each), not its rows. Rows are numbered in the order Spark reads
them (``monotonically_increasing_id``), which is the file order for a file read as is: "first"
and group numbers follow it, as pandas follows the index.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.ivf import Ivf, IvfReport, method_settings
from polyemb.ivf.index import fixed_nprobe
from polyemb.near_duplicates import check_threshold, connected_groups, first_of_groups
from polyemb.options import Delivery, Keep, LongTexts, Method, Precision, check_keep, check_positive_int
from polyemb.spark._pairs import PAIR_L, PAIR_R, PAIR_SCORE, corpus_shape, kept
from polyemb.spark.cells import (
    Cells,
    calibrated_pairs_nprobe,
    cell_pairs_above,
    exact_cells,
    ivf_cells,
    with_lists,
)
from polyemb.spark.delivery import active_session
from polyemb.spark.join import BLOCK_ROWS, LEFT_ID, RIGHT_ID, VECTOR, Embedding, assemble
from polyemb.spark.udfs import col_named, has_column

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["near_duplicates"]


def near_duplicates(
    df: DataFrame,
    column: str,
    threshold: float = 0.9,
    *,
    groups: bool = False,
    keep: Keep | None = None,
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
    group_column: str = "group",
    score_column: str = "score",
    suffixes: tuple[str, str] = ("_x", "_y"),
    block_rows: int = BLOCK_ROWS,
    model: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    spark: SparkSession | None = None,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> DataFrame:
    """Rows of ``df`` whose ``column`` values have a cosine similarity of at least ``threshold``.

    As pandas' ``Series.emb.near_duplicates``, for the same vectors, settings and seed.

    Args:
        df: The DataFrame.
        column: A text column (embedded here) or a vector column (``array<float>``).
        threshold: Cosine similarity, -1 to 1.
        groups: Return ``df`` with a group id per row instead of the pairs.
        keep: ``"first"``: return ``df`` without its near-duplicates: each group keeps its
            first row (in the order Spark reads the rows).
        method: ``"exact"``; ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings (centroids
            trained on the driver; ``Ivf(recall=0.99)`` calibrates nprobe on a sample of pairs).
        report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
        group_column: Name of the group column (``groups=True``).
        score_column: Name of the score column of the pairs.
        suffixes: Added to the column names of the pairs' two rows.
        block_rows: Rows a worker holds of each side of a cell.
        model: For text columns: hub id or folder; None: ``$POLYEMB_MODEL``, else the default.
        store: For text columns: a vector store folder.
        spark: The session; None: the active one.
        delivery: How executors get the model, for text columns.
        batch_size: Texts per forward pass, for text columns.
        precision: For text columns.
        max_seq_length: For text columns.
        revision: For text columns.
        long_texts: For text columns: a text over ``max_seq_length`` tokens is cut
            (``"truncate"``) or the mean of its windows (``"mean"``), as in ``polyemb.load``.
        stride: For text columns with ``long_texts="mean"``: tokens consecutive windows share.

    Returns:
        Pairs (default): each pair once, the earlier row first: its columns with ``suffixes``,
        then the score. ``groups=True``: ``df`` plus ``group_column`` (long; NULL for a row in no
        pair), numbered in the order of each group's first row. ``keep="first"``: ``df`` less
        the rows dropped (NULL values are kept).

    Raises:
        ColumnNotFoundError: ``column`` is missing.
        InvalidInputError: A threshold outside [-1, 1], an unknown method or keep, or both
            ``groups`` and ``keep``.

    Example:
        >>> deduped = polyemb.spark.near_duplicates(df, "title", 0.9, keep="first", method="ivf")
    """
    threshold = check_threshold(threshold)
    settings = method_settings(method)
    check_positive_int("block_rows", block_rows)
    if keep is not None:
        check_keep(keep)
        if groups:
            raise InvalidInputError("give groups=True or keep=, not both")
    if column not in df.columns:
        raise ColumnNotFoundError.from_missing(column, df.columns, "the DataFrame")
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
    rows, _ = embed(df.withColumn(LEFT_ID, F.monotonically_increasing_id()), column)
    rows = kept(rows)
    vectors = rows.where(F.col(VECTOR).isNotNull()).select(
        F.col(LEFT_ID).alias("id"), F.col(VECTOR).alias("vector")
    )
    pairs = _pairs(vectors, threshold, settings, report if report is not None else IvfReport(), block_rows)
    if groups or keep is not None:
        return _grouped(df, rows, pairs, group_column, keep is not None)
    return assemble(
        rows, rows.withColumnRenamed(LEFT_ID, RIGHT_ID), pairs, "inner", (score_column,), suffixes
    )


def _pairs(
    vectors: DataFrame, threshold: float, settings: Ivf | None, report: IvfReport, block_rows: int
) -> DataFrame:
    """Pair rows ``(l, r, score)``, ``l < r``, of the rows whose cosine reaches ``threshold``."""
    started = time.perf_counter()
    count, dim = corpus_shape(vectors, vectors)
    if count < 2:
        schema = f"{PAIR_L} long, {PAIR_R} long, {PAIR_SCORE} float"
        return vectors.sparkSession.createDataFrame([], schema)
    if settings is None:
        cells = exact_cells(count, dim, block_rows)
    else:
        cells = ivf_cells(vectors, settings, report, block_rows, count, dim)
    listed = with_lists(vectors, cells)
    if settings is not None:
        if settings.recall is not None:
            nprobe = calibrated_pairs_nprobe(listed, threshold, cells, settings, report)
        else:
            nprobe = fixed_nprobe(settings, len(cells.centroids), report, pairs=True)
        report.nprobe = nprobe
        report.seconds = round(time.perf_counter() - started, 3)
        report.log()
        cells = Cells(cells.centroids, cells.groups, nprobe)
    return cell_pairs_above(listed, threshold, cells, block_rows)


def _grouped(
    df: DataFrame, rows: DataFrame, pairs: DataFrame, group_column: str, first_only: bool
) -> DataFrame:
    """``df`` with each row's group (connected components of the pairs, on the driver), or its kept rows."""
    if has_column(df, group_column) and not first_only:
        raise InvalidInputError(
            f"the DataFrame already has a column {group_column!r}; choose another group_column"
        )
    found = pairs.select(PAIR_L, PAIR_R).toPandas()
    ids = np.unique(np.concatenate([found[PAIR_L].to_numpy(), found[PAIR_R].to_numpy()]).astype(np.int64))
    linked = connected_groups(
        len(ids),
        np.searchsorted(ids, found[PAIR_L].to_numpy()),
        np.searchsorted(ids, found[PAIR_R].to_numpy()),
    )
    spark = df.sparkSession
    user_columns = [c for c in rows.columns if c not in (LEFT_ID, VECTOR)]
    if first_only:
        dropped = ids[~first_of_groups(linked)]
        gone = spark.createDataFrame(pd.DataFrame({LEFT_ID: dropped}), f"{LEFT_ID} long")
        return rows.join(gone, LEFT_ID, "left_anti").select(*[col_named(c) for c in user_columns])
    numbers = spark.createDataFrame(
        pd.DataFrame({LEFT_ID: ids, group_column: linked}), f"{LEFT_ID} long, {group_column} long"
    )
    return rows.join(numbers, LEFT_ID, "left").select(
        *[col_named(c) for c in user_columns], col_named(group_column)
    )
