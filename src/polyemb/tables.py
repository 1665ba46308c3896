"""Table files: the one reader of CSV, TSV, Parquet and text files, and ``embed_file`` (streaming, atomic)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from polyemb.arrow import encode_arrow, vector_type
from polyemb.errors import ColumnNotFoundError, InvalidInputError, PolyembError
from polyemb.options import check_positive_int
from polyemb.progress import progress_bar

if TYPE_CHECKING:
    from polyemb.embedder import Embedder

__all__ = [
    "EmbedReport",
    "check_output",
    "check_unique_names",
    "embed_file",
    "publishing",
    "read_table",
    "read_table_batches",
    "table_format",
]

CHUNK_ROWS = 16_384
_PARQUET = (".parquet", ".pq", ".parq")
_DELIMITED = {".csv": ",", ".tsv": "\t"}
_LINES = (".txt",)
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class EmbedReport:
    """What :func:`embed_file` wrote."""

    output: Path
    rows: int
    null_texts: int
    model: str


def table_format(path: Path) -> str:
    """``"parquet"``, ``".csv"``, ``".tsv"`` or ``"lines"``, from the name (compression suffixes aside)."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in _PARQUET:
        return "parquet"
    if last in _DELIMITED:
        return last
    if last in _LINES:
        return "lines"
    raise InvalidInputError(
        f"cannot tell the format of {str(path)!r} from its name; use a .csv, .tsv, .parquet or .txt "
        "(one text per line) file"
    )


def read_table_batches(
    path: str | os.PathLike[str],
    columns: Sequence[str] = (),
    *,
    rows: int = CHUNK_ROWS,
    headerless: Sequence[str] | None = None,
) -> tuple[pa.Schema, int | None, Iterator[pa.RecordBatch]]:
    r"""Open a table file for streaming in record batches: the one reader of CSV, TSV, Parquet and text.

    - Parquet (``.parquet``, ``.pq``, ``.parq``): as written.
    - CSV and TSV, optionally compressed (``.gz``, ``.bz2``, ``.zst``, ``.lz4``): ``columns`` are
      read as text whatever they look like; an empty unquoted cell is NULL, a quoted empty cell
      ``""`` is the empty string (as DuckDB's COPY and ``polyemb sql --csv`` write them; DuckDB
      reads ``""`` as NULL unless ``allow_quoted_nulls = false``). A file whose first row does not name
      ``columns`` has no header if ``headerless`` is given, the row has that many cells and its
      last is a number (an STS file's score): its columns are then called ``headerless``. A
      first row of other names is a header, and a missing column is named in the error.
    - ``.txt`` (UTF-8, a byte order mark ignored): one text per line, in a column ``text``; a
      line ends at ``\n`` (or ``\r\n``) only, so a form feed or a Unicode line separator stays
      inside its text; blank lines are skipped.

    Returns:
        ``(schema, total rows or None when unknown, batches)``.

    Raises:
        InvalidInputError: No such file, an unknown format, an unreadable file, ``rows`` below
            1, or one of ``columns`` named twice in the file.
        ColumnNotFoundError: One of ``columns`` is not in the file.
    """
    check_positive_int("rows", rows)
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"input file {str(source)!r} does not exist")
    kind = table_format(source)
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(source)
            schema = parquet.schema_arrow
            _check_columns(schema.names, columns, source)
            return schema, parquet.metadata.num_rows, parquet.iter_batches(batch_size=rows)
        if kind == "lines":
            with pa.input_stream(source, compression="detect") as stream:
                text = stream.read().decode("utf-8-sig")
            # str.splitlines would also end a line at a form feed, U+2028 and the like: rows
            # that a text editor and wc -l do not see.
            lines = [line.removesuffix("\r") for line in text.split("\n")]
            lines = [line for line in lines if line.strip()]
            table = pa.table({"text": pa.array(lines, pa.string())})
            _check_columns(table.column_names, columns, source)
            return table.schema, table.num_rows, iter(table.to_batches(max_chunksize=rows))
        reader = _open_delimited(source, _DELIMITED[kind], columns, headerless)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {str(source)!r} as {kind.lstrip('.')}: {exc}") from exc
    _check_columns(reader.schema.names, columns, source)
    return reader.schema, None, _rebatch(reader, rows)


