"""Near-duplicates of a table file's column: what ``polyemb dedup`` runs (no engine types here).

The column is read whole (texts are embedded, vectors read as they are), its pairs found by
:func:`polyemb.near_duplicates.pairs_above` (exact or ivf), grouped by
:func:`~polyemb.near_duplicates.connected_groups`, and the file written again: without the rows each
group drops (``keep="first"``), or with every row and its group id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.arrow import texts_from_arrow, vectors_from_arrow
from polyemb.errors import InvalidInputError
from polyemb.near_duplicates import check_threshold, connected_groups, first_of_groups, pairs_above
from polyemb.options import Keep, Method, check_keep
from polyemb.tables import check_output, check_unique_names, publishing, read_table

if TYPE_CHECKING:
    from polyemb.embedder import Embedder
    from polyemb.ivf import Ivf, IvfReport
    from polyemb.ivf.search import Progress

__all__ = ["DedupReport", "dedup_file"]


@dataclass(frozen=True)
class DedupReport:
    """What :func:`dedup_file` found and wrote.

    Attributes:
        output: The file written.
        rows: Rows read.
        null_values: Rows whose value was NULL (never a duplicate; kept).
        pairs: Pairs at or above the threshold.
        groups: Groups of rows linked by a chain of pairs.
        in_groups: Rows in a group.
        dropped: Rows not written (``keep="first"``: all but the first of each group).
        seconds: Time to find the pairs (after reading and embedding).
    """

    output: Path
    rows: int
    null_values: int
    pairs: int
    groups: int
    in_groups: int
    dropped: int
    seconds: float


def _vectors(
    table: pa.Table, column: str, embedder: Callable[[], Embedder], show_progress: bool | None
) -> tuple[np.ndarray, np.ndarray]:
    """The column's ``(matrix, valid)``: read if it holds vectors, embedded if texts."""
    values = table.column(column)
    kind = values.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return vectors_from_arrow(values, name=f"column {column!r}")
    texts = texts_from_arrow(values, name=f"column {column!r}")
    return embedder().encode_nullable(texts, show_progress=show_progress)


def dedup_file(
    source: str | os.PathLike[str],
    column: str,
    output: str | os.PathLike[str],
    threshold: float,
    *,
    embedder: Callable[[], Embedder],
    method: Method | Ivf = "exact",
    keep: Keep | None = "first",
    group_column: str = "group",
    show_progress: bool | None = None,
    progress: Progress | None = None,
    report: IvfReport | None = None,
) -> DedupReport:
    """Write ``source`` to the Parquet file ``output`` without its near-duplicates (or with groups).

    Args:
        source: A CSV, TSV, Parquet or text file (see :func:`polyemb.tables.read_table`).
        column: Its text column, or a vector column (a list of floats).
        output: The Parquet file to write (it appears only when complete).
        threshold: Cosine similarity, -1 to 1.
        embedder: Gives the embedder for a text column (called only then).
        method: ``"exact"``, ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings.
        keep: ``"first"``: each group keeps its first row; None: every row is written with
            ``group_column`` (int64, NULL for a row in no group).
        group_column: Name of the group column when ``keep`` is None.
        show_progress: A progress bar while embedding.
        progress: Told ``(done, total)`` while the pairs are searched.
        report: For the ivf method, filled with what it chose.

    Returns:
        What was found and written.

    Raises:
        InvalidInputError: Unreadable input, a missing column, a bad threshold, method or keep,
            an existing ``group_column``, or an output that cannot be written (checked before
            any embedding where its folder is missing).
    """
    check_threshold(threshold)
    if keep is not None:
        check_keep(keep)
    target = check_output(output)
    table = read_table(source, [column])
    check_unique_names(table.column_names, source)
    if keep is None and group_column in table.column_names:
        raise InvalidInputError(
            f"the input already has a column {group_column!r}; choose another group column"
        )
    matrix, valid = _vectors(table, column, embedder, show_progress)
    started = time.perf_counter()
    positions = np.flatnonzero(valid)
    i, j, _ = pairs_above(matrix[positions], threshold, method=method, report=report, progress=progress)
    groups = np.full(len(valid), -1, dtype=np.int64)
    groups[positions] = connected_groups(len(positions), i, j)
    seconds = round(time.perf_counter() - started, 2)
    if keep is not None:
        written = table.filter(pa.array(first_of_groups(groups)))
    else:
        written = table.append_column(group_column, pa.array(groups, pa.int64(), mask=groups < 0))
    with publishing(target) as partial:
        try:
            pq.write_table(written, partial)
        except OSError as exc:  # a full disk
            raise InvalidInputError(f"cannot write {str(target)!r}: {exc}") from exc
    return DedupReport(
        output=target,
        rows=len(valid),
        null_values=int((~valid).sum()),
        pairs=len(i),
        groups=int(groups.max(initial=-1)) + 1,
        in_groups=int((groups >= 0).sum()),
        dropped=table.num_rows - written.num_rows,
        seconds=seconds,
    )
