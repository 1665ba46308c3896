"""Chunks (the windows of texts) as Arrow: the table ``Encoder.encode_chunks`` gives, and per-row lists.

A chunk table has one row per window: ``row`` (the text's position in the input), ``chunk`` (0, 1,
... within the text), ``start`` and ``end`` (character offsets: ``text[start:end]`` is the window's
text), ``tokens`` (what the model read, special tokens included) and ``vector``. A NULL text has no
rows. The engines that hold one value per text (DuckDB, Spark) carry a text's chunks as a list of
structs, NULL for a NULL text: :func:`chunk_lists` and :func:`chunks_from_lists` convert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from polyemb.arrow import vector_type, vectors_from_arrow, vectors_to_arrow
from polyemb.errors import InvalidInputError

if TYPE_CHECKING:
    from polyemb.windows import EncodedWindows

__all__ = [
    "CHUNK_FIELDS",
    "Chunks",
    "chunk_lists",
    "chunk_struct",
    "chunk_table",
    "chunks_from_lists",
    "chunks_of_table",
    "distinct_present",
]

CHUNK_FIELDS = ("start", "end", "tokens", "vector")
"""The fields of a chunk in a per-row list (the table adds ``row`` and ``chunk`` before them)."""


def chunk_struct(dim: int, model: str | None = None) -> pa.DataType:
    """The Arrow type of one chunk in a list: ``struct<start, end, tokens: int32, vector>``."""
    return pa.struct(
        [
            pa.field("start", pa.int32()),
            pa.field("end", pa.int32()),
            pa.field("tokens", pa.int32()),
            pa.field("vector", vector_type(dim, model)),
        ]
    )


def distinct_present(items: list[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The texts of ``items`` that are not None, de-duplicated, and where each one goes.

    Returns:
        ``(present, inverse, distinct)``: the int64 positions of the texts that are not None,
        each one's index among the distinct texts, and the distinct texts in order of first
        appearance.
    """
    index: dict[str, int] = {}
    present = [position for position, text in enumerate(items) if text is not None]
    inverse = [index.setdefault(text, len(index)) for text in items if text is not None]
    return np.asarray(present, dtype=np.int64), np.asarray(inverse, dtype=np.int64), list(index)


def chunk_table(
    encoded: EncodedWindows, present: np.ndarray, inverse: np.ndarray, model: str | None
) -> pa.Table:
    """The chunk table of texts whose distinct values' windows are ``encoded``.

    Args:
        encoded: The windows of the distinct texts, text by text (with character offsets).
        present: int64 input position of each text that is not None, increasing.
        inverse: int64 index of each of those texts among the distinct texts.
        model: The provenance recorded in the vector column's type.

    Returns:
        One row per window of each present text, by position then window.
    """
    distinct = int(inverse.max()) + 1 if len(inverse) else 0
    per_text = np.bincount(encoded.owner, minlength=distinct)
    first_of_text = np.concatenate([[0], np.cumsum(per_text)[:-1]]).astype(np.int64)
    counts = per_text[inverse]
    total = int(counts.sum())
    before = np.repeat(np.cumsum(counts) - counts, counts)
    chunk = np.arange(total, dtype=np.int64) - before
    take = chunk + np.repeat(first_of_text[inverse], counts)
    if encoded.starts is None or encoded.ends is None:
        raise InvalidInputError("a chunk table needs the windows' character offsets")
    return pa.table(
        {
            "row": pa.array(np.repeat(present, counts), pa.int64()),
            "chunk": pa.array(chunk.astype(np.int32), pa.int32()),
            "start": pa.array(encoded.starts[take], pa.int32()),
            "end": pa.array(encoded.ends[take], pa.int32()),
            "tokens": pa.array(encoded.tokens[take], pa.int32()),
            "vector": vectors_to_arrow(encoded.vectors[take], model=model),
        }
    )


def chunk_lists(table: pa.Table, rows: int) -> pa.ListArray:
    """A chunk table as one list of chunk structs per input row; NULL for a row without chunks (None).

    Args:
        table: A chunk table (rows in order, as :meth:`Encoder.encode_chunks` gives it).
        rows: How many input rows.
    """
    row = table.column("row").to_numpy()
    counts = np.bincount(row, minlength=rows)[:rows] if len(row) else np.zeros(rows, dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    fields = [table.column(name).combine_chunks() for name in CHUNK_FIELDS]
    structs = pa.StructArray.from_arrays(fields, names=list(CHUNK_FIELDS))
    present = np.zeros(rows, dtype=bool)
    present[row] = True
    return pa.ListArray.from_arrays(offsets, structs, mask=pa.array(~present))


@dataclass(frozen=True)
class Chunks:
    """Chunks as numpy: each one's row, offsets and vector, by row then window.

    Attributes:
        row: int64 row of each chunk (non-decreasing).
        start: int64 character offset where it starts in its row's text.
        end: int64 character offset where it ends.
        vectors: (chunks, dim) float32.
    """

    row: np.ndarray
    start: np.ndarray
    end: np.ndarray
    vectors: np.ndarray


def chunks_of_table(table: pa.Table) -> Chunks:
    """A chunk table's columns as numpy."""
    vectors, _ = vectors_from_arrow(table.column("vector"), name="the chunk vectors")
    return Chunks(
        table.column("row").to_numpy().astype(np.int64),
        table.column("start").to_numpy().astype(np.int64),
        table.column("end").to_numpy().astype(np.int64),
        vectors,
    )


def chunks_from_lists(array: pa.Array | pa.ChunkedArray, *, name: str = "chunks") -> Chunks:
    """A column of chunk lists (as :func:`chunk_lists` makes, or an engine gives back) as numpy.

    A NULL or empty list is a row without chunks.

    Raises:
        InvalidInputError: Not a list of structs with ``start``, ``end`` and ``vector``.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(
        kind.value_type
    ):
        raise InvalidInputError(f"{name} has Arrow type {kind}, not a list of chunk structs")
    names = {kind.value_type.field(i).name for i in range(kind.value_type.num_fields)}
    missing = {"start", "end", "vector"} - names
    if missing:
        raise InvalidInputError(f"{name}: the chunk structs lack {sorted(missing)}")
    counts = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(array), dtype=np.int64), counts)
    values = array.flatten()
    vectors, valid = vectors_from_arrow(values.field("vector"), name=f"{name} vectors")
    if not valid.all():
        raise InvalidInputError(f"{name}: a chunk has a NULL vector")
    return Chunks(
        row,
        values.field("start").to_numpy(zero_copy_only=False).astype(np.int64),
        values.field("end").to_numpy(zero_copy_only=False).astype(np.int64),
        vectors,
    )
