"""Benchmarks of semantic joins: translation retrieval (P@1), DuckDB, and Spark at lake scale.

- ``retrieval``: translation retrieval on aligned files (row i of one language is row i of the
  other): P@1 of cosine, margin and CSLS, in both directions, per language pair.
- ``duckdb``: the index function against DuckDB's own ``array_cosine_similarity`` cross join
  (and, where the ``vss`` extension loads, its HNSW index in a lateral join): time and recall.
- ``spark``: ``polyemb.spark.semantic_join`` against Spark ML's
  ``BucketedRandomProjectionLSH.approxSimilarityJoin`` at a threshold returning about as many
  pairs: times, and LSH's recall of the exact top-k; and the join's scores/s against pandas'.

Vectors come through a vector store (``--store``), so a second run embeds nothing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.options import SCORES
from polyemb.similarity import top_k
from polyemb.store import VectorStore, embedder_for

__all__ = ["duckdb_join", "retrieval", "spark_join"]


def _sample(pool: Sequence[str], count: int, seed: int, *, distinct: bool) -> list[str]:
    texts = list(dict.fromkeys(pool))
    rng = random.Random(seed)
    if distinct:
        if len(texts) < count:
            raise InvalidInputError(f"the texts give {len(texts)} distinct sentences, fewer than {count}")
        return rng.sample(texts, count)
    return [rng.choice(texts) for _ in range(count)]


# ---------------------------------------------------------------------- retrieval


def retrieval(
    encoder: Encoder, folder: Path, pairs: Sequence[tuple[str, str]], store: VectorStore | None
) -> list[dict[str, Any]]:
    """P@1 of translation retrieval per direction and score, on ``stsb-<lang>-dev.csv`` files.

    Row i of each file is the translation of row i of the others; only rows whose first
    sentence is unique in both languages are used, so each query has exactly one right answer.
    """
    from polyemb.sts import read_sts

    source = embedder_for(encoder, store)
    results = []
    for first, second in pairs:
        a = read_sts(folder / f"stsb-{first}-dev.csv").sentence1
        b = read_sts(folder / f"stsb-{second}-dev.csv").sentence1
        if len(a) != len(b):
            raise InvalidInputError(f"stsb-{first}-dev.csv and stsb-{second}-dev.csv are not aligned")
        keep = [i for i in range(len(a)) if a.count(a[i]) == 1 and b.count(b[i]) == 1]
        va, vb = source.encode([a[i] for i in keep]), source.encode([b[i] for i in keep])
        for name, queries, corpus in ((f"{first}->{second}", va, vb), (f"{second}->{first}", vb, va)):
            row: dict[str, Any] = {"direction": name, "sentences": len(keep)}
            for score in SCORES:
                best, _ = top_k(queries, corpus, 1, score=score)
                row[score] = round(float((best[:, 0] == np.arange(len(keep))).mean()), 4)
            results.append(row)
    return results


# ---------------------------------------------------------------------- DuckDB


def duckdb_join(
    encoder: Encoder,
    pool: Sequence[str],
    size: int,
    k: int,
    store: VectorStore | None,
    *,
    vss: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``size`` x ``size`` rows, top ``k``: the index function against DuckDB's own ways."""
    import duckdb

    from polyemb.duckdb import load_extension, register_index

    source = embedder_for(encoder, store)
    texts = _sample(pool, 2 * size, 0, distinct=True)
    left, right = source.encode(texts[:size]), source.encode(texts[size:])
    con = duckdb.connect()
    vector = pa.list_(pa.float32(), encoder.dim)
    con.execute(f"CREATE TABLE l (id INTEGER, v FLOAT[{encoder.dim}])")
    con.execute(f"CREATE TABLE r (id INTEGER, v FLOAT[{encoder.dim}])")
    for name, matrix in (("l", left), ("r", right)):
        con.register(
            "incoming",
            pa.table({"id": pa.array(range(size), pa.int32()), "v": pa.array(list(matrix), vector)}),
        )
        con.execute(f"INSERT INTO {name} SELECT * FROM incoming")
        con.unregister("incoming")
    report: dict[str, Any] = {"duckdb": duckdb.__version__, "left": size, "right": size, "k": k}

    started = time.perf_counter()
    register_index(con, "r", "SELECT id, v FROM r", key="id", vector="v")
    ours = con.execute(f"SELECT l.id, n.key FROM l, unnest(r_nearest_vector(l.v, {k})) AS t(n)").fetchall()
    report["index_s"] = round(time.perf_counter() - started, 2)
    progress(f"index function: {report['index_s']}s")
    exact = set(ours)

    started = time.perf_counter()
    cross = con.execute(
        # Scores first, so the window sorts (id, id, score) rows rather than carrying the vectors
        # (which spills left x right pairs of vectors to disk).
        "SELECT lid, rid FROM (SELECT l.id AS lid, r.id AS rid, array_cosine_similarity(l.v, r.v) AS s "
        f"FROM l, r) QUALIFY row_number() OVER (PARTITION BY lid ORDER BY s DESC, rid) <= {k}"
    ).fetchall()
    report["cross_join_s"] = round(time.perf_counter() - started, 2)
    report["speedup_vs_cross_join"] = round(report["cross_join_s"] / report["index_s"], 1)
    report["cross_join_agreement"] = round(len(exact & set(cross)) / len(exact), 6)
    progress(f"cross join: {report['cross_join_s']}s")

    if vss:
        load_extension(con, "vss")
        con.execute("SET hnsw_enable_experimental_persistence = true")
        started = time.perf_counter()
        con.execute("CREATE INDEX r_hnsw ON r USING HNSW (v) WITH (metric = 'cosine')")
        report["hnsw_build_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        approx = con.execute(
            "SELECT l.id, n.id FROM l, LATERAL (SELECT r.id FROM r "
            f"ORDER BY array_cosine_distance(r.v, l.v) LIMIT {k}) AS n"
        ).fetchall()
        report["hnsw_lateral_s"] = round(time.perf_counter() - started, 2)
        report["hnsw_recall"] = round(len(exact & set(approx)) / len(exact), 4)
        progress(f"vss HNSW lateral join: {report['hnsw_lateral_s']}s, recall {report['hnsw_recall']}")
    return report


