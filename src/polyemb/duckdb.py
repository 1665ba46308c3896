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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.errors import ColumnNotFoundError, InvalidInputError, MissingDependencyError, PolyembError

try:
    import duckdb
    from duckdb.func import FunctionNullHandling, PythonUDFType
    from duckdb.sqltypes import BIGINT, FLOAT, VARCHAR
except ImportError as exc:  # pragma: no cover - exercised only without duckdb
    raise MissingDependencyError("polyemb.duckdb needs duckdb: pip install 'polyemb[duckdb]'") from exc

from polyemb.arrow import texts_from_arrow, vectors_from_arrow, vectors_to_arrow
from polyemb.cache import EmbeddingCache
from polyemb.encoder import Encoder, default_encoder
from polyemb.options import SCORES, Score, check_choice, check_sql_name, check_sql_prefix
from polyemb.similarity import neighbourhood, normalize_rows, paired_cosines, top_k
from polyemb.store import RunStats, StoredEncoder, VectorStore, embedder_for

__all__ = ["FUNCTIONS", "SemanticIndex", "load_extension", "register", "register_index"]

# The names register() creates (each behind the optional prefix).
FUNCTIONS = (
    "embed",
    "semantic_similarity",
    "embedding_model",
    "embedding_cache_stats",
    "embedding_cache_clear",
    "embedding_store_stats",
)


@contextmanager
def _reported(function: str) -> Iterator[None]:
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


