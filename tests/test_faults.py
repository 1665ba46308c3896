"""Faults and load: a killed Spark worker, failing and concurrent DuckDB queries."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import polyemb
import polyemb.duckdb
import polyemb.spark


@pytest.mark.spark
def test_killed_spark_worker_is_retried_and_every_row_comes_once(
    spark,
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from pyspark import TaskContext
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    embed = polyemb.spark.embed_udf(tiny_encoder.folder, delivery="path").func
    flags = str(tmp_path)

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[untyped-decorator]
    def flaky_embed(texts: pd.Series) -> pd.Series:
        context = TaskContext.get()
        if context.partitionId() == 1 and context.attemptNumber() == 0:
            seen = Path(flags) / "partition-1-first-batch-done"
            if seen.exists():  # the second batch of the first attempt: kill this Python worker
                (Path(flags) / "killed").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            seen.touch()
        return embed(texts)

    texts = [f"row {i} " + "word " * (i % 6) for i in range(120)]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    try:
        frame = spark.createDataFrame(list(enumerate(texts)), "id long, t string").repartition(3)
        rows = frame.select("id", flaky_embed("t").alias("v")).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert (tmp_path / "killed").exists(), "the worker was not killed: the fault was not injected"
    assert sorted(row["id"] for row in rows) == list(range(120))  # every row, exactly once
    got = np.array([row["v"] for row in sorted(rows, key=lambda row: row["id"])], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_encoder.encode(texts), atol=1e-5)


QUERY = "SELECT id, embed(s), semantic_similarity(s, 'load text 7') FROM t WHERE id >= ? ORDER BY id"


def test_duckdb_connections_and_threads_under_load(tiny_encoder: polyemb.Encoder, run_threads) -> None:  # type: ignore[no-untyped-def]
    """Three connections, threads=4 each, querying at once for a bounded time; every row checked."""
    texts = [f"load text {i} " + "word " * (i % 11) for i in range(4000)]
    expected = tiny_encoder.encode(texts)
    connections = []
    for _ in range(3):
        con = duckdb.connect()
        polyemb.duckdb.register(con, tiny_encoder, cache_mb=0.2)  # small: most lookups miss and encode
        con.execute("SET threads = 4")
        con.execute("CREATE TABLE t AS SELECT unnest(range(4000)) AS id, unnest($1::VARCHAR[]) AS s", [texts])
        connections.append(con)
    deadline = time.monotonic() + 12.0
    queries = [0, 0, 0, 0, 0, 0]

    def work(worker: int) -> None:
        cursor = connections[worker % 3].cursor()
        rng = np.random.default_rng(worker)
        while time.monotonic() < deadline:
            lo = int(rng.integers(0, 3500))
            rows = cursor.execute(QUERY, [lo]).fetchall()
            ids = [r[0] for r in rows]
            assert ids == list(range(lo, 4000))
            np.testing.assert_allclose(
                np.array([r[1] for r in rows], dtype=np.float32), expected[ids], atol=1e-5
            )
            target = tiny_encoder.encode(["load text 7"])[0]
            np.testing.assert_allclose([r[2] for r in rows], expected[ids] @ target, atol=1e-5)
            queries[worker] += 1

    run_threads(work, 6)
    print(f"DuckDB load: {sum(queries)} queries in 12 s on 3 connections x 2 threads, every row checked")
    assert min(queries) >= 1
    polyemb.cache.EmbeddingCache.shared(tiny_encoder).resize(256)
