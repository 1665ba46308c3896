"""Wrong types in a text column: a clear error that names the row, function or column.

Nothing silently encodes "None" or "nan": missing values stay missing, and the strings "None"
and "nan" are texts like any other.
"""

from __future__ import annotations

import re
from datetime import date

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import polyemb
import polyemb.duckdb
import polyemb.pandas
import polyemb.polars
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


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([None, ["hello", "world"], ["x"]], name="tokens", dtype=object),
        pd.Series([("hello", "world")], name="tokens"),
        pd.Series([["hello", "world"]], name="tokens", dtype=pd.ArrowDtype(pa.list_(pa.string()))),
        pd.Series([["hello"], None], name="tokens", dtype=pd.ArrowDtype(pa.large_list(pa.large_string()))),
    ],
)
def test_pandas_token_lists_are_not_vectors(tiny_encoder: polyemb.Encoder, series: pd.Series) -> None:
    # Lists of strings: a text column to join first, not "already holds vectors" or "not float vectors".
    for call in (series.emb.encode, lambda **kw: series.emb.similarity("a text", **kw)):
        with pytest.raises(
            polyemb.InvalidInputError, match=r"is \w+ \(.*hello.*\.map\(' '\.join, na_action='ignore'\)"
        ):
            call(encoder=tiny_encoder)
    joined = series.map(" ".join, na_action="ignore")  # the hint, as given
    assert joined.emb.encode(encoder=tiny_encoder).notna().sum() >= 1


def test_pandas_lists_of_string_views_are_not_vectors() -> None:
    # pandas itself cannot take rows of such a column (no array_take kernel): only the decision.
    from polyemb.pandas._columns import holds_vectors

    assert not holds_vectors(pd.Series([["a"]], dtype=pd.ArrowDtype(pa.list_(pa.string_view()))))
    assert holds_vectors(pd.Series([[1.0]], dtype=pd.ArrowDtype(pa.list_(pa.float32()))))


def test_pandas_names_a_categoricals_own_value(tiny_encoder: polyemb.Encoder) -> None:
    # Integer categories with an NA: the error shows the int, not the float pandas converts it to.
    series = pd.Series(pd.Categorical([None, 1, 2]), index=["a", "b", "c"], name="code")
    with pytest.raises(polyemb.InvalidInputError, match=r"row 'b' of Series 'code' is int \(1\), not a text"):
        series.emb.encode(encoder=tiny_encoder)


def test_pandas_names_the_row_and_side_of_a_pair(tiny_encoder: polyemb.Encoder) -> None:
    # similarity and join encode both sides' texts in one call: the error still names the side
    # and its own row label, not a place in that call.
    left = pd.Series(["a cat", "a dog"], index=["p", "q"], name="title")
    right = pd.Series(["a cow", 42], index=["q", "p"], name="headline", dtype=object)
    with pytest.raises(polyemb.InvalidInputError, match=r"row 'p' of Series 'headline' is int "):
        left.emb.similarity(right, encoder=tiny_encoder)
    with pytest.raises(polyemb.InvalidInputError, match=r"row 'q' of Series 'title' is float "):
        pd.Series(["a cat", 2.5], index=["p", "q"], name="title").emb.similarity(left, encoder=tiny_encoder)
    frame = pd.DataFrame({"description": ["a cat", "a dog"]}, index=["p", "q"])
    other = pd.DataFrame({"name": ["a cow", 42, "x"]}, index=["r1", "r2", "r3"])
    with pytest.raises(polyemb.InvalidInputError, match=r"row 'r2' of Series 'name' is int "):
        frame.emb.join(other, "description", "name", encoder=tiny_encoder)


def test_pandas_missing_values_are_missing_and_strings_are_texts(tiny_encoder: polyemb.Encoder) -> None:
    series = pd.Series(["None", None, "nan", np.nan, pd.NA, "NULL"], dtype=object)
    vectors = series.emb.encode(encoder=tiny_encoder)
    assert vectors.isna().tolist() == [False, True, False, True, True, False]
    matrix = vectors.emb.to_numpy()
    np.testing.assert_allclose(matrix[[0, 2, 5]], tiny_encoder.encode(["None", "nan", "NULL"]), atol=1e-6)


POLARS_COLUMNS = {
    "n": pl.Series([3], dtype=pl.Int64),
    "x": pl.Series([2.5]),
    "raw": pl.Series([b"bytes"]),
    "tags": pl.Series([["a", "list"]]),
    "fixed": pl.Series([["a", "b"]], dtype=pl.Array(pl.String, 2)),
    "record": pl.Series([{"a": 1}]),
    "flag": pl.Series([True]),
    "day": pl.Series([date(2024, 1, 1)]),
    "thing": pl.Series([object()], dtype=pl.Object),
}


@pytest.mark.parametrize("column", list(POLARS_COLUMNS))
def test_polars_names_the_column(tiny_encoder: polyemb.Encoder, column: str) -> None:
    series = POLARS_COLUMNS[column].alias(column)
    shown = rf"column '{column}' is of type {re.escape(str(series.dtype))}: neither texts"
    with pytest.raises(polyemb.InvalidInputError, match=shown):
        series.emb.encode(encoder=tiny_encoder)
    with pytest.raises(polyemb.InvalidInputError, match=shown):
        series.emb.similarity("a text", encoder=tiny_encoder)
    # In a query, Polars re-raises the error with the expression added; the type and text stay.
    query = pl.LazyFrame({column: series}).select(pl.col(column).emb.encode(encoder=tiny_encoder))
    for engine in ("in-memory", "streaming"):
        with pytest.raises(polyemb.InvalidInputError, match=shown):
            query.collect(engine=engine)  # type: ignore[call-overload]
    with pytest.raises(polyemb.InvalidInputError, match=shown):
        pl.DataFrame({column: series}).emb.join(pl.DataFrame({column: ["a"]}), column, encoder=tiny_encoder)


def test_polars_null_and_strings(tiny_encoder: polyemb.Encoder) -> None:
    vectors = pl.Series("t", ["None", None, "nan", "NULL"]).emb.encode(encoder=tiny_encoder)
    assert vectors.is_null().to_list() == [False, True, False, False]
    np.testing.assert_allclose(
        vectors.emb.to_numpy()[[0, 2, 3]], tiny_encoder.encode(["None", "nan", "NULL"]), atol=1e-6
    )


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
