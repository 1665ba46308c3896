"""``polyemb sql``: SQL on an embedded DuckDB with polyemb's functions registered."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from polyemb.cache import DEFAULT_CACHE_MB
from polyemb.cli.shared import (
    Subparsers,
    add_store_options,
    load_encoder,
    model_options,
    positive_int,
    store_of,
)
from polyemb.errors import InvalidInputError, SqlError
from polyemb.options import SCORES
from polyemb.scores import score_spec

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.store import VectorStore

__all__ = ["add_parser"]

# Statement types whose rows are printed; the others are only executed, but for these with a
# RETURNING clause. EXECUTE prints what its prepared statement returns (rows, or a change's count).
# A statement that reads a PIVOT without IN runs as several, and DuckDB types it MULTI (2.x) or
# as the first of them (1.x: CREATE, the values' enum type; TRANSACTION): it is a query (PIVOT,
# DESCRIBE, SUMMARIZE, ...) unless it starts as a change, past WITH's queries.
_ROW_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CALL", "RELATION", "EXECUTE"}
_PIVOT_TYPES = {"MULTI", "CREATE", "TRANSACTION"}
_PIVOT_WORDS = {"PIVOT", "PIVOT_WIDER", "PIVOT_LONGER", "UNPIVOT"}
_CHANGE_WORDS = {"CREATE", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "ALTER", "DROP", "EXPORT", "ATTACH"}
# What DuckDB's COPY quotes in a CSV cell.
_CSV_QUOTED = re.compile(r'[,"\r\n#]')
_RETURNING_STATEMENTS = {"INSERT", "UPDATE", "DELETE", "MERGE_INTO"}


def add_parser(commands: Subparsers) -> None:
    """Add ``sql`` to the ``commands`` subparsers."""
    sql = commands.add_parser(
        "sql",
        parents=[model_options()],
        help="run SQL on embedded DuckDB with embed() and semantic_similarity()",
        description=(
            "Run SQL on an embedded DuckDB (in memory, or --db FILE) with polyemb's functions "
            "registered: embed(text) -> FLOAT[dim], embed_chunks(text), semantic_similarity(a, b), "
            "embedding_model(), embedding_cache_stats(), embedding_cache_clear(), "
            "embedding_store_stats(). Files named in the query are read by "
            "DuckDB itself ('data.csv', read_parquet('*.parquet')). Each statement that returns rows "
            "(queries; INSERT, UPDATE, DELETE and MERGE with RETURNING; EXECUTE) is printed."
        ),
    )
    sql.add_argument("query", nargs="?", help="the SQL (or use -f)")
    sql.add_argument("-f", "--file", help="read the SQL from this file")
    sql.add_argument("--db", help="a DuckDB database file (default: in memory)")
    _add_output_options(sql)
    sql.add_argument(
        "--extension",
        action="append",
        default=[],
        metavar="NAME",
        help="load a DuckDB extension first, e.g. --extension vss (repeatable)",
    )
    # None, not the size: polyemb.duckdb.register then leaves a shared cache's size as it is.
    sql.add_argument(
        "--cache-mb",
        type=float,
        default=None,
        help=f"embedding cache size in MiB (default {DEFAULT_CACHE_MB:g})",
    )
    add_store_options(sql, "a vector store behind embed(): embeds only texts it lacks")
    _add_index_options(sql)
    sql.set_defaults(run=_sql)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--csv", dest="format", action="store_const", const="csv", help="print CSV")
    out.add_argument(
        "--json", dest="format", action="store_const", const="json", help="print a JSON array of rows"
    )
    parser.set_defaults(format="table")
    parser.add_argument(
        "--max-rows", type=positive_int, default=40, help="rows shown in table output (default %(default)s)"
    )
    parser.add_argument(
        "--max-width",
        type=positive_int,
        default=None,
        help="table width in characters (default: the terminal's)",
    )


def _add_index_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "QUERY"),
        help=(
            "hold QUERY's rows (columns key, and text or vector) as vectors and register "
            "NAME_nearest(text, k) -> STRUCT(key, score)[], for semantic joins (repeatable)"
        ),
    )
    parser.add_argument(
        "--index-score",
        choices=SCORES,
        default="cosine",
        help="how --index scores pairs (default %(default)s)",
    )
    parser.add_argument(
        "--index-source",
        metavar="QUERY",
        help="margin/csls: SQL giving the texts that will be matched against --index",
    )


def _sql(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.file is None):
        raise InvalidInputError("give a query or -f FILE (one of them)")
    _check_index_options(args)
    text = args.query if args.query is not None else _read_sql(args.file)
    # Before duckdb itself: without duckdb installed, polyemb.duckdb raises the error that says
    # how to get it.
    from polyemb.duckdb import load_extension, register

    con = _connect(args.db)
    try:
        for extension in args.extension:
            load_extension(con, extension)
        store = store_of(args)
        encoder = load_encoder(args)
        register(con, encoder, store=store, cache_mb=args.cache_mb, batch_size=args.batch_size)
        with _interruptible(con):
            _register_indexes(con, args, encoder, store)
            _run_statements(con, text, args)
    finally:
        con.close()
    return 0


def _connect(database: str | None) -> Any:
    import duckdb

    try:
        return duckdb.connect(database or ":memory:")
    except duckdb.Error as exc:  # a missing folder, a file that is not a DuckDB database, a lock
        raise InvalidInputError(f"cannot open the database {database!r}: {exc}") from exc


def _check_index_options(args: argparse.Namespace) -> None:
    """Before any work: --index-score and --index-source as they go together (named as options)."""
    relative = score_spec(args.index_score).neighbourhoods
    if not args.index and (args.index_source is not None or args.index_score != "cosine"):
        raise InvalidInputError("--index-score and --index-source are options of --index NAME QUERY")
    if relative and args.index_source is None:
        raise InvalidInputError(
            f"--index-score {args.index_score} scores a pair against both sides' neighbourhoods: give "
            "--index-source QUERY, SQL giving the texts that will be matched against --index"
        )
    if not relative and args.index_source is not None:
        raise InvalidInputError("--index-source is read by --index-score margin or csls only")


def _register_indexes(
    con: Any, args: argparse.Namespace, encoder: Encoder, store: VectorStore | None
) -> None:
    """Each ``--index NAME QUERY`` as ``NAME_nearest``."""
    import duckdb

    from polyemb.duckdb import register_index

    for name, query in args.index:
        try:
            columns = con.sql(query).columns
        except duckdb.Error as exc:
            raise SqlError(f"--index {name}: {exc}\n  in: {query.strip()[:200]}") from exc
        if "key" not in columns or not {"text", "vector"} & set(columns):
            raise InvalidInputError(
                f"--index {name}: the query must give the columns key and text (or vector), not {columns}"
            )
        texts = "text" in columns
        try:
            register_index(
                con,
                name,
                query,
                key="key",
                text="text" if texts else None,
                vector=None if texts else "vector",
                score=args.index_score,
                queries=args.index_source,
                encoder=encoder,
                store=store,
                batch_size=args.batch_size,
            )
        except duckdb.Error as exc:  # reading its rows, or --index-source's for margin and csls
            raise SqlError(f"--index {name}: {exc}") from exc


def _run_statements(con: Any, text: str, args: argparse.Namespace) -> None:
    """Run each statement of ``text``, printing the rows of those that return rows."""
    import duckdb

    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise InvalidInputError(f"cannot parse the SQL: {exc}") from exc
    for statement in statements:
        query = _text_of(statement)
        try:
            if _returns_rows(statement):
                _print_result(con, query, args)
            else:
                con.execute(query)
        except duckdb.Error as exc:
            raise SqlError(f"{exc}\n  in: {statement.query.strip()[:200]}") from exc


@contextlib.contextmanager
def _interruptible(con: Any) -> Iterator[None]:
    """Ctrl-C stops the running statement (``con.interrupt()``), and the block ends interrupted.

    DuckDB turns the KeyboardInterrupt into an error of its own, a RuntimeError or an
    InterruptException by version (which may reach here as a SqlError): an error after Ctrl-C
    came is raised as KeyboardInterrupt, so the command ends as interrupted (exit 130). Off the
    main thread (no signal handlers there), or where SIGINT is ignored (a shell's background
    job), nothing changes.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job: Ctrl-C is not for it
    ):
        yield
        return
    came = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        came.set()
        con.interrupt()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception as exc:
        if came.is_set():
            raise KeyboardInterrupt from exc
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _text_of(statement: Any) -> str:
    """A parsed statement's SQL.

    Raises:
        InvalidInputError: DuckDB lost it: duckdb 1.x keeps no text for a PIVOT without IN (and
            fails on the statements after it), where 2.x runs it.
    """
    import duckdb

    try:
        query = str(statement.query)
    except IndexError:
        query = ""
    if not query.strip():
        raise InvalidInputError(
            f"duckdb {duckdb.__version__} cannot split this SQL into statements (a PIVOT without IN "
            "loses its text there): list the values, PIVOT ... ON k IN (...), or use duckdb 2"
        )
    return query


