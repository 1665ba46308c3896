"""One answer everywhere: the core, pandas, Polars, DuckDB and Spark give the same vectors and
NULLs, the same chunks of long texts, and the same best window of each text for a query."""

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
from polyemb.chunks import chunks_of_table
from polyemb.maxsim import top_chunk_pairs
from polyemb.testing import SAMPLE_SENTENCES

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


# ---------------------------------------------------------------------- chunks

QUERY = "a long text about a cat on the mat"
# TEXTS with long texts of a few dozen windows, of distinct windows and of repeated ones (the
# same duplicates, NULLs and scripts).
CHUNK_TEXTS = [
    *(text if text is None or len(text) < 1_000 else " ".join(SAMPLE_SENTENCES) for text in TEXTS),
    "a long text about " * 60 + "the mat",
]
CHUNK_FIELDS = ("row", "chunk", "start", "end", "tokens")


def chunks_via_core(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    table = encoder.encode_chunks(texts)
    return list(
        zip(*(table.column(name).to_pylist() for name in CHUNK_FIELDS), strict=True)
    ), chunks_of_table(table).vectors


def chunks_via_pandas(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    series = pd.Series(texts, index=np.arange(len(texts)) * 10, dtype=object)
    frame = series.emb.chunks(encoder=encoder)
    keys = [
        (label // 10, *values)
        for label, values in zip(
            frame.index, frame[list(CHUNK_FIELDS[1:])].itertuples(index=False), strict=True
        )
    ]
    return keys, frame["vector"].emb.to_numpy()


def chunks_via_polars(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    frame = pl.Series(texts, dtype=pl.String).emb.chunks(encoder=encoder)
    assert frame.columns == ["index", "chunk", "start", "end", "tokens", "vector"]
    keys = [tuple(row) for row in frame.select(pl.exclude("vector")).iter_rows()]
    return keys, frame["vector"].to_numpy()


def chunks_via_duckdb(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    con = duckdb.connect()
    polyemb.duckdb.register(con, encoder)
    con.register(
        "texts", pa.table({"id": pa.array(range(len(texts)), pa.int64()), "t": pa.array(texts, pa.string())})
    )
    rows = con.sql(
        'SELECT id, n - 1, c.start, c."end", c.tokens, c.vector FROM texts, '
        "unnest(embed_chunks(t)) WITH ORDINALITY AS u(c, n) ORDER BY id, n"
    ).fetchall()
    return [tuple(row[:5]) for row in rows], np.array([row[5] for row in rows], dtype=np.float32)


def chunks_via_spark(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    from pyspark.sql import functions as F

    spark = request.getfixturevalue("spark")
    chunks = polyemb.spark.embed_chunks_udf(
        encoder.folder, delivery="path", max_seq_length=encoder.max_seq_length
    )
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, t string").repartition(3)
    exploded = frame.select("id", F.posexplode(chunks("t")).alias("n", "c"))
    rows = sorted(exploded.select("id", "n", "c.start", "c.end", "c.tokens", "c.vector").collect())
    return [tuple(row[:5]) for row in rows], np.array([row[5] for row in rows], dtype=np.float32)


CHUNK_ENGINES: dict[str, Callable[..., tuple[list[tuple[int, ...]], np.ndarray]]] = {
    "core": chunks_via_core,
    "pandas": chunks_via_pandas,
    "polars": chunks_via_polars,
    "duckdb": chunks_via_duckdb,
    "spark": pytest.param(chunks_via_spark, marks=pytest.mark.spark),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("engine", list(CHUNK_ENGINES.values()), ids=list(CHUNK_ENGINES))
def test_same_chunks_everywhere(
    engine: Any, tiny_encoder: polyemb.Encoder, request: pytest.FixtureRequest
) -> None:
    expected_keys, expected = chunks_via_core(tiny_encoder, CHUNK_TEXTS, request)
    keys, vectors = engine(tiny_encoder, CHUNK_TEXTS, request)
    assert keys == expected_keys
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def best_via_core(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> dict[int, tuple[int, int, float]]:
    found = chunks_of_table(encoder.encode_chunks(texts))
    pairs = top_chunk_pairs(encoder.encode([QUERY]), found.vectors, len(texts), corpus_rows=found.row)
    return {
        int(row): (int(found.start[chunk]), int(found.end[chunk]), float(score))
        for row, chunk, score in zip(pairs.corpus, pairs.corpus_chunk, pairs.score, strict=True)
    }


def best_via_pandas(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> dict[int, tuple[int, int, float]]:
    series = pd.Series(texts, index=np.arange(len(texts)) * 10, dtype=object)
    found = series.emb.search(QUERY, k=len(texts), chunks=True, encoder=encoder)
    return {int(label) // 10: (int(r.start), int(r.end), float(r.score)) for label, r in found.iterrows()}


def best_via_polars(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> dict[int, tuple[int, int, float]]:
    found = pl.Series(texts, dtype=pl.String).emb.search(QUERY, k=len(texts), chunks=True, encoder=encoder)
    return {row["index"]: (row["start"], row["end"], row["score"]) for row in found.iter_rows(named=True)}


def best_via_duckdb(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> dict[int, tuple[int, int, float]]:
    con = duckdb.connect()
    polyemb.duckdb.register(con, encoder)
    con.register(
        "texts", pa.table({"id": pa.array(range(len(texts)), pa.int64()), "t": pa.array(texts, pa.string())})
    )
    rows = con.execute(
        'SELECT id, c.start, c."end", array_cosine_similarity(c.vector, embed($query)) AS score '
        "FROM texts, unnest(embed_chunks(t)) AS u(c) "
        "QUALIFY row_number() OVER (PARTITION BY id ORDER BY score DESC, c.start) = 1",
        {"query": QUERY},
    ).fetchall()
    return {int(row[0]): (int(row[1]), int(row[2]), float(row[3])) for row in rows}


def best_via_spark(
    encoder: polyemb.Encoder, texts: list[str | None], request: pytest.FixtureRequest
) -> dict[int, tuple[int, int, float]]:
    spark = request.getfixturevalue("spark")
    right = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, t string").repartition(3)
    left = spark.createDataFrame([(QUERY,)], "q string")
    joined = polyemb.spark.semantic_join(
        left,
        right,
        "q",
        "t",
        k=len(texts),
        chunks=True,
        model=encoder.folder,
        delivery="path",
        max_seq_length=encoder.max_seq_length,
    )
    return {
        int(row["id"]): (int(row["start"]), int(row["end"]), float(row["score"])) for row in joined.collect()
    }


BEST_ENGINES: dict[str, Callable[..., dict[int, tuple[int, int, float]]]] = {
    "core": best_via_core,
    "pandas": best_via_pandas,
    "polars": best_via_polars,
    "duckdb": best_via_duckdb,
    "spark": pytest.param(best_via_spark, marks=pytest.mark.spark),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("engine", list(BEST_ENGINES.values()), ids=list(BEST_ENGINES))
def test_same_best_windows_everywhere(
    engine: Any, tiny_encoder: polyemb.Encoder, request: pytest.FixtureRequest
) -> None:
    expected = best_via_core(tiny_encoder, CHUNK_TEXTS, request)
    found = engine(tiny_encoder, CHUNK_TEXTS, request)
    assert sorted(found) == sorted(expected)  # every row with a text, none of the NULLs
    table = tiny_encoder.encode_chunks(CHUNK_TEXTS)
    windows = chunks_of_table(table)
    cosines = windows.vectors @ tiny_encoder.encode([QUERY])[0]
    clear = 0
    for row, (start, end, score) in found.items():
        assert score == pytest.approx(expected[row][2], abs=1e-5)
        mine = windows.row == row
        ranked = np.sort(cosines[mine])[::-1]
        if len(ranked) == 1 or ranked[0] - ranked[1] > 1e-4:  # a clear best: the same window
            assert (start, end) == expected[row][:2]
            clear += len(ranked) > 1
        else:  # windows within float rounding of each other: any of them, at the best score
            chosen = mine & (windows.start == start) & (windows.end == end)
            assert cosines[chosen].max() == pytest.approx(ranked[0], abs=1e-5)
    assert clear  # a long text whose best window stands out
