"""``polyemb bench-join``: translation retrieval (P@1), and semantic joins in DuckDB and Spark.

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

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from polyemb.bench._spark import local_spark
from polyemb.bench.texts import sample_texts
from polyemb.errors import InvalidInputError
from polyemb.options import SCORES

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.ivf import Ivf
    from polyemb.store import VectorStore

__all__ = ["duckdb_join", "format_retrieval", "parse_pairs", "retrieval", "spark_join"]

Progress = Callable[[str], None]
Pairs = set[tuple[int, int]]

# Left rows of the slice pandas' join is timed on (the same core as Spark's, in one process).
_PANDAS_ROWS = 20_000
# Left rows sampled to find the cosine that the exact top-k reaches, for LSH's threshold.
_THRESHOLD_SAMPLE = 2_000
_LSH_JOB_GROUP = "polyemb-bench-lsh"


def parse_pairs(value: str) -> list[tuple[str, str]]:
    """``"en-de,en-es"`` -> ``[("en", "de"), ("en", "es")]``.

    Raises:
        InvalidInputError: An item that is not two language codes joined by ``-``.
    """
    pairs = []
    for item in value.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(parts):
            raise InvalidInputError(f"language pairs look like en-de,en-es; got {item!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


# ---------------------------------------------------------------------- retrieval


def retrieval(
    encoder: Encoder,
    folder: Path,
    pairs: Sequence[tuple[str, str]],
    store: VectorStore | None,
    method: Ivf | None = None,
) -> list[dict[str, Any]]:
    """P@1 of translation retrieval per direction and score, on ``stsb-<lang>-dev.csv`` files.

    Row i of each file is the translation of row i of the others; only rows whose first
    sentence is unique in both languages are used, so each query has exactly one right answer.
    With ``method`` (ivf settings), each score's P@1 by that method too (``<score>_ivf``): its
    neighbourhoods and best rows are both found in the probed lists.

    Raises:
        InvalidInputError: Two files of a pair that are not aligned (not as long).
    """
    from polyemb.ivf import IvfReport
    from polyemb.similarity import top_k, top_pairs
    from polyemb.store import embedder_for
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
                if method is not None:
                    report = IvfReport()
                    found = top_pairs(queries, corpus, 1, score=score, method=method, report=report)
                    row[f"{score}_ivf"] = round(float((found.corpus == found.query).mean()), 4)
                    row[f"{score}_probed"] = f"{report.nprobe}/{report.nlist}"
            results.append(row)
    return results


def format_retrieval(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`retrieval`'s rows: P@1 per direction and score (and method)."""
    columns = [name for name in (*SCORES, *(f"{s}_ivf" for s in SCORES)) if rows and name in rows[0]]
    probed = [f"{s}_probed" for s in SCORES if rows and f"{s}_probed" in rows[0]]
    width = 11 if len(columns) > len(SCORES) else 9
    head = "".join(f"{s:>{width}}" for s in columns) + "".join(f"{s:>15}" for s in probed)
    lines = [f"{'direction':<12}{'sentences':>10}{head}  (P@1; lists probed of all)"]
    for row in rows:
        figures = "".join(f"{row[score]:>{width}.4f}" for score in columns)
        figures += "".join(f"{row[name]:>15}" for name in probed)
        lines.append(f"{row['direction']:<12}{row['sentences']:>10}{figures}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- DuckDB


def duckdb_join(
    encoder: Encoder,
    pool: Sequence[str],
    size: int,
    k: int,
    store: VectorStore | None,
    *,
    vss: bool,
    progress: Progress,
) -> dict[str, Any]:
    """``size`` x ``size`` rows, top ``k``: the index function against DuckDB's own ways."""
    import duckdb

    from polyemb.store import embedder_for

    source = embedder_for(encoder, store)
    texts = sample_texts(pool, 2 * size, 0, distinct=True)
    con = duckdb.connect()
    for name, matrix in (("l", source.encode(texts[:size])), ("r", source.encode(texts[size:]))):
        con.execute(f"CREATE TABLE {name} (id INTEGER, v FLOAT[{encoder.dim}])")
        vectors = pa.array(list(matrix), pa.list_(pa.float32(), encoder.dim))
        con.register("incoming", pa.table({"id": pa.array(range(size), pa.int32()), "v": vectors}))
        con.execute(f"INSERT INTO {name} SELECT * FROM incoming")
        con.unregister("incoming")
    report: dict[str, Any] = {"duckdb": duckdb.__version__, "left": size, "right": size, "k": k}
    exact = _duckdb_index_and_cross(con, k, report, progress)
    if vss:
        _duckdb_hnsw(con, k, exact, report, progress)
    return report


def _duckdb_index_and_cross(con: Any, k: int, report: dict[str, Any], progress: Progress) -> Pairs:
    """Time the index function and the cross join (into ``report``); the index's pairs."""
    from polyemb.duckdb import register_index

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
    return exact


def _duckdb_hnsw(con: Any, k: int, exact: Pairs, report: dict[str, Any], progress: Progress) -> None:
    """Time the vss extension's HNSW index and its lateral join (into ``report``), and its recall."""
    from polyemb.duckdb import load_extension

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
    progress: Progress,
) -> dict[str, Any]:
    """``left_rows`` x ``right_rows`` vectors of real sentences on ``local[2]``: exact join vs LSH.

    LSH's join is cancelled after ``lsh_timeout`` seconds (then reported as unfinished).
    """
    left, right = _join_vectors(encoder, pool, left_rows, right_rows, store, progress)
    spark = local_spark(
        "polyemb-bench-join", {"spark.driver.memory": "6g", "spark.sql.shuffle.partitions": "8"}
    )
    try:
        lf, rf = _vector_frame(spark, left, 8), _vector_frame(spark, right, 4)
        report: dict[str, Any] = {"left": left_rows, "right": right_rows, "k": k, "dim": encoder.dim}
        exact = _time_exact_join(lf, rf, k, report, progress)
        report["pandas_scores_per_s"] = _pandas_scores_per_s(left, right, k)
        distance = _lsh_distance(left, right, k)
        report.update(
            lsh_threshold_distance=round(distance, 4), lsh_tables=lsh_tables, exact_pairs=len(exact)
        )
        _time_lsh_join(spark, lf, rf, distance, lsh_tables, lsh_timeout, exact, report, progress)
    finally:
        spark.stop()
    return report