# ---------------------------------------------------------------------- Spark


def spark_join(
    encoder: Encoder,
    pool: Sequence[str],
    left_rows: int,
    right_rows: int,
    k: int,
    store: VectorStore | None,
    *,
    lsh_tables: int,
    lsh_timeout: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``left_rows`` x ``right_rows`` vectors of real sentences on ``local[2]``: exact join vs LSH.

    LSH's join is cancelled after ``lsh_timeout`` seconds (then reported as unfinished).
    """
    import pandas as pd
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    import polyemb.pandas  # noqa: F401 - the pandas reference rate
    from polyemb.bench import local_spark
    from polyemb.spark import semantic_join

    source = embedder_for(encoder, store)
    right_texts = _sample(pool, right_rows, 1, distinct=True)
    left_texts = _sample(pool, left_rows, 2, distinct=False)
    distinct = list(dict.fromkeys([*left_texts, *right_texts]))
    progress(f"vectors of {len(distinct)} distinct texts (through the store)")
    lookup = dict(zip(distinct, source.encode(distinct, show_progress=True), strict=True))
    left = np.stack([lookup[t] for t in left_texts])
    right = np.stack([lookup[t] for t in right_texts])
    del lookup

    spark = local_spark(
        "polyemb-bench-join", {"spark.driver.memory": "6g", "spark.sql.shuffle.partitions": "8"}
    )
    schema = "id long, v array<float>"

    def frame(matrix: np.ndarray, partitions: int) -> Any:
        table = pa.table(
            {
                "id": pa.array(range(len(matrix)), pa.int64()),
                "v": pa.array(list(matrix), pa.list_(pa.float32())),
            }
        )
        return spark.createDataFrame(table.to_pandas(), schema).repartition(partitions).cache()

    lf, rf = frame(left, 8), frame(right, 4)
    lf.count(), rf.count()
    report: dict[str, Any] = {"left": left_rows, "right": right_rows, "k": k, "dim": encoder.dim}

    started = time.perf_counter()
    pairs = semantic_join(lf, rf, "v", k=k).select(
        F.col("id_x").alias("i"), F.col("id_y").alias("j"), "score"
    )
    exact_rows = pairs.toPandas()
    report["exact_s"] = round(time.perf_counter() - started, 1)
    report["exact_scores_per_s"] = round(left_rows * right_rows / report["exact_s"])
    progress(f"exact semantic_join: {report['exact_s']}s")
    exact = set(zip(exact_rows["i"], exact_rows["j"], strict=True))

    # pandas' join on a slice, for its rate (the same core, on one process).
    piece = min(left_rows, 20_000)
    started = time.perf_counter()
    pd.DataFrame({"v": list(left[:piece])}).emb.join(pd.DataFrame({"v": list(right)}), "v", k=k)
    report["pandas_scores_per_s"] = round(piece * right_rows / (time.perf_counter() - started))

    # LSH at the Euclidean distance (unit vectors: d^2 = 2 - 2 cos) that returns about as many
    # pairs as the exact top-k: the cosine that k rows per left row reach on average.
    rng = np.random.default_rng(0)
    sample = left[rng.choice(left_rows, size=min(2_000, left_rows), replace=False)] @ right.T
    per_row = np.sort(sample, axis=None)[::-1]
    threshold_cos = float(per_row[min(len(per_row) - 1, k * len(sample) - 1)])
    distance = float(np.sqrt(max(0.0, 2 - 2 * threshold_cos)))
    report["lsh_threshold_distance"] = round(distance, 4)
    lsh = BucketedRandomProjectionLSH(
        inputCol="f", outputCol="h", bucketLength=distance, numHashTables=lsh_tables
    )
    lv = lf.withColumn("f", array_to_vector("v"))
    rv = rf.withColumn("f", array_to_vector("v"))
    report["lsh_tables"] = lsh_tables
    report["exact_pairs"] = len(exact)
    outcome: dict[str, Any] = {}

    def run_lsh() -> None:
        # A job group of this thread's own, so that a join past lsh_timeout can be cancelled.
        spark.sparkContext.setJobGroup("polyemb-bench-lsh", "LSH approxSimilarityJoin", True)
        try:
            model = lsh.fit(rv)
            outcome["rows"] = (
                model.approxSimilarityJoin(lv, rv, distance, distCol="d")
                .select(F.col("datasetA.id").alias("i"), F.col("datasetB.id").alias("j"))
                .toPandas()
            )
        except Exception as exc:  # noqa: BLE001 - reported, whatever it is (a cancel included)
            outcome["error"] = exc

    started = time.perf_counter()
    worker = threading.Thread(target=run_lsh, daemon=True)
    worker.start()
    worker.join(lsh_timeout)
    if worker.is_alive():
        spark.sparkContext.cancelJobGroup("polyemb-bench-lsh")
        worker.join()
        report["lsh_s"] = None
        report["lsh_unfinished_after_s"] = lsh_timeout
        progress(f"LSH approxSimilarityJoin: not finished after {lsh_timeout:.0f}s, cancelled")
    elif "error" in outcome:
        raise outcome["error"]
    else:
        approx_rows = outcome["rows"]
        report["lsh_s"] = round(time.perf_counter() - started, 1)
        report["lsh_pairs"] = len(approx_rows)
        approx = set(zip(approx_rows["i"], approx_rows["j"], strict=True))
        report["lsh_recall_of_exact_top_k"] = round(len(exact & approx) / len(exact), 4)
        report["exact_vs_lsh_speed"] = round(report["lsh_s"] / report["exact_s"], 2)
        progress(f"LSH approxSimilarityJoin: {report['lsh_s']}s, {len(approx_rows)} pairs")
    spark.stop()
    return report


def parse_pairs(value: str) -> list[tuple[str, str]]:
    """``"en-de,en-es"`` -> ``[("en", "de"), ("en", "es")]``."""
    pairs = []
    for item in value.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(parts):
            raise InvalidInputError(f"language pairs look like en-de,en-es; got {item!r}")
        pairs.append((parts[0], parts[1]))
    return pairs