def _returns_rows(statement: Any) -> bool:
    """Whether a parsed statement's rows are printed: a query, or a change with a RETURNING clause."""
    import duckdb

    kind = str(statement.type).rsplit(".", 1)[-1]
    if kind in _PIVOT_TYPES:
        kind = _pivot_kind(statement.query) or kind
    if kind in _ROW_STATEMENTS:
        return True
    if kind not in _RETURNING_STATEMENTS:
        return False
    query = statement.query
    # RETURNING as a keyword: not inside a string, a comment or a longer name.
    return any(
        token == duckdb.token_type.keyword and query[start : start + 9].upper() == "RETURNING"
        for start, token in duckdb.tokenize(query)
    )


def _pivot_kind(query: str) -> str | None:
    """A statement's kind if it reads a PIVOT; None where it has no PIVOT.

    A change's kind by its first top-level keyword (past WITH's queries), else SELECT.
    """
    import duckdb

    tokens = duckdb.tokenize(query)
    ends = [start for start, _ in tokens[1:]] + [len(query)]
    words = [
        (query[start:end].strip().upper(), token)
        for (start, token), end in zip(tokens, ends, strict=True)
        if token in (duckdb.token_type.keyword, duckdb.token_type.operator)
    ]
    if not any(word in _PIVOT_WORDS for word, _ in words):
        return None
    depth = 0
    for word, token in words:
        if token == duckdb.token_type.operator:
            depth += word.count("(") - word.count(")")
        elif depth == 0 and word in _CHANGE_WORDS:
            return "MERGE_INTO" if word == "MERGE" else word
        elif depth == 0 and word not in ("WITH", "RECURSIVE", "AS", "NOT", "MATERIALIZED"):
            return "SELECT"
    return "SELECT"


