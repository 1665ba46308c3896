"""Arrow conversions: NULLs carried, no misalignment, clear errors for wrong types."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import polyemb
from polyemb.arrow import encode_arrow, texts_from_arrow, vector_type, vectors_from_arrow, vectors_to_arrow


def test_encode_arrow_keeps_nulls_in_place(tiny_encoder: polyemb.Encoder) -> None:
    texts = pa.array(["a", None, "b", None, "a"])
    vectors = encode_arrow(tiny_encoder, texts)
    assert vectors.type == vector_type(tiny_encoder.dim)
    assert vectors.is_null().to_pylist() == [False, True, False, True, False]
    matrix, valid = vectors_from_arrow(vectors)
    np.testing.assert_allclose(matrix[valid], tiny_encoder.encode(["a", "b", "a"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "texts",
    [
        pa.array(["x", None, "y"], type=pa.large_string()),
        pa.array(["x", None, "y"]).dictionary_encode(),
        pa.chunked_array([["x"], [None, "y"]]),
        pa.array(["x", None, "y"], type=pa.string_view()),
    ],
)
def test_string_flavours(tiny_encoder: polyemb.Encoder, texts: pa.Array) -> None:
    assert texts_from_arrow(texts) == ["x", None, "y"]


def test_all_null_column(tiny_encoder: polyemb.Encoder) -> None:
    vectors = encode_arrow(tiny_encoder, pa.nulls(3))
    assert vectors.null_count == 3 and len(vectors) == 3


def test_non_string_column_is_an_error(tiny_encoder: polyemb.Encoder) -> None:
    with pytest.raises(polyemb.InvalidInputError, match="column 'n' has Arrow type int64"):
        encode_arrow(tiny_encoder, pa.array([1, 2]), name="column 'n'")


def test_bytes_that_are_not_utf8_name_their_row(tiny_encoder: polyemb.Encoder) -> None:
    # A Parquet file's strings are not checked when read: a UnicodeDecodeError came out of pyarrow.
    bad = pa.array([b"ok", None, b"caf\xe9"], pa.binary()).view(pa.string())
    column = pa.chunked_array([pa.array(["first"]), bad])
    with pytest.raises(polyemb.InvalidInputError, match=r"row 3 of column 't' is not UTF-8 text") as info:
        encode_arrow(tiny_encoder, column, name="column 't'")
    assert info.value.position == 3


def test_vectors_round_trip_with_slices_and_lists() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    valid = np.array([True, False, True, True])
    array = vectors_to_arrow(matrix, valid)
    back, back_valid = vectors_from_arrow(array)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], matrix[valid])
    assert not back[1].any()
    sliced, _ = vectors_from_arrow(vectors_to_arrow(matrix).slice(1, 2))
    np.testing.assert_array_equal(sliced, matrix[1:3])
    as_lists, _ = vectors_from_arrow(pa.array(matrix.tolist(), type=pa.list_(pa.float64())))
    np.testing.assert_array_equal(as_lists, matrix)


def test_ragged_or_non_float_vectors_are_errors() -> None:
    with pytest.raises(polyemb.InvalidInputError, match="different lengths"):
        vectors_from_arrow(pa.array([[1.0, 2.0], [1.0]]))
    with pytest.raises(polyemb.InvalidInputError, match="not a list of floats"):
        vectors_from_arrow(pa.array(["a"]))
    with pytest.raises(polyemb.InvalidInputError, match="position 1 holds NaN, infinity or a NULL element"):
        vectors_from_arrow(pa.array([[1.0, 2.0], [1.0, None]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("kind", [pa.list_(pa.float32()), pa.list_(pa.float32(), 2), pa.list_(pa.float64())])
def test_a_vector_with_nan_or_infinity_among_its_numbers_is_refused(bad: float, kind: pa.DataType) -> None:
    # It used to become a zero vector: every cosine with it 0.0, a match like any other.
    with pytest.raises(polyemb.InvalidInputError, match="position 2 holds NaN, infinity"):
        vectors_from_arrow(pa.array([[1.0, 2.0], None, [bad, 2.0]], type=kind))


@pytest.mark.parametrize("kind", [pa.list_(pa.float32()), pa.list_(pa.float32(), 2)])
def test_a_row_of_nan_only_reads_as_null(kind: pa.DataType) -> None:
    # As to_numpy writes a NULL row, and pandas' NaN (Arrow's from_pandas makes NULL elements).
    nan = float("nan")
    for rows in ([[1.0, 2.0], [nan, nan], [3.0, 4.0]], [[1.0, 2.0], [None, None], [3.0, 4.0]]):
        matrix, valid = vectors_from_arrow(pa.array(rows, type=kind))
        assert valid.tolist() == [True, False, True]
        assert matrix.tolist() == [[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]  # NULL rows are zero rows
    matrix, valid = vectors_from_arrow(pa.array([None, [nan, nan], [1.0, 0.0]], type=kind))
    assert valid.tolist() == [False, False, True] and not matrix[:2].any()
