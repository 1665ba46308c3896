"""DuckDB: ``embed()`` and ``semantic_similarity()`` inside SQL.

``register(con)`` adds vectorized (Arrow) scalar functions to a connection. ``embed`` returns a
fixed-size ``FLOAT[dim]`` ARRAY, so it feeds DuckDB's own ``array_cosine_similarity``,
``array_cosine_distance``, ``array_inner_product`` and the ``vss`` extension's HNSW index with
no cast.

Example:
    >>> import duckdb, polyemb.duckdb
    >>> con = duckdb.connect()
    >>> polyemb.duckdb.register(con)
    >>> con.sql("SELECT title FROM 'articles.csv' "
    ...         "ORDER BY array_cosine_distance(embed(title), embed('storm damage')) LIMIT 3")
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from polyemb.arrow import texts_from_arrow, vectors_to_arrow
from polyemb.cache import EmbeddingCache
from polyemb.chunks import chunk_lists
from polyemb.duckdb._udf import (
    BIGINT,
    FLOAT,
    INTEGER,
    VARCHAR,
    FunctionNullHandling,
    PythonUDFType,
    create_function,
    duckdb,
    reported,
)
from polyemb.duckdb.index import SemanticIndex, register_index
from polyemb.encoder import Encoder, default_encoder
from polyemb.errors import InvalidInputError, MissingDependencyError
from polyemb.options import check_sql_prefix
from polyemb.similarity import paired_cosines
from polyemb.store import RunStats, StoredEncoder, VectorStore, embedder_for

__all__ = ["FUNCTIONS", "SemanticIndex", "load_extension", "register", "register_index"]

# The names register() creates (each behind the optional prefix).
FUNCTIONS = (
    "embed",
    "embed_chunks",
    "semantic_similarity",
    "embedding_model",
    "embedding_cache_stats",
    "embedding_cache_clear",
    "embedding_store_stats",
)


def register(
    con: duckdb.DuckDBPyConnection,
    encoder: Encoder | None = None,
    *,
    store: VectorStore | None = None,
    prefix: str = "",
    cache_mb: float | None = None,
    batch_size: int | None = None,
) -> EmbeddingCache:
    """Register polyemb's functions on a DuckDB connection (replacing its earlier registrations).

    The functions belong to the connection's database: its other connections (a ``cursor()``,
    another ``duckdb.connect`` of the same file) call them while this one is open, and cannot
    replace them (another ``prefix=`` registers a second set).

    Functions (each name behind ``prefix``):

    - ``embed(VARCHAR) -> FLOAT[dim]``: the text's unit vector; NULL in, NULL out.
    - ``embed_chunks(VARCHAR) -> STRUCT(start INTEGER, "end" INTEGER, tokens INTEGER,
      vector FLOAT[dim])[]``: every window of the text (:meth:`polyemb.Encoder.encode_chunks`,
      the encoder's stride), to ``unnest``; ``text[start + 1 : "end"]`` is a window's text in
      SQL's 1-based slices. NULL in, NULL out.
    - ``semantic_similarity(VARCHAR, VARCHAR) -> FLOAT``: cosine of the two texts' vectors;
      NULL if either is NULL.
    - ``embedding_model() -> VARCHAR``: the model's provenance (``id@revision`` or
      ``path@sha256:...``), to store beside vectors.
    - ``embedding_cache_stats() -> STRUCT(hits, misses, entries, capacity)``.
    - ``embedding_cache_clear() -> BIGINT``: empties the cache, returns the entries dropped.
    - ``embedding_store_stats() -> STRUCT(looked_up, found, embedded, written)``: what the
      vector store did for this registration (all zeros without a store).

    ``embed`` and ``semantic_similarity`` are deterministic, so DuckDB computes a constant
    argument (a search query) once. Texts go through a bounded cache shared by every
    connection registered with the same Encoder, so a text repeated across DuckDB's 2048-row
    chunks, threads and queries is encoded once while it stays cached.

    Args:
        con: The connection.
        encoder: The Encoder; default :func:`polyemb.default_encoder`.
        store: A vector store (:func:`polyemb.open_store`): texts it holds for this model are
            read, not embedded, and new ones are added. The in-memory cache stays in front.
        prefix: Put before every function name, e.g. ``"pe_"``.
        cache_mb: Cache size in MiB (default 256); sets the shared cache's size.
        batch_size: Passed to ``encode``.

    Returns:
        The cache, for its :meth:`~polyemb.cache.EmbeddingCache.stats`.
    """
    check_sql_prefix(prefix)
    model = encoder if encoder is not None else default_encoder()
    cache = EmbeddingCache.shared(model, max_mb=cache_mb, store=store)
    embedder = embedder_for(model, store)
    vector_type = duckdb.array_type(FLOAT, model.dim)

    def embed(texts: pa.Array) -> pa.Array:
        with reported(f"{prefix}embed"):
            vectors, valid = cache.encode_nullable(
                texts_from_arrow(texts, name="the argument"), batch_size=batch_size, source=embedder
            )
            return vectors_to_arrow(vectors, valid)

    def embed_chunks(texts: pa.Array) -> pa.Array:
        with reported(f"{prefix}embed_chunks"):
            items = texts_from_arrow(texts, name="the argument")
            return chunk_lists(
                model.encode_chunks(items, batch_size=batch_size, show_progress=False), len(items)
            )

    def semantic_similarity(left: pa.Array, right: pa.Array) -> pa.Array:
        with reported(f"{prefix}semantic_similarity"):
            a = texts_from_arrow(left, name="the first argument")
            b = texts_from_arrow(right, name="the second argument")
            vectors, valid = cache.encode_nullable(a + b, batch_size=batch_size, source=embedder)
            scores, ok = paired_cosines(vectors, valid, len(a))
            return pa.array(scores, mask=~ok)

    def cache_stats() -> dict[str, int]:
        return asdict(cache.stats())

    def store_stats() -> dict[str, int]:
        counts = asdict(embedder.stats) if isinstance(embedder, StoredEncoder) else asdict(RunStats())
        return {name: counts[name] for name in ("looked_up", "found", "embedded", "written")}

    stats_type = duckdb.struct_type({"hits": BIGINT, "misses": BIGINT, "entries": BIGINT, "capacity": BIGINT})
    store_type = duckdb.struct_type(
        {"looked_up": BIGINT, "found": BIGINT, "embedded": BIGINT, "written": BIGINT}
    )
    chunk_type = duckdb.list_type(
        duckdb.struct_type({"start": INTEGER, "end": INTEGER, "tokens": INTEGER, "vector": vector_type})
    )
    arrow, special = PythonUDFType.ARROW, FunctionNullHandling.SPECIAL
    definitions: list[tuple[str, Callable[..., Any], list[Any], Any, dict[str, Any]]] = [
        ("embed", embed, [VARCHAR], vector_type, {"type": arrow, "null_handling": special}),
        ("embed_chunks", embed_chunks, [VARCHAR], chunk_type, {"type": arrow, "null_handling": special}),
        (
            "semantic_similarity",
            semantic_similarity,
            [VARCHAR, VARCHAR],
            FLOAT,
            {"type": arrow, "null_handling": special},
        ),
        ("embedding_model", lambda: model.provenance, [], VARCHAR, {}),
        ("embedding_cache_stats", cache_stats, [], stats_type, {"side_effects": True}),
        ("embedding_cache_clear", cache.clear, [], BIGINT, {"side_effects": True}),
        ("embedding_store_stats", store_stats, [], store_type, {"side_effects": True}),
    ]
    for name, function, parameters, returns, options in definitions:
        create_function(con, prefix + name, function, parameters, returns, options)
    return cache


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load a DuckDB extension, finding it where a machine without the extension repository has it.

    Tries, in order: the PyPI package ``duckdb-extension-<name>`` for this duckdb version (e.g.
    ``duckdb-extension-vss``, which requires duckdb 1.5.5), an already installed extension
    (``LOAD name``), and ``INSTALL name`` from DuckDB's repository.

    Raises:
        MissingDependencyError: None of these worked; the message says how to get it.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise InvalidInputError(f"{name!r} is not a DuckDB extension name")
    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        package = None
    if package is not None and package.__file__:
        shipped = (
            Path(package.__file__).parent
            / "extensions"
            / f"v{duckdb.__version__}"
            / f"{name}.duckdb_extension"
        )
        if shipped.is_file():
            con.execute(f"LOAD '{shipped.as_posix()}'")
            return
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    try:
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise MissingDependencyError(
            f"cannot load the DuckDB extension {name!r} for duckdb {duckdb.__version__} ({first}). "
            f"Run INSTALL {name} where DuckDB's extension repository is reachable, or "
            f"pip install duckdb-extension-{name} with the duckdb version it requires"
        ) from exc
