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
    """An input is not what the function takes: a non-string text, a bad option value."""


class MissingDependencyError(PolyembError, ImportError):
    """An optional engine (pandas, duckdb, pyspark) is needed but not installed."""
