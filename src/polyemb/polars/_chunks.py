"""The Polars namespaces over chunks: chunk tables as DataFrames, rows scored by their best window.

Conversions only: the windows come from :meth:`polyemb.Encoder.encode_chunks` and the scoring
from :mod:`polyemb.maxsim`, as in every engine.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from polyemb.chunks import Chunks
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.polars._columns import EncodeOptions, describe, kind_of, texts_of
from polyemb.store.stored import default_encoder_or

__all__ = ["chunk_frame", "chunk_table", "offsets"]


def chunk_table(
    series: pl.Series, encoder: Encoder | None, options: EncodeOptions, stride: int | None = None
) -> pa.Table:
    """The chunk table of a column of texts (never through a store: chunks are not stored).

    Raises:
        InvalidInputError: The column holds vectors, or a text is bad (the message names its row).
    """
    if kind_of(series) != "texts":
        raise InvalidInputError(f"{describe(series)} holds vectors; chunks are cut from texts")
    texts = texts_of(series)
    try:
        return default_encoder_or(encoder).encode_chunks(texts, stride=stride, **options)
    except InvalidInputError as exc:
        if exc.position is not None:
            exc.add_context(before=f"row {exc.position} of {describe(series)}: ")
        raise


def chunk_frame(table: pa.Table) -> pl.DataFrame:
    """A chunk table as a DataFrame: ``index`` (the text's row position), then the table's columns."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)  # a Table gives a DataFrame
    return frame.rename({"row": "index"}).with_columns(pl.col("index").cast(pl.get_index_type()))


def offsets(found: Chunks, chunk: np.ndarray) -> list[pl.Series]:
    """``start`` and ``end`` of each chunk (an index into ``found``; -1: none, NULL) as Int32 Series."""
    none = chunk < 0
    at = np.where(none, 0, chunk)
    columns = []
    for name, values in (("start", found.start), ("end", found.end)):
        picked = values[at] if len(values) else np.zeros(len(chunk), dtype=np.int64)
        columns.append(pl.Series(name, pa.array(picked.astype(np.int32), mask=none)))
    return columns
