"""DuckDB ``register_index``: a query's rows held in memory as vectors, with a top-k function over them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.arrow import texts_from_arrow, vectors_from_arrow
from polyemb.cache import EmbeddingCache
from polyemb.duckdb._udf import (
    BIGINT,
    FLOAT,
    VARCHAR,
    FunctionNullHandling,
    PythonUDFType,
    create_function,
    duckdb,
    remove_function,
    reported,
)
from polyemb.embedder import Embedder
from polyemb.encoder import Encoder, default_encoder
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.ivf import Ivf, IvfIndex, IvfReport, method_settings
from polyemb.options import Method, Score, check_sql_name
from polyemb.scores import ScoreSpec, score_spec
from polyemb.similarity import NEIGHBOURS, Pairs, neighbourhood, normalize_rows, top_pairs
from polyemb.store import VectorStore, embedder_for

__all__ = ["SemanticIndex", "register_index"]

# The k that Ivf(recall=...) measures recall at for an index (its calls may ask for any k).
_CALIBRATION_K = 10


@dataclass(frozen=True)
class SemanticIndex:
    """What :func:`register_index` holds in memory: the rows' keys and unit vectors.

    Attributes:
        name: The index's name; its functions are ``<name>_nearest`` and ``<name>_nearest_vector``.
        keys: The key of each indexed row (an Arrow array, in the query's type).
        matrix: ``(rows, dim)`` unit float32 vectors.
        score: ``"cosine"``, ``"margin"`` or ``"csls"``.
        neighbourhood: For margin and CSLS, each row's mean cosine with its 4 nearest rows of
            ``queries=`` (the texts or vectors that will be matched).
        model: The provenance of the vectors, None if they came as a vector column.
        ivf: With ``method="ivf"``, the rows in their lists (what each call searches).
    """

    name: str
    keys: pa.Array
    matrix: np.ndarray
    score: Score
    neighbourhood: np.ndarray | None
    model: str | None
    ivf: IvfIndex | None = None


def register_index(
    con: duckdb.DuckDBPyConnection,
    name: str,
    query: str,
    *,
    key: str,
    text: str | None = None,
    vector: str | None = None,
    score: Score = "cosine",
    queries: str | None = None,
    method: Method | Ivf = "exact",
    report: IvfReport | None = None,
    encoder: Encoder | None = None,
    store: VectorStore | None = None,
    batch_size: int | None = None,
    source: str | None = None,
) -> SemanticIndex:
    """Hold a query's rows in memory as vectors and register a top-k function over them.

    Registers, for an index named ``products``:

    - ``products_nearest(VARCHAR, k) -> STRUCT(key, score)[]``: the ``k`` best rows for a text,
      best first (ties to the earlier row of ``query``); NULL text or k, NULL result. Only for an
      index of texts (``text=``), whose encoder embeds the query text.
    - ``products_nearest_vector(FLOAT[dim], k)``: the same for a vector (both kinds of index).

    Each call scores DuckDB's chunk of up to 2,048 texts against the whole matrix with matrix
    products (the core's :func:`polyemb.similarity.top_pairs`), or with ``method="ivf"`` against
    the rows of each text's nearest lists (:class:`polyemb.ivf.IvfIndex`, for catalogs too big to
    scan per query), so a semantic join is plain SQL::

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
        queries: For margin and CSLS: SQL giving one column, the texts (or vectors) that will be
            matched against the index; the scores are relative to the indexed rows'
            neighbourhoods among them (run once, now). For ``Ivf(recall=...)``: the rows nprobe
            is calibrated on (recall@10 against their exact top 10; for margin and CSLS, of
            that score's top 10).
        method: ``"exact"``, ``"ivf"`` or :class:`polyemb.ivf.Ivf` settings (trained now).
        report: For the ivf method, an :class:`polyemb.ivf.IvfReport` filled with what it chose.
        encoder: The Encoder for texts; default :func:`polyemb.default_encoder`.
        store: A vector store for texts.
        batch_size: Passed to ``encode``.
        source: Deprecated name of ``queries`` (warns).

    Returns:
        The index (its keys and matrix).

    Raises:
        ColumnNotFoundError: ``key``, ``text`` or ``vector`` is not a column of ``query``.
        InvalidInputError: Not exactly one of ``text`` and ``vector``, or margin (or ``recall=``)
            without ``queries``.

    Example:
        >>> register_index(con, "products", "SELECT * FROM products", key="id", text="name",
        ...                score="margin", queries="SELECT description FROM orders")
    """
    queries = _queries_argument(queries, source)
    check_sql_name("name", name)
    spec = score_spec(score)
    settings = method_settings(method)
    if (text is None) == (vector is None):
        raise InvalidInputError("give exactly one of text= (a text column) or vector= (a vector column)")
    if spec.neighbourhoods and queries is None:
        raise InvalidInputError(
            f"score={score!r} scores a pair relative to both sides' neighbourhoods: give queries=, "
            "an SQL query of the texts (or vectors) that will be matched against the index"
        )
    if settings is not None and settings.recall is not None and queries is None:
        raise InvalidInputError(
            "recall= calibrates nprobe on the rows that will be matched: give queries=, an SQL "
            "query of those texts (or vectors)"
        )
    column = text if text is not None else str(vector)
    rows, key_type = _index_rows(con, query, key, column)
    reader = _Reader.make(text is not None, encoder, store, batch_size)
    index = _build_index(name, rows, column, spec, reader)
    matched = None
    calibrates = settings is not None and settings.recall is not None
    if queries is not None and (spec.neighbourhoods or calibrates):  # else nothing reads them
        vectors, ok = reader(con.sql(queries).to_arrow_table().column(0), "the column of queries=")
        matched = normalize_rows(vectors[ok])
    report = report or IvfReport()
    if settings is not None:
        ivf = IvfIndex.build(index.matrix, settings, report, queries=matched, k=_CALIBRATION_K)
        index = replace(index, ivf=ivf)
    if spec.neighbourhoods and matched is not None:
        if index.ivf is None:
            index = replace(index, neighbourhood=neighbourhood(index.matrix, matched))
        else:
            r = _ivf_neighbourhood(index.ivf, matched)
            if settings is not None and settings.recall is not None and len(matched):
                # Calibrated again for the score's own top 10; the neighbourhoods follow nprobe.
                ivf = index.ivf.calibrate_score(matched, _CALIBRATION_K, spec, r, settings, report)
                r = r if ivf.nprobe == index.ivf.nprobe else _ivf_neighbourhood(ivf, matched)
                index = replace(index, ivf=ivf)
            index = replace(index, neighbourhood=r)
    _register_nearest(con, index, key_type, reader)
    return index


def _ivf_neighbourhood(index: IvfIndex, matched: np.ndarray) -> np.ndarray:
    """Each indexed row's r among the matched rows, found in their lists (the same centroids)."""
    return index.over(matched).neighbourhood(index.corpus, NEIGHBOURS)


def _queries_argument(queries: str | None, source: str | None) -> str | None:
    """``queries=``, or its deprecated old name ``source=`` (which also named embedders elsewhere)."""
    if source is None:
        return queries
    if queries is not None:
        raise InvalidInputError("give queries= alone: source= is its deprecated old name")
    warnings.warn(
        "register_index(source=...) is deprecated; pass queries=, the SQL giving the texts or "
        "vectors that will be matched against the index",
        DeprecationWarning,
        stacklevel=3,
    )
    return source


@dataclass(frozen=True)
class _Reader:
    """``(vectors, valid)`` of an Arrow column: texts embedded (through the shared cache), vectors read."""

    cache: EmbeddingCache | None  # None for an index of vectors: nothing is embedded
    embedder: Embedder | None
    batch_size: int | None

    @classmethod
    def make(
        cls, texts: bool, encoder: Encoder | None, store: VectorStore | None, batch_size: int | None
    ) -> _Reader:
        if not texts:
            return cls(None, None, batch_size)
        cache = EmbeddingCache.shared(encoder if encoder is not None else default_encoder(), store=store)
        return cls(cache, embedder_for(cache.encoder, store), batch_size)

    def __call__(
        self, values: pa.Array | pa.ChunkedArray, what: str, *, vectors: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed ``values`` if this index holds texts, unless ``vectors``; else read them as vectors."""
        if self.cache is not None and not vectors:
            texts = texts_from_arrow(values, name=what)
            return self.cache.encode_nullable(texts, batch_size=self.batch_size, source=self.embedder)
        return vectors_from_arrow(values, name=what)


def _index_rows(con: duckdb.DuckDBPyConnection, query: str, key: str, column: str) -> tuple[pa.Table, Any]:
    """``query``'s rows as an Arrow table of ``key`` and ``value``, and the DuckDB type of the keys."""
    relation = con.sql(query)
    for wanted in (key, column):
        if wanted not in relation.columns:
            raise ColumnNotFoundError.from_missing(wanted, relation.columns, "the index query")
        if relation.columns.count(wanted) > 1:
            raise InvalidInputError(
                f"the index query has {relation.columns.count(wanted)} columns named {wanted!r}: "
                "name the one to use once (AS ...)"
            )
    key_type = relation.types[relation.columns.index(key)]
    changed = _changed_by_arrow(key_type)
    if changed:
        raise InvalidInputError(
            f"the key column {key!r} is of type {key_type}, whose {changed} values would come back "
            "changed (the keys pass through Arrow); cast it in the query, e.g. to VARCHAR"
        )
    return relation.to_arrow_table().select([key, column]).rename_columns(["key", "value"]), key_type


def _changed_by_arrow(duck_type: Any) -> str | None:
    """The type inside ``duck_type`` that DuckDB's Arrow export changes, if any: TIMETZ, BIT.

    A TIMETZ leaves without its offset (another instant comes back) and a BIT as bytes.
    """
    name = str(duck_type.id).lower()
    if name in ("time with time zone", "bit"):
        return str(duck_type)
    if name in ("list", "array", "struct", "map", "union"):
        for _, child in duck_type.children:
            found = _changed_by_arrow(child) if hasattr(child, "id") else None  # not an array size
            if found:
                return found
    return None


def _build_index(name: str, table: pa.Table, column: str, spec: ScoreSpec, reader: _Reader) -> SemanticIndex:
    """The index of the rows whose value is not NULL."""
    matrix, valid = reader(table.column("value"), f"column {column!r}")
    if reader.cache is None and not valid.any():
        raise InvalidInputError(
            f"the index query gave no vectors in column {column!r}: nothing to match against"
        )
    return SemanticIndex(
        name=name,
        keys=table.column("key").filter(pa.array(valid)).combine_chunks(),
        matrix=normalize_rows(matrix[valid]),
        score=spec.name,
        neighbourhood=None,
        model=reader.embedder.provenance if reader.embedder is not None else None,
    )


def _register_nearest(
    con: duckdb.DuckDBPyConnection, index: SemanticIndex, key_type: Any, reader: _Reader
) -> None:
    """Create ``<name>_nearest`` (an index of texts only) and ``<name>_nearest_vector``."""
    fields = {"key": key_type, "score": FLOAT, **dict.fromkeys(score_spec(index.score).columns, FLOAT)}
    result_type = duckdb.list_type(duckdb.struct_type(fields))

    text_name, vector_name = f"{index.name}_nearest", f"{index.name}_nearest_vector"

    def nearest(values: pa.Array, ks: pa.Array, *, vectors: bool) -> pa.Array:
        with reported(vector_name if vectors else text_name):
            queries, ok = reader(values, "the first argument", vectors=vectors)
            ok &= np.asarray(ks.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            return _nearest_lists(index, queries, ok, ks.fill_null(0).to_numpy(zero_copy_only=False))

    def nearest_to_text(texts: pa.Array, ks: pa.Array) -> pa.Array:
        return nearest(texts, ks, vectors=False)

    def nearest_to_vector(vectors: pa.Array, ks: pa.Array) -> pa.Array:
        return nearest(vectors, ks, vectors=True)

    options = {"type": PythonUDFType.ARROW, "null_handling": FunctionNullHandling.SPECIAL}
    if reader.cache is not None:
        create_function(con, text_name, nearest_to_text, [VARCHAR, BIGINT], result_type, options)
    else:
        remove_function(con, text_name)  # a text version from an earlier registration
    dim = index.matrix.shape[1] if len(index.matrix) else reader.cache.encoder.dim  # type: ignore[union-attr]
    vector_type = duckdb.array_type(FLOAT, dim)
    create_function(con, vector_name, nearest_to_vector, [vector_type, BIGINT], result_type, options)


def _nearest_lists(index: SemanticIndex, queries: np.ndarray, ok: np.ndarray, ks: np.ndarray) -> pa.Array:
    """Each valid query row's top ``k`` of the index, as a list of structs; NULL where not valid."""
    rows = np.flatnonzero(ok)
    pairs = _pairs(index, queries[rows], ks[rows])
    counts = np.zeros(len(ok), dtype=np.int64)
    counts[rows] = np.bincount(pairs.query, minlength=len(rows))
    fields = {
        "key": index.keys.take(pa.array(pairs.corpus, pa.int64())),
        "score": pa.array(pairs.score, pa.float32()),
        **{column: pa.array(values, pa.float32()) for column, values in pairs.columns.items()},
    }
    structs = pa.StructArray.from_arrays(list(fields.values()), names=list(fields))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, structs, mask=pa.array(~ok))


def _pairs(index: SemanticIndex, queries: np.ndarray, ks: np.ndarray) -> Pairs:
    """The core's pairs for one chunk of queries.

    The index's r is over the queries= rows; each query's own r, over the index, comes from the core.
    """
    if index.ivf is not None:
        return index.ivf.pairs(queries, ks, score=index.score, neighbourhoods=(None, index.neighbourhood))
    return top_pairs(queries, index.matrix, ks, score=index.score, neighbourhoods=(None, index.neighbourhood))
