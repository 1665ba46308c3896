"""pandas columns as texts or vectors: what the ``.emb`` accessor reads and returns, and its errors.

Also both sides of a comparison encoded in one call, and the frame a join returns: both sides'
rows and the added columns, as ``merge`` names them.

Conversions only (the core does the rest): a Series holds texts or vectors; a vector Series is
``pd.ArrowDtype(fixed_size_list<float32>[dim])``; an error on a bad value names its row label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from polyemb.arrow import vector_model, vector_type, vectors_from_arrow, vectors_to_arrow
from polyemb.embedder import Embedder, check_same_model
from polyemb.encoder import Encoder
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.scores import join_names
from polyemb.store import VectorStore, embedder_for

__all__ = [
    "align",
    "assemble_join",
    "both_sides",
    "column",
    "holds_vectors",
    "is_vector_dtype",
    "labelled",
    "lazy_embedder",
    "matrix_of",
    "series_name",
    "texts_of",
    "vector_dtype",
    "vector_series",
    "vectors_of",
]

_T = TypeVar("_T")


def series_name(series: pd.Series) -> str:
    """How errors call a Series: by its name, else 'the Series'."""
    return f"Series {series.name!r}" if series.name is not None else "the Series"


def is_vector_dtype(dtype: Any) -> bool:
    """Whether a dtype is an Arrow list type (a vector column)."""
    if isinstance(dtype, pd.ArrowDtype):
        kind = dtype.pyarrow_dtype
        return bool(
            pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)
        )
    return False


def holds_vectors(series: pd.Series) -> bool:
    """Vectors (a list dtype, or objects that are arrays or lists) rather than texts.

    Lists of strings (tokens) are neither: read as texts, they fail naming the row.
    """
    if is_vector_dtype(series.dtype):
        items = series.dtype.pyarrow_dtype.value_type
        return not (
            pa.types.is_string(items) or pa.types.is_large_string(items) or pa.types.is_string_view(items)
        )
    if series.dtype != object:
        return False
    present = series[series.notna()]
    if len(present) == 0 or not isinstance(first := present.iloc[0], (np.ndarray, list, tuple)):
        return False
    return len(first) == 0 or not isinstance(first[0], str)


def labelled(series: pd.Series, texts: list[str | None], encode: Callable[[], _T]) -> _T:
    """``encode()``, its error on a bad value naming the value's row label."""
    try:
        return encode()
    except InvalidInputError as exc:
        if exc.position is None:
            raise
        raise not_a_text(series, exc.position, texts[exc.position]) from exc


def not_a_text(series: pd.Series, position: int, value: object) -> InvalidInputError:
    """The error for ``value``, not a text, at ``position`` of ``series``: named by its row label."""
    label = series.index[position]
    hint = (
        "join its items into one text with .map(' '.join, na_action='ignore')"
        if isinstance(value, (list, tuple, np.ndarray))
        else "convert the column with .astype(str)"
    )
    return InvalidInputError(
        f"row {label!r} of {series_name(series)} is {type(value).__name__} ({value!r:.40}), not a text; "
        f"{hint} if that is meant, or set the value to None",
        position=position,
    )


def vectors_of(series: pd.Series) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A vector Series as ``(matrix, valid, provenance or None)``."""
    try:
        array = (
            pa.array(series.array) if is_vector_dtype(series.dtype) else pa.array(series, from_pandas=True)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"{series_name(series)} does not hold float vectors: {exc}") from exc
    matrix, valid = vectors_from_arrow(array, name=series_name(series))
    return matrix, valid, vector_model(array.type)


def vector_dtype(dim: int, model: str | None = None) -> pd.ArrowDtype:
    """The dtype of a vector Series: ``pd.ArrowDtype(pa.list_(pa.float32(), dim))``.

    ``model`` (a provenance) rides in the type's metadata; the dtype equals the plain one.
    """
    return pd.ArrowDtype(vector_type(dim, model))


def vector_series(
    matrix: np.ndarray, valid: np.ndarray, index: pd.Index, name: Any, model: str | None
) -> pd.Series:
    """A matrix as a vector Series (NA where not ``valid``) recording the model's provenance."""
    array = vectors_to_arrow(matrix, valid, model)
    return pd.Series(pd.arrays.ArrowExtensionArray(array), index=index, name=name, copy=False)


def texts_of(series: pd.Series) -> list[str | None]:
    """A Series' values as a list, None where NA (None, NaN, pd.NA, NaT)."""
    na = series.isna().to_numpy(dtype=bool)
    # A categorical's own values, not floats where the categories are integers and NA is there.
    plain = series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series
    values = plain.to_numpy(dtype=object, copy=True)
    values[na] = None
    return values.tolist()  # type: ignore[no-any-return]


