"""The errors polyemb raises: one root and a few subclasses that are also builtins."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ColumnNotFoundError",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelMismatchError",
    "PolyembError",
    "SqlError",
    "StoreError",
    "UnsupportedModelError",
]


class PolyembError(Exception):
    """Root of every error polyemb raises: catch this to catch them all."""

    def add_context(self, before: str = "", after: str = "") -> None:
        """Put context around the message, in place: the type and every attribute stay.

        For a caller that knows where the error happened (a SQL function, a row range) and
        re-raises it with a bare ``raise``: rebuilding it would drop its fields.
        """
        message = str(self.args[0]) if self.args else ""
        self.args = (f"{before}{message}{after}", *self.args[1:])


class ModelNotFoundError(PolyembError, FileNotFoundError):
    """The model is neither a local folder nor reachable on the Hugging Face Hub."""


class ModelLoadError(PolyembError, OSError):
    """A model folder exists but a file in it is missing, corrupt or of the wrong shape."""


class UnsupportedModelError(PolyembError, ValueError):
    """The model asks for something the encoder does not implement (a pooling mode, a module)."""


class InvalidInputError(PolyembError, ValueError):
    """An input is not what the function takes: a non-string text, a bad option value.

    Attributes:
        position: For a bad item in a sequence of texts, its 0-based position (adapters turn
            it into a row label or column name); None otherwise.
    """

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ColumnNotFoundError(InvalidInputError):
    """A column named by the caller is not in the table, file or DataFrame.

    Attributes:
        column: The name asked for.
        available: The names that are there.
    """

    def __init__(self, message: str, *, column: str, available: list[str]) -> None:
        super().__init__(message)
        self.column = column
        self.available = available

    @classmethod
    def from_missing(cls, column: str, available: Iterable[object], where: str) -> ColumnNotFoundError:
        """The one message for a missing column: where, what is there, and the closest name.

        Example:
            >>> str(ColumnNotFoundError.from_missing("titel", ["id", "title"], "'news.csv'"))
            "column 'titel' is not in 'news.csv'; its columns are ['id', 'title']. Did you mean 'title'?"
        """
        names = [str(name) for name in available]
        close = difflib.get_close_matches(str(column), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return cls(
            f"column {column!r} is not in {where}; its columns are {names}.{hint}",
            column=column,
            available=names,
        )


class ModelMismatchError(InvalidInputError):
    """Vectors of two different models were to be compared: their cosines would mean nothing."""


class MissingDependencyError(PolyembError, ImportError):
    """An optional engine (pandas, duckdb, pyspark) is needed but not installed."""


class SqlError(PolyembError):
    """A statement failed in DuckDB (``polyemb sql``)."""


class StoreError(PolyembError, OSError):
    """A vector store cannot be read or written (a read-only path, a file that is not a store)."""
