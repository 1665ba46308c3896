"""Texts and vectors as Arrow arrays: the one place NULLs are carried from texts to vectors.

Every adapter (pandas, DuckDB, Spark, the CLI) hands its text column over as Arrow and gets
vectors back as a fixed-size list array of float32, NULL where the text was NULL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from polyemb.errors import InvalidInputError

if TYPE_CHECKING:
    from polyemb.embedder import Embedder

__all__ = [
    "MODEL_METADATA",
    "encode_arrow",
    "texts_from_arrow",
    "vector_model",
    "vector_type",
    "vectors_from_arrow",
    "vectors_to_arrow",
]


# Where a vector column's Arrow type carries the provenance of the model that made it: the
# metadata of the list's value field, which survives slicing, concatenation and pandas.
MODEL_METADATA = b"polyemb.model"


def vector_type(dim: int, model: str | None = None) -> pa.DataType:
    """The Arrow type of a vector column: ``fixed_size_list<float32>[dim]``.

    ``model`` (a provenance, ``id@fingerprint``) is kept in the value field's metadata; the
    type compares equal to the plain one either way.
    """
    if model is None:
        return pa.list_(pa.float32(), dim)
    return pa.list_(pa.field("item", pa.float32(), metadata={MODEL_METADATA: model.encode()}), dim)


def vector_model(kind: pa.DataType) -> str | None:
    """The provenance a vector column's type carries, None if unknown (a plain list column)."""
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return None
    metadata = kind.value_field.metadata or {}
    value = metadata.get(MODEL_METADATA)
    return value.decode() if value is not None else None


def texts_from_arrow(array: pa.Array | pa.ChunkedArray, *, name: str = "texts") -> list[str | None]:
    """A string column as a Python list, NULL as None.

    Raises:
        InvalidInputError: The column is not of a string type, or holds bytes that are not UTF-8
            (a Parquet file's strings are not checked when read; the message names the first
            such row: ``position``); ``name`` is used in the message.
    """
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)
        kind = array.type
    if pa.types.is_null(kind):
        return [None] * len(array)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise InvalidInputError(f"{name} has Arrow type {kind}, not a string type; cast it to a string first")
    try:
        return array.to_pylist()  # type: ignore[no-any-return]
    except UnicodeDecodeError as exc:
        for row, value in enumerate(array.cast(pa.large_binary()).to_pylist()):
            try:
                if value is not None:
                    value.decode()
            except UnicodeDecodeError:
                raise InvalidInputError(
                    f"row {row} of {name} is not UTF-8 text ({value!r:.40}); decode it first", position=row
                ) from exc
        raise


def vectors_to_arrow(
    vectors: np.ndarray, valid: np.ndarray | None = None, model: str | None = None
) -> pa.FixedSizeListArray:
    """An ``(n, dim)`` float32 matrix as a fixed-size list array without a per-row copy.

    Args:
        vectors: (n, dim) matrix, cast to float32 if needed.
        valid: Optional bool mask; rows where it is False become NULL.
        model: The provenance to record in the type (see :func:`vector_type`).
    """
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D matrix, got shape {matrix.shape}")
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    mask = None if valid is None or valid.all() else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(values, type=vector_type(matrix.shape[1], model), mask=mask)


def vectors_from_arrow(
    array: pa.Array | pa.ChunkedArray, *, name: str = "vectors"
) -> tuple[np.ndarray, np.ndarray]:
    """A vector column (fixed-size or variable lists of floats) as ``(matrix, valid)``.

    NULL rows are all-zero in the matrix and False in ``valid``; so is a row of NaN only (or of
    NULL elements only), as ``to_numpy`` writes a NULL row and pandas reads NaN.

    Raises:
        InvalidInputError: Not a list-of-float column, rows of different lengths, or a vector
            that holds NaN, infinity or a NULL element among its numbers.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    kind = array.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise InvalidInputError(f"{name} has Arrow type {kind}, not a list of floats")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise InvalidInputError(f"{name} holds {kind.value_type} values, not floats")
    if array.null_count == 0:  # the common case, without building a mask bit by bit
        valid = np.ones(len(array), dtype=bool)
    else:
        valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        lengths = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        sizes = np.unique(lengths[valid]) if valid.any() else np.array([0])
        if len(sizes) > 1:
            raise InvalidInputError(f"{name} has vectors of different lengths: {sizes.tolist()}")
        dim = int(sizes[0])
    if valid.all():
        matrix = _float_matrix(array.flatten(), len(array), dim)
    else:  # place each valid row
        matrix = np.zeros((len(array), dim), dtype=np.float32)
        matrix[valid] = _float_matrix(array.filter(pa.array(valid)).flatten(), int(valid.sum()), dim)
    return _undefined_as_null(matrix, valid, name)


def _float_matrix(values: pa.Array, rows: int, dim: int) -> np.ndarray:
    """The flat values as a float32 matrix; a NULL element reads as NaN."""
    flat = values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(rows, dim)


def _undefined_as_null(matrix: np.ndarray, valid: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of NaN only as NULL rows; any other NaN or infinity refused."""
    suspect = np.flatnonzero(~np.isfinite(matrix.sum(axis=1)))  # one pass; NaN and inf carry through
    if not len(suspect):
        return matrix, valid
    rows = matrix[suspect]
    undefined = np.isnan(rows).all(axis=1) & (rows.shape[1] > 0)
    broken = suspect[~undefined & ~np.isfinite(rows).all(axis=1)]
    if len(broken):
        raise InvalidInputError(
            f"{name}: the vector at position {int(broken[0])} holds NaN, infinity or a NULL element "
            f"among its numbers ({len(broken)} such rows); a missing vector is NULL (or all NaN)"
        )
    nulls = suspect[undefined]
    if not matrix.flags.writeable:  # read in place from Arrow's buffer
        matrix = matrix.copy()
    valid = valid.copy()
    valid[nulls] = False
    matrix[nulls] = 0.0
    return matrix, valid


def encode_arrow(
    encoder: Embedder, texts: pa.Array | pa.ChunkedArray, *, name: str = "texts", **options: Any
) -> pa.FixedSizeListArray:
    """Encode an Arrow string column into a vector column, NULL in -> NULL out, rows aligned.

    Args:
        encoder: The Encoder.
        texts: A string (or dictionary-of-string, or all-null) Arrow array.
        name: How error messages call the column.
        **options: Passed to :meth:`Encoder.encode_nullable` (``batch_size``, ``show_progress``...).
    """
    vectors, valid = encoder.encode_nullable(texts_from_arrow(texts, name=name), **options)
    return vectors_to_arrow(vectors, valid, encoder.provenance)
