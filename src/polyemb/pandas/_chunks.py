"""The pandas accessor over chunks: chunk tables as DataFrames, and search and join rows by best window.

Conversions only: the windows come from :meth:`polyemb.Encoder.encode_chunks` and the scoring from
:mod:`polyemb.maxsim`, as in every engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from polyemb.chunks import Chunks, chunks_of_table
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.maxsim import CHUNK_COLUMNS, join_chunk_rows, top_chunk_pairs
from polyemb.options import JoinHow, Score
from polyemb.pandas._columns import holds_vectors, labelled, series_name, texts_of
from polyemb.store.stored import default_encoder_or

__all__ = ["chunk_frame", "chunk_table", "join_by_chunks", "search_by_chunks"]


def chunk_table(series: pd.Series, encoder: Encoder | None, **options: Any) -> pa.Table:
    """The chunk table of a Series of texts (:meth:`polyemb.Encoder.encode_chunks`), errors naming the row."""
    if holds_vectors(series):
        raise InvalidInputError(f"{series_name(series)} holds vectors; chunks are cut from texts")
    texts = texts_of(series)
    model = default_encoder_or(encoder)
    return labelled(series, texts, lambda: model.encode_chunks(texts, **options))


def chunk_frame(table: pa.Table, index: pd.Index) -> pd.DataFrame:
    """A chunk table as a DataFrame on the labels (``index``) of its texts, ``row`` their positions."""
    columns: dict[str, Any] = {
        name: table.column(name).to_numpy() for name in ("row", "chunk", "start", "end", "tokens")
    }
    columns["vector"] = pd.arrays.ArrowExtensionArray(table.column("vector").combine_chunks())
    return pd.DataFrame(columns, index=index[columns["row"]])


def search_by_chunks(
    table: pa.Table, query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(rows, scores, {start, end})``: the ``k`` rows whose best window is closest to ``query``."""
    found = chunks_of_table(table)
    pairs = top_chunk_pairs(query, found.vectors, k, corpus_rows=found.row)
    return (
        pairs.corpus,
        pairs.score,
        dict(zip(CHUNK_COLUMNS, _offsets(found, pairs.corpus_chunk), strict=True)),
    )


def join_by_chunks(
    left: np.ndarray,
    left_valid: np.ndarray,
    table: pa.Table,
    k: int,
    names: tuple[str, ...],
    *,
    threshold: float | None,
    how: JoinHow,
    score: Score,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(left rows, right rows, added columns)`` of a join scoring right rows by their best chunk.

    The added columns are ``names`` (the score's, in order), then the best window's ``start``
    and ``end`` (NA where a left join found no match).
    """
    found = chunks_of_table(table)
    rows = join_chunk_rows(
        left, left_valid, found.vectors, found.row, k, threshold=threshold, how=how, score=score
    )
    added: dict[str, Any] = dict(zip(names, [rows.score, *rows.columns.values()], strict=True))
    added.update(zip(CHUNK_COLUMNS, _offsets(found, rows.chunk), strict=True))
    return rows.left, rows.right, added


def _offsets(found: Chunks, chunk: np.ndarray) -> tuple[pd.arrays.IntegerArray, pd.arrays.IntegerArray]:
    """The start and end of each chunk (an index into ``found``; -1: none, NA)."""
    none = chunk < 0
    at = np.where(none, 0, chunk)
    starts = found.start[at] if len(found.start) else np.zeros(len(chunk), dtype=np.int64)
    ends = found.end[at] if len(found.end) else np.zeros(len(chunk), dtype=np.int64)
    return pd.arrays.IntegerArray(starts, none), pd.arrays.IntegerArray(ends, none.copy())