def _read_sql(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the SQL file {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"the SQL file {path!r} is not UTF-8 (at byte {exc.start}); save it as UTF-8"
        ) from exc


def _print_result(con: Any, query: str, args: argparse.Namespace) -> None:
    if args.format == "table":
        _show_table(con, query, args)
    else:
        _write_rows(con, query, args.format)


def _show_table(con: Any, query: str, args: argparse.Namespace) -> None:
    """DuckDB's own box rendering: ``--max-rows`` rows at most, so nothing is fetched whole."""
    relation = con.sql(query)
    if relation is not None:
        width = args.max_width or shutil.get_terminal_size(fallback=(120, 24)).columns
        relation.show(max_rows=args.max_rows, max_width=width)


def _write_rows(con: Any, query: str, output: str) -> None:
    """CSV or one JSON array, written :data:`_CHUNK_ROWS` rows at a time as they are fetched.

    A large result is never held whole in Python. DuckDB computes ahead of the rows written, so a
    statement that fails part way may have printed nothing or part of its output (CSV: the header
    and some rows; JSON: an array with no end) before the error, and the command exits 1.
    """
    con.execute(query)
    if con.description is None:
        return
    columns = [column[0] for column in con.description]
    if output == "csv":
        sys.stdout.write(_csv_line(tuple(columns)))
        while rows := con.fetchmany(_CHUNK_ROWS):
            sys.stdout.write("".join(_csv_line(row) for row in rows))
        return
    # The same text as json.dumps of the whole list of rows.
    names = _unique_names(columns)
    separator = "["
    while rows := con.fetchmany(_CHUNK_ROWS):
        items = _json([dict(zip(names, row, strict=True)) for row in rows])[1:-1]  # no brackets
        sys.stdout.write(separator + items)
        separator = ", "
    sys.stdout.write("[]\n" if separator == "[" else "]\n")


def _unique_names(columns: list[str]) -> list[str]:
    """Column names made unique for JSON objects, as DuckDB names a table's: ``name``, ``name_1``, ..."""
    taken: set[str] = set()
    names = []
    for column in columns:
        name, n = column, 0
        while name in taken:
            n += 1
            name = f"{column}_{n}"
        taken.add(name)
        names.append(name)
    return names


def _csv_line(row: tuple[Any, ...]) -> str:
    """A CSV line, quoted as DuckDB's COPY quotes one: NULL as nothing, an empty text as ``""``."""
    return ",".join(_csv_cell(value) for value in row) + "\n"


def _csv_cell(value: Any) -> str:
    """A CSV cell: lists and structs as JSON, BLOBs as DuckDB writes them, booleans as true/false.

    Quoted where DuckDB quotes (a delimiter, quote, line break or ``#``; empty); other values as
    Python writes them (``str``).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        text = _json(value)
    else:
        text = _blob_text(value) if isinstance(value, bytes) else str(value)
    if not text or _CSV_QUOTED.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _json(value: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinities as null, BLOBs as DuckDB writes them, other types as str."""
    return json.dumps(_json_safe(value), default=str, ensure_ascii=False, allow_nan=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return _blob_text(value)
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _blob_text(value: bytes) -> str:
    """A BLOB as DuckDB casts it to text: printable ASCII as it is, other bytes as an escape."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in _ESCAPED else f"\\x{b:02X}" for b in value)


# Rows fetched at a time for CSV and JSON output (DuckDB's vector size is 2,048).
_CHUNK_ROWS = 10_240

# The printable bytes DuckDB escapes too: the quotes and the backslash.
_ESCAPED = frozenset(b"\"'\\")