def _join_vectors(
    encoder: Encoder,
    pool: Sequence[str],
    left_rows: int,
    right_rows: int,
    store: VectorStore | None,
    progress: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of distinct right texts and of left texts drawn with repeats, each text embedded once."""
    from polyemb.store import embedder_for

    right_texts = sample_texts(pool, right_rows, 1, distinct=True)
    left_texts = sample_texts(pool, left_rows, 2, distinct=False)
    distinct = list(dict.fromkeys([*left_texts, *right_texts]))
    progress(f"vectors of {len(distinct)} distinct texts (through the store)")
    vectors = embedder_for(encoder, store).encode(distinct, show_progress=True)
    row = {text: i for i, text in enumerate(distinct)}
    return vectors[[row[t] for t in left_texts]], vectors[[row[t] for t in right_texts]]


def _vector_frame(spark: Any, matrix: np.ndarray, partitions: int) -> Any:
    """A cached, counted DataFrame ``(id long, v array<float>)`` of ``matrix``'s rows."""
    table = pa.table(
        {"id": pa.array(range(len(matrix)), pa.int64()), "v": pa.array(list(matrix), pa.list_(pa.float32()))}
    )
    frame = (
        spark.createDataFrame(table.to_pandas(), "id long, v array<float>").repartition(partitions).cache()
    )
    frame.count()
    return frame


def _time_exact_join(lf: Any, rf: Any, k: int, report: dict[str, Any], progress: Progress) -> Pairs:
    """Time ``semantic_join`` (into ``report``); its (left id, right id) pairs."""
    from pyspark.sql import functions as F

    from polyemb.spark import semantic_join

    started = time.perf_counter()
    pairs = semantic_join(lf, rf, "v", k=k).select(
        F.col("id_x").alias("i"), F.col("id_y").alias("j"), "score"
    )
    rows = pairs.toPandas()
    report["exact_s"] = round(time.perf_counter() - started, 1)
    report["exact_scores_per_s"] = round(report["left"] * report["right"] / report["exact_s"])
    progress(f"exact semantic_join: {report['exact_s']}s")
    return set(zip(rows["i"], rows["j"], strict=True))


def _pandas_scores_per_s(left: np.ndarray, right: np.ndarray, k: int) -> int:
    """Scores/s of the pandas join on a slice of the left rows (the same core, in one process)."""
    import pandas as pd

    from polyemb.pandas import EmbDataFrameAccessor  # what DataFrame.emb is

    piece = min(len(left), _PANDAS_ROWS)
    started = time.perf_counter()
    EmbDataFrameAccessor(pd.DataFrame({"v": list(left[:piece])})).join(
        pd.DataFrame({"v": list(right)}), "v", k=k
    )
    return round(piece * len(right) / (time.perf_counter() - started))


def _lsh_distance(left: np.ndarray, right: np.ndarray, k: int) -> float:
    """The Euclidean distance at which LSH returns about as many pairs as the exact top-k.

    Unit vectors: d^2 = 2 - 2 cos, at the cosine that k rows per left row reach on average.
    """
    rng = np.random.default_rng(0)
    sample = left[rng.choice(len(left), size=min(_THRESHOLD_SAMPLE, len(left)), replace=False)] @ right.T
    per_row = np.sort(sample, axis=None)[::-1]
    threshold_cos = float(per_row[min(len(per_row) - 1, k * len(sample) - 1)])
    return float(np.sqrt(max(0.0, 2 - 2 * threshold_cos)))


def _time_lsh_join(
    spark: Any,
    lf: Any,
    rf: Any,
    distance: float,
    tables: int,
    timeout: float,
    exact: Pairs,
    report: dict[str, Any],
    progress: Progress,
) -> None:
    """Time LSH's approxSimilarityJoin (into ``report``), cancelled after ``timeout`` seconds."""
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    lsh = BucketedRandomProjectionLSH(
        inputCol="f", outputCol="h", bucketLength=distance, numHashTables=tables
    )
    lv, rv = lf.withColumn("f", array_to_vector("v")), rf.withColumn("f", array_to_vector("v"))
    outcome: dict[str, Any] = {}

    def run_lsh() -> None:
        # A job group of this thread's own, so that a join past the timeout can be cancelled.
        spark.sparkContext.setJobGroup(_LSH_JOB_GROUP, "LSH approxSimilarityJoin", True)
        try:
            outcome["rows"] = (
                lsh.fit(rv)
                .approxSimilarityJoin(lv, rv, distance, distCol="d")
                .select(F.col("datasetA.id").alias("i"), F.col("datasetB.id").alias("j"))
                .toPandas()
            )
        except Exception as exc:  # reported, whatever it is (a cancel included)
            outcome["error"] = exc

    started = time.perf_counter()
    worker = threading.Thread(target=run_lsh, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        spark.sparkContext.cancelJobGroup(_LSH_JOB_GROUP)
        worker.join()
        report.update(lsh_s=None, lsh_unfinished_after_s=timeout)
        progress(f"LSH approxSimilarityJoin: not finished after {timeout:.0f}s, cancelled")
        return
    if "error" in outcome:
        raise outcome["error"]
    rows = outcome["rows"]
    report["lsh_s"] = round(time.perf_counter() - started, 1)
    report["lsh_pairs"] = len(rows)
    approx = set(zip(rows["i"], rows["j"], strict=True))
    report["lsh_recall_of_exact_top_k"] = round(len(exact & approx) / len(exact), 4)
    report["exact_vs_lsh_speed"] = round(report["lsh_s"] / report["exact_s"], 2)
    progress(f"LSH approxSimilarityJoin: {report['lsh_s']}s, {len(rows)} pairs")
