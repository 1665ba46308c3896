"""One approximate answer everywhere: pandas, Polars, DuckDB, Spark and the command line find the
same ivf pairs as the core for the same vectors, settings and seed (the exact ones:
test_joins_agree.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb.duckdb
import polyemb.pandas
import polyemb.polars
import polyemb.spark
from polyemb.cli import main
from polyemb.ivf import Ivf, IvfReport
from polyemb.ivf.cells import COARSE_FROM
from polyemb.near_duplicates import connected_groups, pairs_above
from polyemb.similarity import top_pairs

K = 4
# Few lists probed, so that the answer differs from the exact one and agreement means something.
SETTINGS = Ivf(nlist=10, nprobe=2, seed=5)
DEDUP_SETTINGS = Ivf(nlist=10, nprobe=1, seed=5)
THRESHOLD = 0.85


def clustered(seed: int, rows: int, centres: int = 6, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, 24))
    return (middle[rng.integers(0, centres, rows)] + spread * rng.standard_normal((rows, 24))).astype(
        np.float32
    )


LEFT, RIGHT = clustered(1, 90), clustered(2, 300)
Sides = tuple[np.ndarray, np.ndarray]
# Enough right rows for COARSE_FROM lists: centroids in two levels (polyemb.ivf.cells).
WIDE = clustered(4, 6_090, centres=200, spread=0.4)
WIDE_SIDES: Sides = (WIDE[:90], WIDE[90:])
WIDE_SETTINGS = Ivf(nlist=COARSE_FROM, nprobe=3, seed=5)
# Sparser, so that the pairs form many small groups (385 pairs, 67 groups at 0.85).
ROWS = clustered(3, 400, centres=80, spread=0.45)


def via_pandas(
    score: str, method: Ivf, request: pytest.FixtureRequest, *, sides: Sides = (LEFT, RIGHT)
) -> set[tuple[int, int]]:
    left = pd.DataFrame({"i": range(len(sides[0])), "v": list(sides[0])})
    right = pd.DataFrame({"j": range(len(sides[1])), "v": list(sides[1])})
    joined = left.emb.join(right, "v", k=K, score=score, method=method)  # type: ignore[arg-type]
    return set(zip(joined["i"], joined["j"], strict=True))


def via_polars(
    score: str, method: Ivf, request: pytest.FixtureRequest, *, sides: Sides = (LEFT, RIGHT)
) -> set[tuple[int, int]]:
    left = pl.DataFrame({"i": range(len(sides[0])), "v": sides[0]})
    right = pl.DataFrame({"j": range(len(sides[1])), "v": sides[1]})
    joined = left.emb.join(right, "v", k=K, score=score, method=method)  # type: ignore[arg-type]
    return set(zip(joined["i"].to_list(), joined["j"].to_list(), strict=True))


def via_duckdb(
    score: str,
    method: Ivf,
    request: pytest.FixtureRequest,
    report: IvfReport | None = None,
    *,
    sides: Sides = (LEFT, RIGHT),
) -> set[tuple[int, int]]:
    con = duckdb.connect()
    vector = pa.list_(pa.float32(), 24)
    con.register("r", pa.table({"j": range(len(sides[1])), "v": pa.array(list(sides[1]), vector)}))
    con.register("l", pa.table({"i": range(len(sides[0])), "v": pa.array(list(sides[0]), vector)}))
    polyemb.duckdb.register_index(
        con,
        "r",
        "SELECT * FROM r",
        key="j",
        vector="v",
        score=score,
        queries="SELECT v FROM l",
        method=method,
        report=report,
    )  # type: ignore[arg-type]
    rows = con.execute(f"SELECT l.i, n.key FROM l, unnest(r_nearest_vector(l.v, {K})) AS t(n)").fetchall()
    return {(int(i), int(j)) for i, j in rows}


def spark_join(broadcast_mb: float) -> Any:
    def via_spark(
        score: str,
        method: Ivf,
        request: pytest.FixtureRequest,
        report: IvfReport | None = None,
        *,
        sides: Sides = (LEFT, RIGHT),
    ) -> set[tuple[int, int]]:
        spark = request.getfixturevalue("spark")
        left = spark.createDataFrame(
            [(i, v.tolist()) for i, v in enumerate(sides[0])], "i long, v array<float>"
        )
        right = spark.createDataFrame(
            [(j, v.tolist()) for j, v in enumerate(sides[1])], "j long, v array<float>"
        )
        joined = polyemb.spark.semantic_join(
            left,
            right,
            "v",
            k=K,
            score=score,
            method=method,
            report=report,
            block_rows=64,
            broadcast_mb=broadcast_mb,
        )  # type: ignore[arg-type]
        return {(row["i"], row["j"]) for row in joined.select("i", "j").collect()}

    return via_spark


ENGINES: dict[str, Any] = {
    "pandas": via_pandas,
    "polars": via_polars,
    "duckdb": via_duckdb,
    # A right side shipped with the task, and one spread over cells of lists.
    "spark-shipped": pytest.param(spark_join(64.0), marks=pytest.mark.spark),
    "spark-cells": pytest.param(spark_join(0.0), marks=pytest.mark.spark),
}


@pytest.mark.parametrize("score", ["cosine", "margin", "csls"])
@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
def test_same_ivf_top_k_everywhere(engine: Any, score: str, request: pytest.FixtureRequest) -> None:
    core = top_pairs(LEFT, RIGHT, K, score=score, method=SETTINGS)  # type: ignore[arg-type]
    expected = set(zip(core.query.tolist(), core.corpus.tolist(), strict=True))
    exact = top_pairs(LEFT, RIGHT, K, score=score)  # type: ignore[arg-type]
    assert expected != set(zip(exact.query.tolist(), exact.corpus.tolist(), strict=True))
    assert engine(score, SETTINGS, request) == expected


@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
def test_same_two_level_top_k_everywhere(engine: Any, request: pytest.FixtureRequest) -> None:
    core = top_pairs(*WIDE_SIDES, K, method=WIDE_SETTINGS)
    expected = set(zip(core.query.tolist(), core.corpus.tolist(), strict=True))
    exact = top_pairs(*WIDE_SIDES, K)
    assert expected != set(zip(exact.query.tolist(), exact.corpus.tolist(), strict=True))
    assert engine("cosine", WIDE_SETTINGS, request, sides=WIDE_SIDES) == expected


@pytest.mark.parametrize("score", ["cosine", "margin"])
@pytest.mark.parametrize(
    "engine",
    [
        "pandas",
        "duckdb",
        pytest.param("spark-shipped", marks=pytest.mark.spark),
        pytest.param("spark-cells", marks=pytest.mark.spark),
    ],
)
def test_recall_chooses_the_same_nprobe_everywhere(
    engine: str, score: str, request: pytest.FixtureRequest
) -> None:
    # Margin calibrates again for its own top-k: here it raises nprobe (6 to 12 lists of 69).
    wanted = Ivf(recall=0.8, seed=5)
    # DuckDB's index calibrates at k=10 when it is registered; its calls then ask for K.
    calibration_k = 10 if engine == "duckdb" else K
    core, report = IvfReport(), IvfReport()
    expected = top_pairs(LEFT, RIGHT, calibration_k, score=score, method=wanted, report=core)  # type: ignore[arg-type]
    by_cosine = IvfReport()
    top_pairs(LEFT, RIGHT, calibration_k, method=wanted, report=by_cosine)
    assert core.nprobe > by_cosine.nprobe if score == "margin" else core.nprobe == by_cosine.nprobe
    if engine == "duckdb":
        found = via_duckdb(score, wanted, request, report)
        expected = top_pairs(LEFT, RIGHT, K, score=score, method=Ivf(nprobe=core.nprobe, seed=5))  # type: ignore[arg-type]
    elif engine == "pandas":
        left = pd.DataFrame({"i": range(len(LEFT)), "v": list(LEFT)})
        right = pd.DataFrame({"j": range(len(RIGHT)), "v": list(RIGHT)})
        joined = left.emb.join(right, "v", k=K, score=score, method=wanted, report=report)  # type: ignore[arg-type]
        found = set(zip(joined["i"], joined["j"], strict=True))
    else:
        found = spark_join(64.0 if engine == "spark-shipped" else 0.0)(score, wanted, request, report)
    assert (report.nprobe, report.recall_estimate) == (core.nprobe, core.recall_estimate)
    assert found == set(zip(expected.query.tolist(), expected.corpus.tolist(), strict=True))


@pytest.mark.parametrize("score", ["cosine", "margin"])
@pytest.mark.parametrize("engine", ["core", "pandas", pytest.param("spark", marks=pytest.mark.spark)])
def test_recall_with_no_left_rows_estimates_nothing(
    engine: str, score: str, request: pytest.FixtureRequest
) -> None:
    # It reported recall 1.0 measured on 0 calibration rows.
    empty: Sides = (LEFT[:0], RIGHT)
    report = IvfReport()
    if engine == "core":
        found = top_pairs(*empty, K, score=score, method=Ivf(recall=0.9, seed=5), report=report)  # type: ignore[arg-type]
        assert len(found.query) == 0
    elif engine == "pandas":
        # Typed as vectors: an empty object column could be texts as well.
        vectors = pd.arrays.ArrowExtensionArray(pa.array([], pa.list_(pa.float32(), 24)))
        left = pd.DataFrame({"i": pd.Series([], dtype="int64"), "v": pd.Series(vectors)})
        right = pd.DataFrame({"j": range(len(RIGHT)), "v": list(RIGHT)})
        method = Ivf(recall=0.9, seed=5)
        assert left.emb.join(right, "v", k=K, score=score, method=method, report=report).empty  # type: ignore[arg-type]
    else:
        assert spark_join(0.0)(score, Ivf(recall=0.9, seed=5), request, report, sides=empty) == set()
    assert report.recall_estimate is None and not report.calibration_rows
    assert any("needs the left rows" in note for note in report.notes)


# ---------------------------------------------------------------------- near-duplicates


def dedup_pandas(method: Any, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[set[Any], list[int]]:
    series = pd.Series(list(ROWS))
    pairs = series.emb.near_duplicates(THRESHOLD, method=method)
    groups = series.emb.near_duplicates(THRESHOLD, method=method, groups=True)
    return set(zip(pairs["left"], pairs["right"], strict=True)), groups.fillna(-1).tolist()


def dedup_polars(method: Any, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[set[Any], list[int]]:
    series = pl.Series(ROWS)
    pairs = series.emb.near_duplicates(THRESHOLD, method=method)
    groups = series.emb.near_duplicates(THRESHOLD, method=method, groups=True)
    kept = series.emb.near_duplicates(THRESHOLD, method=method, keep="first")
    by_row = groups.fill_null(-1).to_list()
    assert len(kept) == sum(g < 0 for g in by_row) + len({g for g in by_row if g >= 0})
    return set(zip(pairs["left"].to_list(), pairs["right"].to_list(), strict=True)), by_row


def dedup_spark(method: Any, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[set[Any], list[int]]:
    spark = request.getfixturevalue("spark")
    frame = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(ROWS)], "i long, v array<float>")
    pairs = polyemb.spark.near_duplicates(frame, "v", THRESHOLD, method=method, block_rows=64)
    groups = polyemb.spark.near_duplicates(frame, "v", THRESHOLD, method=method, groups=True, block_rows=64)
    by_row = groups.toPandas().sort_values("i")["group"].fillna(-1).astype(int)
    return {(row["i_x"], row["i_y"]) for row in pairs.collect()}, by_row.tolist()


def dedup_cli(method: Any, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[set[Any], list[int]]:
    source, out = tmp_path / "rows.parquet", tmp_path / "groups.parquet"
    pq.write_table(pa.table({"v": pa.array(list(ROWS), pa.list_(pa.float32(), 24))}), source)
    settings = ["--method", "exact"]
    if method != "exact":
        settings = ["--method", "ivf", "--nlist", str(method.nlist), "--nprobe", str(method.nprobe)]
        settings += ["--seed", str(method.seed)]
    argv = ["dedup", str(source), "-c", "v", "--threshold", str(THRESHOLD), "-o", str(out), "--keep", "all"]
    assert main([*argv, *settings, "--no-progress"]) == 0
    groups = pq.read_table(out).column("group").to_pandas().fillna(-1).astype(int).tolist()
    return set(), groups  # the command writes groups, not pairs


DEDUPS: dict[str, Any] = {
    "pandas": dedup_pandas,
    "polars": dedup_polars,
    "spark": pytest.param(dedup_spark, marks=pytest.mark.spark),
    "cli": dedup_cli,
}


@pytest.mark.parametrize("method", ["exact", DEDUP_SETTINGS], ids=["exact", "ivf"])
@pytest.mark.parametrize("engine", list(DEDUPS.values()), ids=list(DEDUPS))
def test_same_near_duplicates_everywhere(
    engine: Any, method: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    i, j, _ = pairs_above(ROWS, THRESHOLD, method=method)
    expected = set(zip(i.tolist(), j.tolist(), strict=True))
    if method != "exact":
        exact = set(zip(*pairs_above(ROWS, THRESHOLD)[:2], strict=True))
        assert expected < exact
    pairs, groups = engine(method, request, tmp_path)
    assert pairs in (expected, set())
    assert groups == connected_groups(len(ROWS), i, j).tolist()
