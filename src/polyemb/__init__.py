"""polyemb: multilingual sentence embeddings and semantic similarity where tabular data lives.

The core is engine-free: ``polyemb.load()`` gives an :class:`Encoder` whose ``encode`` turns
texts into float32 vectors, and ``polyemb.open_store(path)`` a vector store that keeps them, so
each text is embedded once per model. The engine adapters are imported by name: ``polyemb.pandas``,
``polyemb.duckdb``, ``polyemb.spark``. They only convert their columns and call the core (encoding,
NULLs, scoring, the store are all here); ``ARCHITECTURE.md`` is the contract a new adapter follows.

The names below torch are imported on first use, so ``import polyemb.cli`` (``polyemb --help``)
and the errors cost no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from polyemb.errors import (
    ColumnNotFoundError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    PolyembError,
    StoreError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from polyemb.encoder import Encoder, default_encoder, load, set_default_encoder
    from polyemb.finding import DEFAULT_MODEL
    from polyemb.store import VectorStore, open_store

__all__ = [
    "DEFAULT_MODEL",
    "ColumnNotFoundError",
    "Encoder",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "PolyembError",
    "StoreError",
    "UnsupportedModelError",
    "VectorStore",
    "default_encoder",
    "load",
    "open_store",
    "set_default_encoder",
]

__version__ = "0.2.0"

# Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "DEFAULT_MODEL": "polyemb.finding",
    "Encoder": "polyemb.encoder",
    "default_encoder": "polyemb.encoder",
    "load": "polyemb.encoder",
    "set_default_encoder": "polyemb.encoder",
    "VectorStore": "polyemb.store",
    "open_store": "polyemb.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polyemb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
