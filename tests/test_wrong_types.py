"""Wrong types in a text column: a clear error that names the row, function or column.

Nothing silently encodes "None" or "nan": missing values stay missing, and the strings "None"
and "nan" are texts like any other.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import polyemb
import polyemb.duckdb
import polyemb.pandas
import polyemb.spark


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3, "int"),
        (2.5, "float"),
        (b"bytes", "bytes"),
        (["a", "list"], "list"),
        ({"a": 1}, "dict"),
        (True, "bool"),
    ],
)
def test_pandas_names_the_row(tiny_encoder: polyemb.Encoder, value: object, kind: str) -> None:
    series = pd.Series(["fine", value, "ok"], index=["r1", "r2", "r3"], name="title", dtype=object)
    with pytest.raises(polyemb.InvalidInputError, match=rf"row 'r2' of Series 'title' is {kind} "):
        series.emb.encode(encoder=tiny_encoder)


def test_pandas_missing_values_are_missing_and_strings_are_texts(tiny_encoder: polyemb.Encoder) -> None:
    series = pd.Series(["None", None, "nan", np.nan, pd.NA, "NULL"], dtype=object)
    vectors = series.emb.encode(encoder=tiny_encoder)
    assert vectors.isna().tolist() == [False, True, False, True, True, False]
    matrix = vectors.emb.to_numpy()
    np.testing.assert_allclose(matrix[[0, 2, 5]], tiny_encoder.encode(["None", "nan", "NULL"]), atol=1e-6)


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        ("embed(42)", "embed(INTEGER"),
        ("embed(4.2)", "embed(DECIMAL"),
        ("embed('x'::BLOB)", "embed(BLOB)"),
        ("embed([1, 2])", "embed(INTEGER[])"),
        ("embed({'a': 1})", "embed(STRUCT"),
        ("semantic_similarity('a', 42)", "semantic_similarity(STRING_LITERAL, INTEGER"),
    ],
)
def test_duckdb_names_the_function_and_argument_types(
    tiny_encoder: polyemb.Encoder, sql: str, shown: str
) -> None:
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    with pytest.raises(duckdb.BinderException) as info:
        con.execute(f"SELECT {sql}").fetchall()
    assert shown in str(info.value) and "explicit type casts" in str(info.value)


def test_duckdb_null_and_strings(tiny_encoder: polyemb.Encoder) -> None:
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    rows = con.execute("SELECT embed(NULL) IS NULL, embed('None') IS NULL, embed('NULL') IS NULL").fetchall()
    assert rows == [(True, False, False)]


@pytest.mark.spark
@pytest.mark.parametrize(
    ("column", "arrow"),
    [("n", "int64"), ("flags", "list<item: bool>"), ("raw", "binary")],
)
def test_spark_names_the_column(spark, tiny_encoder: polyemb.Encoder, column: str, arrow: str) -> None:  # type: ignore[no-untyped-def]
    embed = polyemb.spark.embed_udf(tiny_encoder.folder, delivery="path")
    frame = spark.createDataFrame([(1, [True], bytearray(b"x"))], "n long, flags array<boolean>, raw binary")
    with pytest.raises(Exception, match=rf"embed\(\): column '{column}' has Arrow type {arrow}"):
        frame.select(embed(column)).collect()
