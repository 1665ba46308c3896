"""Polars Series <-> the core's texts, float32 matrices and valid masks.

The one place in the adapter that knows both sides: which Polars types hold texts or vectors,
how a column becomes ``list[str | None]`` or ``(matrix, valid)`` (through Arrow, via
:mod:`polyemb.arrow`), and how the core's answer becomes a Series again. NULL placement,
batching and scoring stay in the core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import numpy as np
import polars as pl
import pyarrow as pa

from polyemb.arrow import texts_from_arrow, vector_model, vectors_from_arrow, vectors_to_arrow
from polyemb.embedder import Embedder, check_same_model
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.store import VectorStore, embedder_for

__all__ = [
    "EncodeOptions",
    "Encoding",
    "both_sides",
    "describe",
    "encode_series",
    "float_series",
    "kind_of",
    "matrix_of",
    "rows_with_nulls",
    "texts_of",
]


class EncodeOptions(TypedDict, total=False):
    """The options every method hands to the embedder's ``encode_nullable`` unchanged.

    A new encoding option of the core is one entry here: every method of the namespaces takes
    these as keyword arguments and passes them through.
    """

    batch_size: int | None
    show_progress: bool | None


@dataclass
class Encoding:
    """What texts are encoded with: the encoder, the store, the options.

    The embedder is made on first use, so a column of vectors needs no model.
    """

    encoder: Encoder | None
    store: VectorStore | None
    options: EncodeOptions
    _queries: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # The options reach the encoder only when a query runs: a misspelt one fails here, at once.
        unknown = sorted(set(self.options) - EncodeOptions.__optional_keys__)
        if unknown:
            raise TypeError(
                f"unexpected keyword arguments {unknown}; the encoding options are "
                f"{sorted(EncodeOptions.__optional_keys__)}"
            )

    @functools.cached_property
    def embedder(self) -> Embedder:
        """The encoder (default: :func:`polyemb.default_encoder`), behind the store if one was given."""
        return embedder_for(self.encoder, self.store)

    def query(self, text: str) -> np.ndarray:
        """One text's ``(1, dim)`` vector, encoded once: an expression runs once per batch."""
        if text not in self._queries:
            self._queries[text] = self.embedder.encode([text], **self.options)
        return self._queries[text]


Kind = Literal["texts", "vectors"]


def describe(series: pl.Series) -> str:
    """How messages name a column."""
    return f"column {series.name!r}" if series.name else "the unnamed column"


def kind_of(series: pl.Series) -> Kind:
    """Whether ``series`` holds texts (String, Categorical, Enum, all NULL) or vectors.

    Vectors are an Array or List of floats (or integers), as :func:`vectors_from_arrow` reads.

    Raises:
        InvalidInputError: Any other type, naming the column and its type.
    """
    dtype = series.dtype
    if dtype == pl.String or dtype == pl.Null or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "texts"
    if isinstance(dtype, (pl.Array, pl.List)) and (dtype.inner.is_float() or dtype.inner.is_integer()):
        return "vectors"
    if isinstance(dtype, (pl.Array, pl.List)):
        namespace = "arr" if isinstance(dtype, pl.Array) else "list"
        hint = f"join its items into one text with .{namespace}.join(' ')"
    else:
        hint = "cast it with .cast(pl.String)"
    raise InvalidInputError(
        f"{describe(series)} is of type {dtype}: neither texts (String) nor vectors (an Array or List "
        f"of floats); {hint} if it holds texts"
    )


def texts_of(series: pl.Series) -> list[str | None]:
    # The default Arrow layout (large_string): 3x faster to read as Python strings than Polars'
    # own string views, and pyarrow casts its dictionaries (Categorical, Enum) back to strings.
    return texts_from_arrow(series.to_arrow(), name=describe(series))


def _encode(
    texts: list[str | None], encoding: Encoding, where: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """``encode_nullable`` of ``texts``; an error about one text says where it is (``where(position)``)."""
    try:
        return encoding.embedder.encode_nullable(texts, **encoding.options)
    except InvalidInputError as exc:
        if exc.position is not None:
            exc.add_context(before=f"{where(exc.position)}: ")
        raise


def _row(series: pl.Series) -> Callable[[int], str]:
    return lambda position: f"row {position} of {describe(series)}"


def matrix_of(series: pl.Series, encoding: Encoding) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(matrix, valid, model)`` of a column: encoded if it holds texts, read if vectors.

    ``model`` is the provenance of the vectors, None where it is unknown. Polars keeps no Arrow
    field metadata, so a vector column read back from Polars never knows its model.
    """
    if kind_of(series) == "vectors":
        array = series.to_arrow()
        matrix, valid = vectors_from_arrow(array, name=describe(series))
        return matrix, valid, vector_model(array.type)
    matrix, valid = _encode(texts_of(series), encoding, _row(series))
    return matrix, valid, encoding.embedder.provenance


def encode_series(series: pl.Series, encoding: Encoding) -> pl.Series:
    """A column of texts as a column of vectors, ``Array(Float32, dim)``, NULL where the text was.

    Raises:
        InvalidInputError: The column holds vectors already, or is of another type.
    """
    if kind_of(series) == "vectors":
        raise InvalidInputError(f"{describe(series)} already holds vectors")
    matrix, valid, model = matrix_of(series, encoding)
    # Polars drops the provenance that vectors_to_arrow puts in the type (see matrix_of).
    return pl.Series(series.name, vectors_to_arrow(matrix, valid, model))


def both_sides(
    left: pl.Series, right: pl.Series, encoding: Encoding, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(left matrix, left valid, right matrix, right valid)`` of two columns of texts or vectors.

    Two columns of texts go through one encode call, so a text found on both sides is encoded once.

    Raises:
        ModelMismatchError: The two sides' vectors come from different models.
    """
    if kind_of(left) == kind_of(right) == "texts":
        n = len(left)

        def where(position: int) -> str:
            return _row(left)(position) if position < n else _row(right)(position - n)

        matrix, valid = _encode(texts_of(left) + texts_of(right), encoding, where)
        return matrix[:n], valid[:n], matrix[n:], valid[n:]
    lvec, lvalid, left_model = matrix_of(left, encoding)
    rvec, rvalid, right_model = matrix_of(right, encoding)
    check_same_model(left_model, right_model, what)
    return lvec, lvalid, rvec, rvalid


def float_series(name: str, values: np.ndarray, valid: np.ndarray) -> pl.Series:
    """A Float64 Series of ``values``, NULL where ``valid`` is False."""
    return pl.Series(name, pa.array(values.astype(np.float64), mask=~np.asarray(valid, dtype=bool)))


def rows_with_nulls(rows: np.ndarray) -> pl.Series:
    """Row positions for ``gather``, where -1 (no row) becomes NULL, which gathers a NULL row."""
    return pl.Series(pa.array(rows, type=pa.int64(), mask=rows < 0))
