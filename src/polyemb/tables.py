"""Embed a text column of a CSV or Parquet file into a Parquet file, streaming, atomically."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from polyemb.arrow import encode_arrow, vector_type
from polyemb.errors import InvalidInputError, PolyembError

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = ["EmbedReport", "embed_file", "read_table_batches"]

CHUNK_ROWS = 16_384
_PARQUET = (".parquet", ".pq", ".parq")
_CSV = (".csv", ".tsv")
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class EmbedReport:
    """What :func:`embed_file` wrote."""

    output: Path
    rows: int
    null_texts: int
    model: str


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in _PARQUET:
        return "parquet"
    if last in _CSV:
        return last[1:]
    raise InvalidInputError(
        f"cannot tell the format of {str(path)!r} from its name; use a .csv, .tsv or .parquet file"
    )


def read_table_batches(
    path: str | os.PathLike[str], column: str, *, rows: int = CHUNK_ROWS
) -> tuple[pa.Schema, int | None, Iterator[pa.RecordBatch]]:
    """Open a CSV/TSV or Parquet file for streaming in record batches.

    CSV: ``column`` is read as text whatever it looks like; an empty unquoted cell is NULL,
    a quoted empty cell ``""`` is the empty string (as DuckDB reads CSV).

    Returns:
        ``(schema, total rows or None when unknown, batches)``.

    Raises:
        InvalidInputError: Unknown format, or ``column`` is not in the file.
    """
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"input file {str(source)!r} does not exist")
    kind = _kind(source)
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(source)
            schema = parquet.schema_arrow
            _check_column(schema, column, source)
            return schema, parquet.metadata.num_rows, parquet.iter_batches(batch_size=rows)
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(
                column_types={column: pa.string()},
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"cannot read {str(source)!r} as {kind}: {exc}") from exc
    _check_column(reader.schema, column, source)
    return reader.schema, None, _rebatch(reader, rows)


def _rebatch(reader: pacsv.CSVStreamingReader, rows: int) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _check_column(schema: pa.Schema, column: str, source: Path) -> None:
    if column in schema.names:
        return
    close = difflib.get_close_matches(column, schema.names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidInputError(
        f"column {column!r} is not in {str(source)!r}; its columns are {schema.names}.{hint}"
    )


def _guarded(batches: Iterator[pa.RecordBatch], source: str | os.PathLike[str]) -> Iterator[pa.RecordBatch]:
    """Re-raise a parse error met mid-file (a CSV cell that breaks a column's type) as ours."""
    try:
        yield from batches
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"cannot read {os.fspath(source)!r}: {exc}") from exc


def embed_file(
    encoder: Encoder,
    source: str | os.PathLike[str],
    column: str,
    output: str | os.PathLike[str],
    *,
    vector_column: str = "embedding",
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int | None = None,
    show_progress: bool | None = None,
) -> EmbedReport:
    """Write ``source``'s columns plus a vector column to the Parquet file ``output``.

    Streams ``chunk_rows`` rows at a time, so memory does not grow with the file. The output
    appears only when complete: it is written to ``output.partial`` and renamed at the end, and
    the partial file is removed if anything fails or the run is interrupted. The model's
    provenance is stored in the file's schema metadata under ``polyemb``.

    Raises:
        InvalidInputError: Unreadable input, a missing column, or an existing ``vector_column``.
    """
    schema, total, batches = read_table_batches(source, column, rows=chunk_rows)
    if vector_column in schema.names:
        raise InvalidInputError(
            f"the input already has a column {vector_column!r}; choose another --vector-column"
        )
    metadata = dict(schema.metadata or {})
    metadata[b"polyemb"] = json.dumps(
        {
            "model": encoder.provenance,
            "text_column": column,
            "vector_column": vector_column,
            "dim": encoder.dim,
        }
    ).encode()
    out_schema = schema.append(pa.field(vector_column, vector_type(encoder.dim))).with_metadata(metadata)
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    rows = nulls = 0
    try:
        with (
            pq.ParquetWriter(partial, out_schema) as writer,
            tqdm(
                total=total,
                unit="row",
                desc="embedding",
                disable=not show_progress if show_progress is not None else None,
            ) as bar,
        ):
            for batch in _guarded(batches, source):
                try:
                    vectors = encode_arrow(encoder, batch.column(column), name=f"column {column!r}")
                except PolyembError as exc:
                    raise type(exc)(f"{exc} (in rows {rows}..{rows + batch.num_rows - 1})") from exc
                table = pa.Table.from_batches([batch]).append_column(vector_column, vectors)
                writer.write_table(table.cast(out_schema))
                rows += batch.num_rows
                nulls += vectors.null_count
                bar.update(batch.num_rows)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return EmbedReport(output=target, rows=rows, null_texts=nulls, model=encoder.provenance)
