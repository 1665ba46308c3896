"""The Spark UDFs on a real local Spark Connect session, with the default delivery.

PySpark decides per process whether ``F.col``, ``pandas_udf`` and friends build classic or
Spark Connect plans (``SPARK_CONNECT_MODE_ENABLED``, set when a Connect session starts), and a
local Connect server cannot start beside the suite's classic session. So these tests run in a
child pytest process of their own: in the suite, one test starts that child on this file and
fails with the child's report if any test in it fails or skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polyemb

pytestmark = pytest.mark.spark

CHILD = "POLYEMB_CONNECT_CHILD"

TEXTS = ["The cat sits on the mat.", None, "El gato está en la alfombra.", "", "The cat sits on the mat."]


if os.environ.get(CHILD) != "1":

    def test_spark_connect_suite_in_its_own_process() -> None:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-p", "no:cacheprovider", "-rA", "-q"],
            env={**os.environ, CHILD: "1"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        report = result.stdout[-6000:]
        print(report)
        assert result.returncode == 0, report + result.stderr[-3000:]
        summary = report.strip().splitlines()[-1]
        assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary

else:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    import polyemb.spark
    from polyemb.spark.delivery import ModelSource, model_source

    @pytest.fixture(scope="module")
    def load_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("connect-loads")

    @pytest.fixture(scope="module")
    def connect(load_log: Path) -> Iterator[Any]:
        # The local server's JVM starts from this process and its Python workers inherit this
        # environment (spark.executorEnv.* does not reach Connect's Python workers in local mode).
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["POLYEMB_LOAD_LOG"] = str(load_log)
        session = (
            SparkSession.builder.remote("local[2]")
            .appName("polyemb-connect-tests")
            .config("spark.sql.shuffle.partitions", "2")
            .getOrCreate()
        )
        assert type(session).__module__.startswith("pyspark.sql.connect")
        yield session
        session.stop()

    def frame(spark: Any, texts: list[str | None], partitions: int = 2) -> Any:
        rows = [(i, text) for i, text in enumerate(texts)]
        return spark.createDataFrame(rows, "id long, text string").repartition(partitions)

    def check_vectors(rows: list[Any], texts: list[str | None], encoder: polyemb.Encoder) -> None:
        expected, valid = encoder.encode_nullable(texts)
        by_id = {row["id"]: row["v"] for row in rows}
        assert sorted(by_id) == list(range(len(texts)))
        for i in range(len(texts)):
            if not valid[i]:
                assert by_id[i] is None
            else:
                np.testing.assert_allclose(np.array(by_id[i], dtype=np.float32), expected[i], atol=1e-5)

    def test_embed_udf_ships_a_local_folder_by_default(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The sources embed_udf ships, as the UDF keeps them to itself.
        shipped: list[ModelSource] = []

        def recording(*args: Any, **kwargs: Any) -> ModelSource:
            shipped.append(model_source(*args, **kwargs))
            return shipped[-1]

        monkeypatch.setattr(polyemb.spark.udfs, "model_source", recording)
        embed = polyemb.spark.embed_udf(tiny_model_dir)  # delivery="auto": an artifact here
        rows = frame(connect, TEXTS).select("id", embed("text").alias("v")).collect()
        check_vectors(rows, TEXTS, tiny_encoder)
        assert len(shipped) == 1 and shipped[0].delivery == "artifact"
        assert shipped[0].shipment is not None and shipped[0].shipment["delivery"] == "artifact"

    def test_similarity_udf_with_nulls_and_a_literal(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
    ) -> None:
        similarity = polyemb.spark.similarity_udf(tiny_model_dir)
        pairs = [("a cat", "a dog"), ("a cat", None), (None, None)]
        df = connect.createDataFrame(
            [(i, a, b) for i, (a, b) in enumerate(pairs)], "id long, a string, b string"
        )
        rows = {
            r["id"]: r
            for r in df.select(
                "id", similarity("a", "b").alias("s"), similarity("a", F.lit("a dog")).alias("q")
            ).collect()
        }
        a, b = tiny_encoder.encode(["a cat", "a dog"])
        assert rows[0]["s"] == pytest.approx(float(a @ b), abs=1e-5)
        assert rows[1]["s"] is None and rows[2]["s"] is None
        assert rows[0]["q"] == pytest.approx(float(a @ b), abs=1e-5) and rows[2]["q"] is None

    def test_register_for_spark_sql(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
    ) -> None:
        polyemb.spark.register(connect, tiny_model_dir, prefix="pe_")
        frame(connect, TEXTS).createOrReplaceTempView("texts")
        rows = connect.sql(
            "SELECT id, pe_embed(text) AS v, pe_semantic_similarity(text, 'El gato') AS s FROM texts"
        ).collect()
        check_vectors(rows, TEXTS, tiny_encoder)
        query = tiny_encoder.encode(["El gato"])[0]
        for row in rows:
            text = TEXTS[row["id"]]
            if text is None:
                assert row["s"] is None
            else:
                assert row["s"] == pytest.approx(float(tiny_encoder.encode([text])[0] @ query), abs=1e-5)

    def test_path_delivery_works_and_broadcast_is_refused(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
    ) -> None:
        embed = polyemb.spark.embed_udf(tiny_model_dir, delivery="path")
        check_vectors(
            frame(connect, TEXTS).select("id", embed("text").alias("v")).collect(), TEXTS, tiny_encoder
        )
        with pytest.raises(polyemb.InvalidInputError, match="Spark Connect session"):
            polyemb.spark.embed_udf(tiny_model_dir, delivery="broadcast")

    def test_each_worker_loads_the_model_once(connect: Any, tiny_model_dir: Path, load_log: Path) -> None:
        # Its own max_seq_length: another cache key, so the loads counted are this test's alone.
        embed = polyemb.spark.embed_udf(tiny_model_dir, max_seq_length=24)
        connect.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # several batches a task
        try:
            texts = [f"text {i}" for i in range(200)]
            for _ in range(2):  # a second query
                assert frame(connect, texts, partitions=6).select(embed("text").alias("v")).count() == 200
                got = frame(connect, texts, partitions=6).select(embed("text").alias("v")).collect()
                assert len(got) == 200 and all(len(row["v"]) == 32 for row in got)
        finally:
            connect.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        events = [
            json.loads(line)
            for path in load_log.glob("loads-*.jsonl")
            for line in path.read_text().splitlines()
        ]
        mine = [e for e in events if e.get("max_seq_length") == 24]
        per_pid: dict[int, int] = {}
        for event in mine:
            per_pid[event["pid"]] = per_pid.get(event["pid"], 0) + 1
        print(f"loads per worker pid: {per_pid}")
        assert mine and all(event["delivery"] == "artifact" for event in mine)
        assert all(count == 1 for count in per_pid.values()), per_pid
        assert len(per_pid) <= 2  # local[2]: at most two Python workers at a time, reused

    def test_embed_incremental_on_connect(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
    ) -> None:
        store = str(tmp_path / "store")
        texts = [*TEXTS, "a text only Connect sees"]
        for expected in (4, 0):  # 4 distinct texts; the second run finds them all
            report = polyemb.spark.IncrementalReport()
            out = polyemb.spark.embed_incremental(
                frame(connect, texts), "text", store, tiny_model_dir, report=report
            )
            rows = out.select("id", F.col("embedding").alias("v")).collect()
            check_vectors(rows, texts, tiny_encoder)
            assert report.embedded == expected
        assert out.schema["embedding"].metadata == {"polyemb.model": tiny_encoder.provenance}

    def test_store_maintenance_on_connect(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
    ) -> None:
        store = tmp_path / "store"
        for day in range(2):
            texts = [f"day {day} text {i}" for i in range(12)]
            polyemb.spark.embed_incremental(
                frame(connect, texts), "text", str(store), tiny_model_dir
            ).collect()
        polyemb.open_store(store).encode(["from python", "day 0 text 1"], encoder=tiny_encoder)
        # Stats work through Connect, as Python's (sizes: the data files only, see store_stats).
        fields = ("key", "provenance", "dim", "entries", "distinct", "files", "data_bytes", "small_files")
        got = [[getattr(m, f) for f in fields] for m in polyemb.spark.store_stats(connect, str(store)).models]
        want = [
            [getattr(m, f) for f in fields] for m in polyemb.open_store(store, read_only=True).stats().models
        ]
        assert got == want and got[0][3:6] == [25, 25, 3]
        # Compaction and gc delete files: Connect has no file system API, so they say so.
        with pytest.raises(polyemb.InvalidInputError, match="Spark Connect session cannot"):
            polyemb.spark.compact_store(connect, str(store))
        with pytest.raises(polyemb.InvalidInputError, match="Spark Connect session cannot"):
            polyemb.spark.gc_store(connect, str(store), keep=[tiny_encoder.provenance])

    def test_semantic_join_on_connect(
        connect: Any, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
    ) -> None:
        import pandas as pd

        import polyemb.pandas

        left = pd.DataFrame({"a": [1, 2, 3], "text": ["a red cat", None, "cheap stocks"]})
        right = pd.DataFrame({"b": [7, 8, 9], "text": ["the cat", "the dog", "markets"]})
        expected = left.emb.join(right, "text", k=2, score="margin", encoder=tiny_encoder)
        for options in ({}, {"block_rows": 2, "broadcast_mb": 0.0}):  # shipped whole, and in blocks
            got = polyemb.spark.semantic_join(
                connect.createDataFrame(left),
                connect.createDataFrame(right),
                "text",
                k=2,
                score="margin",
                model=tiny_model_dir,
                **options,
            ).toPandas()
            assert sorted(zip(got["a"], got["b"], strict=True)) == sorted(
                zip(expected["a"], expected["b"], strict=True)
            )
            np.testing.assert_allclose(np.sort(got["score"]), np.sort(expected["score"]), atol=1e-5)

    def test_the_jobs_reads_and_output_checks_on_connect(connect: Any, tmp_path: Path) -> None:
        # Connect analyses lazily: a missing input came out of the job as an uncaught AnalysisException.
        import pyarrow as pa
        import pyarrow.parquet as pq

        from polyemb.spark.datasets import check_output, read_parquet

        with pytest.raises(polyemb.InvalidInputError, match="cannot read Parquet at .*PATH_NOT_FOUND"):
            read_parquet(connect, str(tmp_path / "nope"))
        lake = tmp_path / "lake" / "lang=en"
        lake.mkdir(parents=True)
        pq.write_table(pa.table({"title": ["a cat"]}), lake / "part-0.parquet")
        found = read_parquet(connect, f"{tmp_path / 'lake'}/*/*.parquet")
        assert found.columns == ["title", "lang"]  # the glob's partition kept
        for output in (str(tmp_path / "lake"), f"file:{tmp_path / 'lake'}/", str(lake / "new")):
            with pytest.raises(polyemb.InvalidInputError, match="holds or is inside the input"):
                check_output(connect, output, "overwrite", {str(tmp_path / "lake"): found})
        check_output(connect, str(tmp_path / "out"), "errorifexists", {str(tmp_path / "lake"): found})