def lazy_embedder(encoder: Encoder | None, store: VectorStore | None) -> Callable[[], Embedder]:
    """The embedder to encode with, made on first call (a Series of vectors needs none)."""
    return functools.cache(lambda: embedder_for(encoder, store))


def matrix_of(
    series: pd.Series, embedder: Callable[[], Embedder], **options: Any
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(matrix, valid, model)``: encoded if the Series holds texts, read if vectors."""
    if holds_vectors(series):
        return vectors_of(series)
    texts = texts_of(series)
    encoding = embedder()
    matrix, valid = labelled(series, texts, lambda: encoding.encode_nullable(texts, **options))
    return matrix, valid, encoding.provenance


def both_sides(
    left: pd.Series, right: pd.Series, embedder: Callable[[], Embedder], what: str, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(left matrix, left valid, right matrix, right valid)`` of two Series of texts or vectors.

    Two Series of texts go through one encode call, so a text found on both sides is encoded once.

    Raises:
        ModelMismatchError: The two sides' vectors come from different models.
    """
    if not holds_vectors(left) and not holds_vectors(right):
        both = pd.concat([left, right], ignore_index=True)
        try:
            matrix, valid, _ = matrix_of(both, embedder, **options)
        except InvalidInputError as exc:
            if exc.position is None:
                raise
            # Named by the side it came from and its label there, not by a place in ``both``.
            side, position = (
                (left, exc.position) if exc.position < len(left) else (right, exc.position - len(left))
            )
            raise not_a_text(side, position, side.iloc[position]) from exc
        return matrix[: len(left)], valid[: len(left)], matrix[len(left) :], valid[len(left) :]
    lvec, lvalid, left_model = matrix_of(left, embedder, **options)
    rvec, rvalid, right_model = matrix_of(right, embedder, **options)
    check_same_model(left_model, right_model, what)
    return lvec, lvalid, rvec, rvalid


def align(series: pd.Series, other: pd.Series) -> pd.Series:
    """``other`` in ``series``' row order, as pandas arithmetic would align it; never guessing."""
    if other.index.equals(series.index):
        return other
    if series.index.has_duplicates or other.index.has_duplicates:
        raise InvalidInputError(
            "the two Series have different indexes with duplicate labels, so rows cannot be "
            "matched; use .reset_index(drop=True) on both if their positions correspond"
        )
    missing = series.index.difference(other.index)
    extra = other.index.difference(series.index)
    if len(missing) or len(extra):
        raise InvalidInputError(
            f"the indexes do not match: {len(missing)} labels only on this side (e.g. "
            f"{list(missing[:3])}), {len(extra)} only on the other (e.g. {list(extra[:3])}); "
            "align them first, or use .reset_index(drop=True) on both if their positions correspond"
        )
    return other.reindex(series.index)


def column(frame: pd.DataFrame, name: str, side: str) -> pd.Series:
    """The column ``name`` of the ``side`` (left or right) DataFrame of a join."""
    if not isinstance(name, Hashable):  # a list of names: not one label
        raise InvalidInputError(
            f"a join matches one column per side; {side}_on is {type(name).__name__} ({name!r:.60}): "
            "give one column's name"
        )
    if name not in frame.columns:
        raise ColumnNotFoundError.from_missing(name, frame.columns, f"the {side} DataFrame")
    found = frame[name]
    if isinstance(found, pd.DataFrame):
        raise InvalidInputError(f"the {side} DataFrame has several columns named {name!r}")
    return found


def assemble_join(
    left: pd.DataFrame,
    right: pd.DataFrame,
    left_rows: np.ndarray,
    right_rows: np.ndarray,
    added: dict[str, Any],
    suffixes: tuple[str, str],
) -> pd.DataFrame:
    """Left rows, right rows (-1: all NA) and the ``added`` columns side by side, as ``merge`` names them."""
    left_part = left.iloc[left_rows].reset_index(drop=True)
    right_part = right.reset_index(drop=True).reindex(right_rows).reset_index(drop=True)
    left_names, right_names = join_names(list(left.columns), list(right.columns), suffixes, list(added))
    left_part.columns = pd.Index([left_names[c] for c in left_part.columns])
    right_part.columns = pd.Index([right_names[c] for c in right_part.columns])
    result = pd.concat([left_part, right_part], axis=1)
    for name, values in added.items():
        result[name] = values
    return result