def register(
    con: duckdb.DuckDBPyConnection,
    encoder: Encoder | None = None,
    *,
    store: VectorStore | None = None,
    prefix: str = "",
    cache_mb: float | None = None,
    batch_size: int | None = None,
) -> EmbeddingCache:
    """Register polyemb's functions on a DuckDB connection (replacing earlier registrations).

    Functions (each name behind ``prefix``):

    - ``embed(VARCHAR) -> FLOAT[dim]``: the text's unit vector; NULL in, NULL out.
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
    source = embedder_for(model, store)
    vector_type = duckdb.array_type(FLOAT, model.dim)

    def embed(texts: pa.Array) -> pa.Array:
        with _reported(f"{prefix}embed"):
            vectors, valid = cache.encode_nullable(
                texts_from_arrow(texts, name="the argument"), batch_size=batch_size, source=source
            )
            return vectors_to_arrow(vectors, valid)

    def semantic_similarity(left: pa.Array, right: pa.Array) -> pa.Array:
        with _reported(f"{prefix}semantic_similarity"):
            a = texts_from_arrow(left, name="the first argument")
            b = texts_from_arrow(right, name="the second argument")
            vectors, valid = cache.encode_nullable(a + b, batch_size=batch_size, source=source)
            scores, ok = paired_cosines(vectors, valid, len(a))
            return pa.array(scores, mask=~ok)

    def cache_stats() -> dict[str, int]:
        return asdict(cache.stats())

    def store_stats() -> dict[str, int]:
        counts = asdict(source.stats) if isinstance(source, StoredEncoder) else asdict(RunStats())
        return {name: counts[name] for name in ("looked_up", "found", "embedded", "written")}

    stats_type = duckdb.struct_type({"hits": BIGINT, "misses": BIGINT, "entries": BIGINT, "capacity": BIGINT})
    store_type = duckdb.struct_type(
        {"looked_up": BIGINT, "found": BIGINT, "embedded": BIGINT, "written": BIGINT}
    )
    arrow, special = PythonUDFType.ARROW, FunctionNullHandling.SPECIAL
    definitions: list[tuple[str, Callable[..., Any], list[Any], Any, dict[str, Any]]] = [
        ("embed", embed, [VARCHAR], vector_type, {"type": arrow, "null_handling": special}),
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
        _create(con, prefix + name, function, parameters, returns, options)
    return cache


def _create(
    con: duckdb.DuckDBPyConnection,
    name: str,
    function: Callable[..., Any],
    parameters: list[Any],
    returns: Any,
    options: dict[str, Any],
) -> None:
    """Create (or replace) a function on the connection."""
    try:
        con.remove_function(name)
    except duckdb.InvalidInputException:
        pass  # not registered yet
    con.create_function(name, function, parameters, returns, **options)


@dataclass(frozen=True)
class SemanticIndex:
    """What :func:`register_index` holds in memory: the rows' keys and unit vectors.

    Attributes:
        name: The index's name; its functions are ``<name>_nearest`` and ``<name>_nearest_vector``.
        keys: The key of each indexed row (an Arrow array, in the query's type).
        matrix: ``(rows, dim)`` unit float32 vectors.
        score: ``"cosine"``, ``"margin"`` or ``"csls"``.
        neighbourhood: For margin and CSLS, each row's mean cosine with its 4 nearest source rows.
        model: The provenance of the vectors, None if they came as a vector column.
    """

    name: str
    keys: pa.Array
    matrix: np.ndarray
    score: Score
    neighbourhood: np.ndarray | None
    model: str | None


def register_index(
    con: duckdb.DuckDBPyConnection,
    name: str,
    query: str,
    *,
    key: str,
    text: str | None = None,
    vector: str | None = None,
    score: Score = "cosine",
    source: str | None = None,
    encoder: Encoder | None = None,
    store: VectorStore | None = None,
    batch_size: int | None = None,
) -> SemanticIndex:
    """Hold a query's rows in memory as vectors and register an exact top-k function over them.

    Registers, for an index named ``products``:

    - ``products_nearest(VARCHAR, k) -> STRUCT(key, score)[]``: the ``k`` best rows for a text,
      best first (ties to the earlier row of ``query``); NULL text or k, NULL result. Only for an
      index of texts (``text=``), whose encoder embeds the query text.
    - ``products_nearest_vector(FLOAT[dim], k)``: the same for a vector (both kinds of index).

    Each call scores DuckDB's chunk of up to 2,048 texts against the whole matrix with matrix
    products (the core's :func:`polyemb.similarity.top_k`), so a semantic join is plain SQL::

        SELECT o.id, n.key, n.score
        FROM orders o, unnest(products_nearest(o.description, 3)) AS t(n)

    Args:
        con: The connection.
        name: The index name: an SQL identifier.
        query: SQL giving the rows to index (run once, now).
        key: The query's column returned as ``key`` (any type).
        text: Its text column, embedded with ``encoder`` (through ``store`` if given); or
        vector: its vector column (``FLOAT[]`` or ``FLOAT[dim]``). Rows with a NULL one are not indexed.
        score: ``"cosine"``, or ``"margin"`` / ``"csls"`` (then the struct also has ``cosine``).
        source: For margin and CSLS: SQL giving one column, the texts (or vectors) that will be
            matched, whose neighbourhoods of the indexed rows the scores are relative to.
        encoder: The Encoder for texts; default :func:`polyemb.default_encoder`.
        store: A vector store for texts.
        batch_size: Passed to ``encode``.

    Returns:
        The index (its keys and matrix).

    Raises:
        ColumnNotFoundError: ``key``, ``text`` or ``vector`` is not a column of ``query``.
        InvalidInputError: Not exactly one of ``text`` and ``vector``, or margin without ``source``.
    """
    check_sql_name("name", name)
    check_choice("score", score, SCORES)
    if (text is None) == (vector is None):
        raise InvalidInputError("give exactly one of text= (a text column) or vector= (a vector column)")
    if score != "cosine" and source is None:
        raise InvalidInputError(
            f"score={score!r} scores a pair relative to both sides' neighbourhoods: give source=, "
            "an SQL query of the texts (or vectors) that will be matched against the index"
        )
    relation = con.sql(query)
    column = text if text is not None else vector
    for wanted in (key, column):
        if wanted not in relation.columns:
            raise ColumnNotFoundError.from_missing(str(wanted), relation.columns, "the index query")
    key_type = relation.types[relation.columns.index(key)]
    table = relation.to_arrow_table().select([key, str(column)]).rename_columns(["key", "value"])
    cache = (
        EmbeddingCache.shared(encoder if encoder is not None else default_encoder(), store=store)
        if text
        else None
    )
    source_embedder = embedder_for(cache.encoder, store) if cache is not None else None

    def vectors_of(
        values: pa.Array | pa.ChunkedArray, what: str, texts: bool = text is not None
    ) -> tuple[np.ndarray, np.ndarray]:
        if texts and cache is not None:
            return cache.encode_nullable(
                texts_from_arrow(values, name=what), batch_size=batch_size, source=source_embedder
            )
        return vectors_from_arrow(values, name=what)

    matrix, valid = vectors_of(table.column("value"), f"column {column!r}")
    index = SemanticIndex(
        name=name,
        keys=table.column("key").filter(pa.array(valid)).combine_chunks(),
        matrix=normalize_rows(matrix[valid]),
        score=score,
        neighbourhood=None,
        model=source_embedder.provenance if source_embedder is not None else None,
    )
    if source is not None and score != "cosine":
        queries, ok = vectors_of(con.sql(source).to_arrow_table().column(0), "the source query's column")
        index = replace(index, neighbourhood=neighbourhood(index.matrix, queries[ok]))
    if not len(index.matrix) and cache is None:
        raise InvalidInputError(
            f"the index query gave no vectors in column {vector!r}: nothing to match against"
        )
    dim = index.matrix.shape[1] if len(index.matrix) else cache.encoder.dim  # type: ignore[union-attr]
    fields = {"key": key_type, "score": FLOAT, **({"cosine": FLOAT} if score != "cosine" else {})}
    result_type = duckdb.list_type(duckdb.struct_type(fields))

    def nearest(values: pa.Array, ks: pa.Array, what: str, texts: bool) -> pa.Array:
        with _reported(what):
            queries, ok = vectors_of(values, "the first argument", texts)
            ok &= np.asarray(ks.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            return _nearest_lists(index, queries, ok, ks.fill_null(0).to_numpy(zero_copy_only=False))

    options = {"type": PythonUDFType.ARROW, "null_handling": FunctionNullHandling.SPECIAL}
    if text is not None:
        _create(
            con,
            f"{name}_nearest",
            lambda v, k: nearest(v, k, f"{name}_nearest", True),
            [VARCHAR, BIGINT],
            result_type,
            options,
        )
    else:
        try:
            con.remove_function(f"{name}_nearest")  # a text version from an earlier registration
        except duckdb.InvalidInputException:
            pass
    vector_parameter = duckdb.array_type(FLOAT, dim)
    _create(
        con,
        f"{name}_nearest_vector",
        lambda v, k: nearest(v, k, f"{name}_nearest_vector", False),
        [vector_parameter, BIGINT],
        result_type,
        options,
    )
    return index


def _nearest_lists(index: SemanticIndex, queries: np.ndarray, ok: np.ndarray, ks: np.ndarray) -> pa.Array:
    """Each valid query row's top ``k`` of the index, as a list of structs; NULL where not valid."""
    if (ks[ok] < 1).any():
        raise InvalidInputError(f"k must be a positive integer, got {int(ks[ok].min())}")
    rows = np.flatnonzero(ok)
    most = int(ks[ok].max()) if len(rows) else 1
    unit = (
        normalize_rows(queries[rows])
        if len(rows)
        else np.zeros((0, max(1, index.matrix.shape[1])), np.float32)
    )
    neighbourhoods = None
    if index.score != "cosine" and len(rows) and len(index.matrix):
        neighbourhoods = (neighbourhood(unit, index.matrix), index.neighbourhood)
    indices, scores = top_k(unit, index.matrix, most, score=index.score, neighbourhoods=neighbourhoods)  # type: ignore[arg-type]
    counts = np.zeros(len(ok), dtype=np.int64)
    counts[rows] = np.minimum(ks[rows], indices.shape[1])
    take = (
        np.concatenate([indices[i, : counts[row]] for i, row in enumerate(rows)])
        if len(rows)
        else np.zeros(0, np.int64)
    )
    took = (
        np.concatenate([scores[i, : counts[row]] for i, row in enumerate(rows)])
        if len(rows)
        else np.zeros(0, np.float32)
    )
    fields = [index.keys.take(pa.array(take, pa.int64())), pa.array(took, pa.float32())]
    names = ["key", "score"]
    if index.score != "cosine":
        query_rows = np.repeat(np.arange(len(rows)), counts[rows]) if len(rows) else np.zeros(0, np.int64)
        cosines = np.einsum("ij,ij->i", unit[query_rows], index.matrix[take]) if len(take) else np.zeros(0)
        fields.append(pa.array(cosines, pa.float32()))
        names.append("cosine")
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(
        offsets, pa.StructArray.from_arrays(fields, names=names), mask=pa.array(~ok)
    )


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
