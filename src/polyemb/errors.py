"""The errors polyemb raises: one root and a few subclasses that are also builtins."""

from __future__ import annotations

__all__ = [
    "InvalidInputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PolyembError",
    "UnsupportedModelError",
]


class PolyembError(Exception):
    """Root of every error polyemb raises: catch this to catch them all."""


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


class MissingDependencyError(PolyembError, ImportError):
    """An optional engine (pandas, duckdb, pyspark) is needed but not installed."""
