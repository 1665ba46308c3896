"""polyemb.spark.semantic_join on local[2]: the pandas join's pairs and scores, at any block size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import polyemb
import polyemb.pandas
import polyemb.spark

pytestmark = pytest.mark.spark


@pytest.fixture(autouse=True)
def _default_tiny(tiny_encoder: polyemb.Encoder) -> Any:
    polyemb.set_default_encoder(tiny_encoder)
    yield
    polyemb.set_default_encoder(None)


def vector_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    left = pd.DataFrame(
        {"id": range(60), "v": [list(x) for x in rng.standard_normal((60, 16)).astype(np.float32)]}
    )
    left.loc[[3, 17], "v"] = None  # NULL keys never match
    right = pd.DataFrame(
        {
            "id": range(100, 141),
            "name": [f"item {i}" for i in range(41)],
            "v": [list(x) for x in rng.standard_normal((41, 16)).astype(np.float32)],
        }
    )
    return left, right


def spark_frames(spark: SparkSession, left: pd.DataFrame, right: pd.DataFrame) -> tuple[Any, Any]:
    return (
        spark.createDataFrame(left, "id long, v array<float>").repartition(3),
        spark.createDataFrame(right, "id long, name string, v array<float>").coalesce(1),
    )


def same_pairs(got: pd.DataFrame, expected: pd.DataFrame, columns: list[str]) -> None:
    key = ["id_x", "score", "id_y"]
    got = got.sort_values(key, ascending=[True, False, True]).reset_index(drop=True)
    expected = expected.sort_values(key, ascending=[True, False, True]).reset_index(drop=True)
    assert list(got.columns) == columns
    assert got[["id_x", "id_y"]].values.tolist() == expected[["id_x", "id_y"]].values.tolist()
    for column in ("score", "cosine"):
        if column in columns:
            np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-5)


@pytest.mark.parametrize("score", ["cosine", "margin", "csls"])
@pytest.mark.parametrize("blocks", ["shipped", "blocked"])
def test_same_pairs_and_scores_as_pandas(spark: SparkSession, score: str, blocks: str) -> None:
    left, right = vector_frames()
    expected = left.emb.join(right, "v", k=3, score=score)  # type: ignore[arg-type]
    sl, sr = spark_frames(spark, left, right)
    # "blocked": blocks of 7 rows, nothing shipped whole: a right side no worker holds at once.
    options = {"block_rows": 7, "broadcast_mb": 0.0} if blocks == "blocked" else {}
    got = polyemb.spark.semantic_join(sl, sr, "v", k=3, score=score, **options).toPandas()  # type: ignore[arg-type]
    columns = ["id_x", "v_x", "id_y", "name", "v_y", "score", *(["cosine"] if score != "cosine" else [])]
    same_pairs(got, expected, columns)


def test_blocked_join_with_many_shuffle_partitions(spark: SparkSession) -> None:
    # Regression: the co-grouped block keys were a long on one side and an int on the other,
    # which hash to different shuffle partitions. Small test data met anyway (adaptive execution
    # coalesces it into one partition); at 2,000 x 5,000 rows the join returned no rows, or a
    # wrong top-k. Here: many partitions, none coalesced.
    left, right = vector_frames(seed=1)
    expected = left.emb.join(right, "v", k=3)
    sl, sr = spark_frames(spark, left, right)
    settings = {
        "spark.sql.shuffle.partitions": "16",
        "spark.sql.adaptive.coalescePartitions.enabled": "false",
    }
    before = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        for block_rows in (7, 1_000):  # many blocks and chunks; one of each
            got = polyemb.spark.semantic_join(sl, sr, "v", k=3, block_rows=block_rows, broadcast_mb=0.0)
            same_pairs(got.toPandas(), expected, ["id_x", "v_x", "id_y", "name", "v_y", "score"])
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)


def test_threshold_how_left_and_text_columns(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
) -> None:
    left = pd.DataFrame({"id": [1, 2, 3, 4], "text": ["a red cat", "a blue dog", None, "stock prices"]})
    right = pd.DataFrame({"id": [7, 8, 9], "text": ["the dog", "the cat", "markets"]})
    sl = spark.createDataFrame(left, "id long, text string")
    sr = spark.createDataFrame(right, "id long, text string")
    for how in ("inner", "left"):
        for threshold in (None, 0.9):
            expected = left.emb.join(right, "text", k=2, threshold=threshold, how=how)  # type: ignore[arg-type]
            got = polyemb.spark.semantic_join(
                sl,
                sr,
                "text",
                k=2,
                threshold=threshold,
                how=how,
                model=tiny_model_dir,  # type: ignore[arg-type]
            ).toPandas()
            assert len(got) == len(expected)
            matched = got.dropna(subset=["id_y"])
            same_pairs(
                matched.astype({"id_y": "int64"}),
                expected.dropna(subset=["id_y"]).astype({"id_y": "int64"}),
                ["id_x", "text_x", "id_y", "text_y", "score"],
            )
            if how == "left":
                assert sorted(got["id_x"].unique().tolist()) == [1, 2, 3, 4]  # every left row once at least
    # Vectors from the text: the model's provenance travels with the UDF's vectors.
    vectors = sr.withColumn("v", polyemb.spark.embed_udf(tiny_model_dir)("text"))
    with pytest.raises(polyemb.InvalidInputError, match="text \\(string\\) or vector"):
        polyemb.spark.semantic_join(sl.withColumn("n", F.lit(1)), vectors, "n", "v")


def test_vectors_of_two_models_are_refused(spark: SparkSession, tmp_path: Path) -> None:
    left, right = vector_frames()
    sl, sr = spark_frames(spark, left, right)
    sl = sl.withMetadata("v", {"polyemb.model": "model-a@sha256:aaa"})
    sr = sr.withMetadata("v", {"polyemb.model": "model-b@sha256:bbb"})
    with pytest.raises(polyemb.ModelMismatchError, match="model-a@sha256:aaa and model-b@sha256:bbb"):
        polyemb.spark.semantic_join(sl, sr, "v")
    with pytest.raises(polyemb.ColumnNotFoundError, match="Did you mean 'v'"):
        polyemb.spark.semantic_join(sl, sr, "vv", "v")


def test_semantic_join_job(
    spark: SparkSession,
    tiny_model_dir: Path,
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    import pyarrow as pa
    import pyarrow.parquet as pq

    job_path = Path(__file__).parents[2] / "udfs" / "spark" / "semantic_join_job.py"
    spec = importlib.util.spec_from_file_location("semantic_join_job", job_path)
    assert spec and spec.loader
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    left = pd.DataFrame({"oid": [1, 2, 3], "description": ["a red cat", None, "cheap stocks"]})
    right = pd.DataFrame({"pid": [7, 8, 9], "name": ["the cat", "the dog", "markets"]})
    pq.write_table(pa.Table.from_pandas(left), tmp_path / "orders.parquet")
    pq.write_table(pa.Table.from_pandas(right), tmp_path / "products.parquet")
    argv = [
        "--left", str(tmp_path / "orders.parquet"), "--right", str(tmp_path / "products.parquet"),
        "--left-on", "description", "--right-on", "name", "--k", "2", "--score", "margin",
        "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    assert job.main(argv) == 0
    got = pq.read_table(tmp_path / "out").to_pandas()
    expected = left.emb.join(right, "description", "name", k=2, score="margin")
    same_pairs(
        got.rename(columns={"oid": "id_x", "pid": "id_y"}),
        expected.rename(columns={"oid": "id_x", "pid": "id_y"}),
        ["id_x", "description", "id_y", "name", "score", "cosine"],
    )
    assert job.main([*argv[:-1], str(tmp_path / "other"), "--left-on", "descr"]) == 2
    assert "Did you mean 'description'" in capsys.readouterr().err
    # Refused before any work, exit 2: the output over an input, an output there, a missing input.
    over = [*argv[:-1], str(tmp_path / "products.parquet"), "--mode", "overwrite"]
    assert job.main(over) == 2
    assert "holds or is inside the input" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "products.parquet").num_rows == 3
    assert job.main(argv) == 2
    assert "exists: choose another, or give --mode overwrite or append" in capsys.readouterr().err
    assert job.main([*argv[:3], str(tmp_path / "nope"), *argv[4:-1], str(tmp_path / "other")]) == 2
    assert "cannot read Parquet at" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("score", ["cosine", "margin"])
def test_chunks_give_the_pandas_joins_pairs_and_windows(
    spark: SparkSession, tiny_model_dir: Path, score: str
) -> None:
    from polyemb.testing import SAMPLE_SENTENCES

    left = pd.DataFrame({"id": [1, 2, 3, 4], "q": ["a man plays guitar", None, "snow and dogs", "the mat"]})
    docs = [" ".join(SAMPLE_SENTENCES[i : i + 9]) for i in range(0, 27, 3)] + [None, "short"]
    right = pd.DataFrame({"id": range(10, 10 + len(docs)), "body": docs})
    expected = left.emb.join(right, "q", "body", k=2, chunks=True, score=score, how="left")  # type: ignore[arg-type]
    sl = spark.createDataFrame(left, "id long, q string").repartition(2)
    sr = spark.createDataFrame(right, "id long, body string").repartition(3)
    columns = [
        "id_x",
        "q",
        "id_y",
        "body",
        "score",
        *(["cosine"] if score != "cosine" else []),
        "start",
        "end",
    ]
    # Shipped whole (with Arrow batches of 3 rows too: a batch may end inside a right row's
    # windows, whose neighbourhood must still see all of them), and in blocks of 3 right rows.
    for options in ({}, {"arrow_rows": 3}, {"block_rows": 3, "broadcast_mb": 0.0}):
        batch_rows = options.pop("arrow_rows", None)
        if batch_rows:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
        got = polyemb.spark.semantic_join(
            sl,
            sr,
            "q",
            "body",
            k=2,
            chunks=True,
            score=score,
            how="left",
            model=tiny_model_dir,
            **options,  # type: ignore[arg-type]
        ).toPandas()
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        assert list(got.columns) == columns
        matched = got.dropna(subset=["id_y"]).astype({"id_y": "int64", "start": "int64", "end": "int64"})
        wanted = expected.dropna(subset=["id_y"]).astype({"id_y": "int64", "start": "int64", "end": "int64"})
        same_pairs(matched, wanted, columns)
        key = ["id_x", "id_y"]
        offsets = matched.sort_values(key)[["start", "end"]].values.tolist()
        assert offsets == wanted.sort_values(key)[["start", "end"]].values.tolist()
        assert got[got["id_x"] == 2]["start"].isna().all()  # the NULL query matched nothing
    with pytest.raises(polyemb.InvalidInputError, match="chunks=True needs a text"):
        vectors = sr.withColumn("v", polyemb.spark.embed_udf(tiny_model_dir)("body"))
        polyemb.spark.semantic_join(sl, vectors, "q", "v", chunks=True, model=tiny_model_dir)  # type: ignore[arg-type]
