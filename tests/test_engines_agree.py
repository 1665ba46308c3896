"""One answer everywhere: the core, pandas, Polars, DuckDB and Spark give the same vectors and NULLs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from polyemb.arrow import vectors_from_arrow

# Duplicates, NULLs, empty and whitespace-only texts, a text far over max_seq_length, scripts.
TEXTS: list[str | None] = [
    "The cat sits on the mat.",
    None,
    "",
    "The cat sits on the mat.",
    "   ",
    "a long text " * 2_000,
    "El gato está en la alfombra.",
    None,
    "猫がマットの上に座っている。",
    "مرحبا بالعالم 😀",
    "The cat sits on the mat.",
]


def via_core(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[np.ndarray, np.ndarray]:
    return encoder.encode_nullable(texts)


def via_pandas(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[np.ndarray, np.ndarray]:
    series = pd.Series(texts, index=np.arange(len(texts)) * 10, dtype=object)
    vectors = series.emb.encode(encoder=encoder)
    assert vectors.index.equals(series.index)
    return vectors_from_arrow(pa.array(vectors.array))


def via_polars(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[np.ndarray, np.ndarray]:
    series = pl.Series("t", texts, dtype=pl.String)
    vectors = series.emb.encode(encoder=encoder)
    # The expression, in a lazy query on the streaming engine, gives the Series' answer.
    streamed = (
        pl.LazyFrame({"t": series})
        .with_columns(pl.col("t").emb.encode(encoder=encoder).alias("v"))
        .collect(engine="streaming")
    )
    assert streamed["t"].equals(series)
    np.testing.assert_allclose(streamed["v"].emb.to_numpy(), vectors.emb.to_numpy(), rtol=0, atol=1e-6)
    return vectors_from_arrow(vectors.to_arrow())


def via_duckdb(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[np.ndarray, np.ndarray]:
    con = duckdb.connect()
    polyemb.duckdb.register(con, encoder).clear()
    con.register(
        "texts", pa.table({"id": pa.array(range(len(texts)), pa.int64()), "t": pa.array(texts, pa.string())})
    )
    table = con.sql("SELECT id, embed(t) AS v FROM texts ORDER BY id").to_arrow_table()
    assert table.column("id").to_pylist() == list(range(len(texts)))
    return vectors_from_arrow(table.column("v"))


def via_spark(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[np.ndarray, np.ndarray]:
    spark = request.getfixturevalue("spark")
    embed = polyemb.spark.embed_udf(encoder.folder, delivery="path", max_seq_length=encoder.max_seq_length)
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, t string").repartition(3)
    rows = sorted(frame.select("id", embed("t").alias("v")).collect(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(len(texts)))
    valid = np.array([row["v"] is not None for row in rows])
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    vectors[valid] = np.array([row["v"] for row in rows if row["v"] is not None], dtype=np.float32)
    return vectors, valid


ENGINES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "core": via_core,
    "pandas": via_pandas,
    "polars": via_polars,
    "duckdb": via_duckdb,
    "spark": pytest.param(via_spark, marks=pytest.mark.spark),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
def test_same_vectors_and_nulls_everywhere(
    engine: Any, tiny_encoder: polyemb.Encoder, request: pytest.FixtureRequest
) -> None:
    expected, expected_valid = tiny_encoder.encode_nullable(TEXTS)
    vectors, valid = engine(tiny_encoder, TEXTS, request)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(vectors[valid], expected[valid], atol=1e-5)
    # Duplicates give the same row, wherever they sit.
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)
    np.testing.assert_allclose(vectors[0], vectors[10], atol=1e-6)
