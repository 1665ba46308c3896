"""polyemb: multilingual sentence embeddings and semantic similarity where tabular data lives.

The core is engine-free: ``polyemb.load()`` gives an :class:`Encoder` whose ``encode`` turns
texts into float32 vectors. The engine adapters are imported by name: ``polyemb.pandas``,
``polyemb.duckdb``, ``polyemb.spark``.
"""

from __future__ import annotations

from polyemb.encoder import Encoder, default_encoder, load, set_default_encoder
from polyemb.errors import (
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    PolyembError,
    UnsupportedModelError,
)
from polyemb.loading import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PolyembError",
    "UnsupportedModelError",
    "default_encoder",
    "load",
    "set_default_encoder",
]

__version__ = "0.1.0"
