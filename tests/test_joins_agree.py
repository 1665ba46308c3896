"""One answer everywhere: pandas, Polars, DuckDB and Spark give the same top-k on the same vectors."""

from __future__ import annotations

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

K = 4


def vectors(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 24)).astype(np.float32)


LEFT, RIGHT = vectors(1, 80), vectors(2, 50)


def via_pandas(score: str, request: pytest.FixtureRequest) -> set[tuple[int, int]]:
    left = pd.DataFrame({"i": range(len(LEFT)), "v": list(LEFT)})
    right = pd.DataFrame({"j": range(len(RIGHT)), "v": list(RIGHT)})
    joined = left.emb.join(right, "v", k=K, score=score)  # type: ignore[arg-type]
    return set(zip(joined["i"], joined["j"], strict=True))


def via_polars(score: str, request: pytest.FixtureRequest) -> set[tuple[int, int]]:
    vector = pl.Array(pl.Float32, 24)
    left = pl.DataFrame({"i": range(len(LEFT)), "v": pl.Series(LEFT, dtype=vector)})
    right = pl.DataFrame({"j": range(len(RIGHT)), "v": pl.Series(RIGHT, dtype=vector)})
    joined = left.emb.join(right, "v", k=K, score=score)  # type: ignore[arg-type]
    return set(joined.select("i", "j").iter_rows())


def via_duckdb(score: str, request: pytest.FixtureRequest) -> set[tuple[int, int]]:
    con = duckdb.connect()
    vector = pa.list_(pa.float32(), 24)
    con.register("r", pa.table({"j": range(len(RIGHT)), "v": pa.array(list(RIGHT), vector)}))
    con.register("l", pa.table({"i": range(len(LEFT)), "v": pa.array(list(LEFT), vector)}))
    queries = "SELECT v FROM l" if score != "cosine" else None
    polyemb.duckdb.register_index(
        con, "r", "SELECT * FROM r", key="j", vector="v", score=score, queries=queries
    )  # type: ignore[arg-type]
    rows = con.execute(f"SELECT l.i, n.key FROM l, unnest(r_nearest_vector(l.v, {K})) AS t(n)").fetchall()
    return {(int(i), int(j)) for i, j in rows}


def via_spark(score: str, request: pytest.FixtureRequest) -> set[tuple[int, int]]:
    spark = request.getfixturevalue("spark")
    left = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(LEFT)], "i long, v array<float>")
    right = spark.createDataFrame([(j, v.tolist()) for j, v in enumerate(RIGHT)], "j long, v array<float>")
    joined = polyemb.spark.semantic_join(left, right, "v", k=K, score=score, block_rows=16, broadcast_mb=0.0)  # type: ignore[arg-type]
    return {(row["i"], row["j"]) for row in joined.select("i", "j").collect()}


ENGINES: dict[str, Any] = {
    "pandas": via_pandas,
    "polars": via_polars,
    "duckdb": via_duckdb,
    "spark": pytest.param(via_spark, marks=pytest.mark.spark),
}


@pytest.mark.parametrize("score", ["cosine", "margin", "csls"])
@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
def test_same_top_k_everywhere(engine: Any, score: str, request: pytest.FixtureRequest) -> None:
    # The reference: brute force over the full score matrix, in float64.
    left = LEFT / np.linalg.norm(LEFT, axis=1, keepdims=True)
    right = RIGHT / np.linalg.norm(RIGHT, axis=1, keepdims=True)
    cos = left.astype(np.float64) @ right.T.astype(np.float64)
    r_left = np.sort(cos, axis=1)[:, -4:].mean(axis=1)
    r_right = np.sort(cos, axis=0)[-4:, :].mean(axis=0)
    full = {
        "cosine": cos,
        "margin": cos / ((r_left[:, None] + r_right[None, :]) / 2),
        "csls": 2 * cos - r_left[:, None] - r_right[None, :],
    }[score]
    best = np.argsort(-full, axis=1, kind="stable")[:, :K]
    expected = {(i, int(j)) for i in range(len(LEFT)) for j in best[i]}
    assert engine(score, request) == expected
