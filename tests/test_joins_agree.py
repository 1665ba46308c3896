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


def columns_pandas(
    left: dict[str, list[Any]], right: dict[str, list[Any]], request: Any, **options: Any
) -> list[str]:
    joined = pd.DataFrame(left).emb.join(pd.DataFrame(right), "v", k=1, **options)
    return [str(c) for c in joined.columns]


def columns_polars(
    left: dict[str, list[Any]], right: dict[str, list[Any]], request: Any, **options: Any
) -> list[str]:
    def frame(columns: dict[str, list[Any]]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                name: pl.Series(values, dtype=pl.Array(pl.Float32, 24)) if name == "v" else values
                for name, values in columns.items()
            }
        )

    return frame(left).emb.join(frame(right), "v", k=1, **options).columns


def columns_spark(
    left: dict[str, list[Any]], right: dict[str, list[Any]], request: Any, **options: Any
) -> list[str]:
    spark = request.getfixturevalue("spark")

    def frame(columns: dict[str, list[Any]]) -> Any:
        rows = [
            tuple(v.tolist() if name == "v" else v for name, v in zip(columns, row, strict=True))
            for row in zip(*columns.values(), strict=True)
        ]
        schema = ", ".join(f"{name} array<float>" if name == "v" else f"{name} long" for name in columns)
        return spark.createDataFrame(rows, schema)

    joined = polyemb.spark.semantic_join(
        frame(left), frame(right), "v", k=1, **{"broadcast_mb": 0.0, **options}
    )
    return list(joined.columns)


JOINED_COLUMNS: dict[str, Any] = {
    "pandas": columns_pandas,
    "polars": columns_polars,
    "spark": pytest.param(columns_spark, marks=pytest.mark.spark),
}
SMALL_LEFT = {"id": [0, 1], "v": list(LEFT[:2])}
SMALL_RIGHT = {"id": [7, 8, 9], "v": list(RIGHT[:3])}


@pytest.mark.parametrize("engine", list(JOINED_COLUMNS.values()), ids=list(JOINED_COLUMNS))
def test_suffixes_that_leave_a_name_twice_are_refused(engine: Any, request: pytest.FixtureRequest) -> None:
    # merge's naming, and merge's refusal: a joined table with two columns of one name cannot be
    # read by name (Spark failed later on an ambiguous reference, Polars on a duplicate, pandas
    # returned it).
    left, right = SMALL_LEFT, SMALL_RIGHT
    assert engine(left, right, request, suffixes=("", "_r")) == ["id", "v", "id_r", "v_r", "score"]
    for suffixes in [("", ""), ("_a", "_a")]:
        with pytest.raises(polyemb.InvalidInputError, match=r"leave two columns named 'id(_a)?'"):
            engine(left, right, request, suffixes=suffixes)
    # A suffixed name that the left table already has.
    with pytest.raises(polyemb.InvalidInputError, match=r"leave two columns named 'id_x'"):
        engine({**left, "id_x": [5, 6]}, right, request, suffixes=("_x", "_y"))
    for suffixes in ["_x", ("_x",), ("_x", None)]:
        with pytest.raises(polyemb.InvalidInputError, match="suffixes must be two strings"):
            engine(left, right, request, suffixes=suffixes)


@pytest.mark.parametrize("engine", list(JOINED_COLUMNS.values()), ids=list(JOINED_COLUMNS))
def test_a_threshold_that_means_nothing_is_refused(engine: Any, request: pytest.FixtureRequest) -> None:
    # NaN compares false with every score: the join came back empty, without a word.
    for bad in (float("nan"), True, "0.5"):
        with pytest.raises(polyemb.InvalidInputError, match="threshold must be a number"):
            engine(SMALL_LEFT, SMALL_RIGHT, request, threshold=bad)
    # A threshold every score meets is accepted, numpy's float32 too (as near-duplicates take it).
    for accepted in (-1.0, np.float32(-1.0), -1):
        columns = engine(SMALL_LEFT, SMALL_RIGHT, request, threshold=accepted)
        assert columns == ["id_x", "v_x", "id_y", "v_y", "score"]


# Rows whose float32 cosine with themselves comes out just below 1 (0.99999994): rounding.
SAME = LEFT[:40]


def self_matches_pandas(request: Any, **options: Any) -> set[tuple[int, int]]:
    side = pd.DataFrame({"id": range(len(SAME)), "v": list(SAME)})
    joined = side.emb.join(side, "v", k=1, **options)
    return set(zip(joined["id_x"], joined["id_y"], strict=True))


def self_matches_polars(request: Any, **options: Any) -> set[tuple[int, int]]:
    side = pl.DataFrame({"id": range(len(SAME)), "v": pl.Series(SAME, dtype=pl.Array(pl.Float32, 24))})
    return set(side.emb.join(side, "v", k=1, **options).select("id_x", "id_y").iter_rows())


def self_matches_spark(request: Any, **options: Any) -> set[tuple[int, int]]:
    spark = request.getfixturevalue("spark")
    side = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(SAME)], "id long, v array<float>")
    joined = polyemb.spark.semantic_join(side, side, "v", k=1, broadcast_mb=0.0, **options)
    return {(row["id_x"], row["id_y"]) for row in joined.collect()}


SELF_MATCHES: dict[str, Any] = {
    "pandas": self_matches_pandas,
    "polars": self_matches_polars,
    "spark": pytest.param(self_matches_spark, marks=pytest.mark.spark),
}


@pytest.mark.parametrize("engine", list(SELF_MATCHES.values()), ids=list(SELF_MATCHES))
def test_threshold_one_keeps_identical_vectors(engine: Any, request: pytest.FixtureRequest) -> None:
    unit = SAME / np.linalg.norm(SAME, axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", unit, unit) < 1).any()  # else this test could not fail
    everyone = {(i, i) for i in range(len(SAME))}
    # A cosine threshold above 1 - 1e-5 is taken as 1 - 1e-5, as near-duplicates take it: a
    # quarter of identical texts' matches were dropped.
    assert engine(request, threshold=1.0) == everyone
    assert engine(request, threshold=2.0) == everyone
    # Margin's scores of identical rows pass 1: its threshold is taken as given.
    assert engine(request, threshold=1e6, score="margin") == set()


@pytest.mark.spark
def test_spark_refuses_a_broadcast_size_that_means_nothing(request: pytest.FixtureRequest) -> None:
    for bad in (-1, float("nan"), "64"):
        with pytest.raises(
            polyemb.InvalidInputError, match="broadcast_mb must be a number of MiB, 0 or more"
        ):
            columns_spark(SMALL_LEFT, SMALL_RIGHT, request, broadcast_mb=bad)


@pytest.mark.parametrize("frame", [pd.DataFrame, pl.DataFrame], ids=["pandas", "polars"])
@pytest.mark.parametrize(("clash", "chunks"), [("score", False), ("start", True), ("text_y", False)])
def test_a_clash_of_names_is_refused_before_anything_is_embedded(
    tiny_encoder: polyemb.Encoder, monkeypatch: pytest.MonkeyPatch, frame: Any, clash: str, chunks: bool
) -> None:
    # The clash was found once both sides were embedded and joined: minutes on a large table.
    def embedded(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded before the names were checked")

    for method in ("encode", "encode_nullable", "encode_chunks"):
        monkeypatch.setattr(polyemb.Encoder, method, embedded)
    left, right = frame({"text": ["a cat"], clash: [1]}), frame({"text": ["a dog"]})
    with pytest.raises(polyemb.InvalidInputError, match=f"columns? (named )?'{clash}'"):
        left.emb.join(right, "text", chunks=chunks, encoder=tiny_encoder)