def read_table(
    path: str | os.PathLike[str], columns: Sequence[str] = (), *, headerless: Sequence[str] | None = None
) -> pa.Table:
    """A whole table file in memory (see :func:`read_table_batches` for formats and options)."""
    schema, _, batches = read_table_batches(path, columns, headerless=headerless)
    return pa.Table.from_batches(list(_guarded(batches, path)), schema=schema)


def _open_delimited(
    source: Path, delimiter: str, columns: Sequence[str], headerless: Sequence[str] | None
) -> pacsv.CSVStreamingReader:
    """A CSV or TSV file as a stream of batches whose columns are text, as written.

    pyarrow would guess the other columns' types from the first block: ``01234`` became 1234, and
    a column that turns non-numeric after the first block failed the run. So a first pass reads
    the names (pyarrow reads the header: blank lines before it, a quoted newline in it) and its
    guesses from the first block, and every column is then read as a string; but for a column
    other than ``columns`` whose bytes are not UTF-8 in that block, which stays bytes. Quoted
    values may hold newlines, also across pyarrow's blocks.
    """
    names = _header_names(source, delimiter, columns, headerless)
    read = pacsv.ReadOptions(block_size=1 << 24, column_names=names)
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    head = pacsv.open_csv(source, read_options=read, parse_options=parse)
    guessed, wanted = head.schema, set(columns)
    head.close()
    types = {
        field.name: pa.binary()
        if field.name not in wanted and pa.types.is_binary(field.type)
        else pa.string()
        for field in guessed
    }
    return pacsv.open_csv(
        source,
        read_options=read,
        parse_options=parse,
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=False,
        ),
    )


def _header_names(
    source: Path, delimiter: str, columns: Sequence[str], headerless: Sequence[str] | None
) -> list[str] | None:
    """None when the first row is a header (pyarrow reads it); else the names of a header-less file."""
    if headerless is None:
        return None
    with pa.input_stream(source, compression="detect") as stream:
        head = stream.read(1 << 16).decode("utf-8-sig", errors="replace")
    try:
        first = next(csv.reader(io.StringIO(head), delimiter=delimiter), [])
    except csv.Error:  # lines ended by a lone \r (old Mac files): pyarrow reads those
        return None
    if all(column in first for column in columns) or len(first) != len(headerless):
        return None
    try:
        float(first[-1])
    except ValueError:
        return None  # a header of other names: the missing columns are reported by name
    return list(headerless)


def _rebatch(reader: pacsv.CSVStreamingReader, rows: int) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _check_columns(names: list[str], columns: Sequence[str], source: Path) -> None:
    for column in columns:
        if column not in names:
            raise ColumnNotFoundError.from_missing(column, names, repr(str(source)))
        if names.count(column) > 1:
            raise InvalidInputError(
                f"{str(source)!r} has {names.count(column)} columns named {column!r}: rename them so that "
                "the one to read is named once"
            )


def check_output(path: str | os.PathLike[str]) -> Path:
    """The file to write for ``path``, checked before any work: a Parquet file in a folder that exists.

    A link is written through, as the shell's ``>`` writes: its target is replaced, the link kept.

    Raises:
        InvalidInputError: Its folder does not exist, it names (or links to) a folder or something
            else that is not a file (a device such as ``/dev/stdout`` on a terminal or pipe), or
            its name says another format (``.csv``, ``.tsv``, ``.txt``, ``.json``, a compression
            suffix): Parquet under such a name is read wrongly by the next tool.
    """
    given = Path(path)
    # The finished file is renamed over the target: over a link, that would replace the link
    # (/dev/stdout itself, with stdout redirected to a file), so the target is where it points.
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    name = repr(str(given)) if target == given else f"{str(given)!r} (a link to {str(target)!r})"
    if given.is_dir():
        raise InvalidInputError(f"the output {name} is a folder; name a file")
    if given.exists() and not given.is_file():
        # /dev/null, a terminal, a pipe: the finished file would replace it, not be written to it.
        raise InvalidInputError(f"the output {name} exists and is not a file; name a file")
    for last in dict.fromkeys((given.suffix.lower(), target.suffix.lower())):  # the name typed, the file
        if last in _DELIMITED or last in _LINES or last in _COMPRESSED or last in (".json", ".jsonl"):
            raise InvalidInputError(
                f"the output {name} would be Parquet under a {last} name; name it .parquet"
            )
    if not target.parent.is_dir():
        raise InvalidInputError(f"the output's folder {str(target.parent)!r} does not exist; create it first")
    return target


