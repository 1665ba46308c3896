"""What polyemb's DuckDB functions share: duckdb's own names, and creating functions that fail clearly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from polyemb.errors import InvalidInputError, MissingDependencyError, PolyembError

try:
    import duckdb
    from duckdb.func import FunctionNullHandling, PythonUDFType
    from duckdb.sqltypes import BIGINT, FLOAT, INTEGER, VARCHAR
except ImportError as exc:  # pragma: no cover - exercised only without duckdb
    raise MissingDependencyError("polyemb.duckdb needs duckdb: pip install 'polyemb[duckdb]'") from exc

__all__ = [
    "BIGINT",
    "FLOAT",
    "INTEGER",
    "VARCHAR",
    "FunctionNullHandling",
    "PythonUDFType",
    "create_function",
    "duckdb",
    "remove_function",
    "reported",
]


@contextmanager
def reported(function: str) -> Iterator[None]:
    """Turn any failure inside a UDF into one line that names the function and the problem.

    DuckDB shows a UDF's exception as "Python exception occurred while executing the UDF:
    <type>: <message>"; the query fails, the connection stays usable.
    """
    try:
        yield
    except PolyembError as exc:
        exc.add_context(f"{function}(): ")
        raise
    except Exception as exc:  # anything else (out of memory, a torch error) still gets context
        raise PolyembError(
            f"{function}() failed: {type(exc).__name__}: {exc}. If the model or its device "
            "is the problem, load another with polyemb.duckdb.register(con, polyemb.load(...))"
        ) from exc


def create_function(
    con: duckdb.DuckDBPyConnection,
    name: str,
    function: Callable[..., Any],
    parameters: list[Any],
    returns: Any,
    options: dict[str, Any],
) -> None:
    """Create (or replace) a function on the connection.

    Raises:
        InvalidInputError: Another connection to the same database registered ``name``: the
            database's connections share its functions, and only that connection can replace it.
    """
    remove_function(con, name)
    try:
        con.create_function(name, function, parameters, returns, **options)
    except duckdb.CatalogException as exc:
        if "already exists" not in str(exc):
            raise
        raise InvalidInputError(
            f"this database already has a function {name}(), registered on another connection to "
            "it (a database's connections share its functions, and only the connection that "
            "registered one can replace it): register another set here with another prefix=, "
            "or replace them on that connection"
        ) from exc


def remove_function(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Remove a function from the connection, if it is there."""
    try:
        con.remove_function(name)
    except duckdb.InvalidInputException:
        pass  # not registered