def _guarded(batches: Iterator[pa.RecordBatch], source: str | os.PathLike[str]) -> Iterator[pa.RecordBatch]:
    """Re-raise an error met mid-file (a CSV row of too many cells, a damaged Parquet page) as ours."""
    try:
        yield from batches
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:  # OSError: a damaged Parquet page
        raise InvalidInputError(f"cannot read {os.fspath(source)!r}: {exc}") from exc


def embed_file(
    encoder: Embedder,
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
    appears only when complete (:func:`publishing`). The model's provenance is stored in the
    file's schema metadata under ``polyemb``.

    Raises:
        InvalidInputError: Unreadable input, a missing column, two columns of one name, an
            existing ``vector_column``, or an output that cannot be written (checked before any
            embedding where its folder is missing).
    """
    target = check_output(output)
    schema, total, batches = read_table_batches(source, [column], rows=chunk_rows)
    check_unique_names(schema.names, source)
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
    out_schema = schema.append(pa.field(vector_column, vector_type(encoder.dim, encoder.provenance)))
    out_schema = out_schema.with_metadata(metadata)
    rows = nulls = 0
    with (
        publishing(target) as partial,
        _writer(partial, out_schema) as writer,
        progress_bar(desc="embedding", unit="row", total=total, show=show_progress) as bar,
    ):
        for batch in _guarded(batches, source):
            try:
                vectors = encode_arrow(encoder, batch.column(column), name=f"column {column!r}")
            except PolyembError as exc:
                exc.add_context(after=f" (in rows {rows}..{rows + batch.num_rows - 1})")
                raise
            table = pa.Table.from_batches([batch]).append_column(vector_column, vectors)
            writer.write_table(table.cast(out_schema))
            rows += batch.num_rows
            nulls += vectors.null_count
            bar.update(batch.num_rows)
    return EmbedReport(output=target, rows=rows, null_texts=nulls, model=encoder.provenance)


def check_unique_names(names: Sequence[str], source: str | os.PathLike[str]) -> None:
    """Refuse a table to be written with two columns of one name: pyarrow and pandas cannot read it back."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInputError(
            f"{os.fspath(source)!r} has several columns named {', '.join(map(repr, twice))}: rename them "
            "first (the output would hold them twice, which pyarrow and pandas refuse to read)"
        )


@contextlib.contextmanager
def publishing(target: Path) -> Iterator[Path]:
    """A new file beside ``target`` to write, renamed to ``target`` once the block ends without error.

    Each run writes its own ``TARGET.<random>.partial``, removed if anything fails or the run is
    interrupted; so ``target`` is always a whole file, also when two runs write it at once (the
    last to finish wins). The file is created as ``open`` would create it (the umask applies).

    Raises:
        InvalidInputError: The folder cannot be written, or the rename fails.
    """
    while True:
        partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:  # permission denied, a read-only disk
            raise InvalidInputError(f"cannot write {str(target)!r}: {exc}") from exc
    try:
        yield partial
        os.replace(partial, target)
    except OSError as exc:  # a full disk, the target made a folder meanwhile
        partial.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {str(target)!r}: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    try:
        return pq.ParquetWriter(path, schema)
    except OSError as exc:  # permission denied, a full or read-only disk
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc}") from exc
