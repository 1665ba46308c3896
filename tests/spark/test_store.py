"""Spark's incremental embedding through the vector store, on local[2]."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import SparkSession

import polyemb
import polyemb.spark

pytestmark = pytest.mark.spark


def frame(spark: SparkSession, texts: list[str | None]) -> Any:
    return spark.createDataFrame(list(enumerate(texts)), "id long, text string").repartition(3)


def check(rows: list[Any], encoder: polyemb.Encoder, column: str = "embedding") -> None:
    for row in rows:
        if row["text"] is None:
            assert row[column] is None
        else:
            np.testing.assert_allclose(
                np.array(row[column], dtype=np.float32), encoder.encode([row["text"]])[0], atol=1e-5
            )


def test_only_texts_the_store_lacks_are_embedded(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    polyemb.open_store(store).encode(["text 1", "text 2"], encoder=tiny_encoder)  # from a laptop
    texts = [f"text {i % 30}" for i in range(100)] + [None, None]
    report = polyemb.spark.IncrementalReport()
    out = polyemb.spark.embed_incremental(
        frame(spark, texts), "text", str(store), tiny_model_dir, report=report
    )
    assert report.embedded == 28 and report.model_key == tiny_encoder.vector_spec().key
    assert report.provenance == tiny_encoder.provenance and report.run is not None
    assert Path(report.run).parent.name == f"model={report.model_key}" and Path(report.run).is_dir()
    rows = out.collect()
    assert sorted(row["id"] for row in rows) == list(range(102))  # every row once, NULLs kept
    check(rows, tiny_encoder)
    assert out.schema["embedding"].metadata == {"polyemb.model": tiny_encoder.provenance}

    # The next day: 2 texts edited, 1 row appended. Only those 3 are embedded.
    texts[0], texts[50] = "text 0, edited", "text 20 (corrected)"
    out = polyemb.spark.embed_incremental(
        frame(spark, [*texts, "a new row"]), "text", str(store), tiny_model_dir, report=report
    )
    check(out.collect(), tiny_encoder)
    assert report.embedded == 3
    # Nothing new: nothing embedded, no run written, and the report says so.
    polyemb.spark.embed_incremental(
        frame(spark, texts[:5]), "text", str(store), tiny_model_dir, report=report
    )
    assert report.embedded == 0 and report.run is None

    # What Spark stored, Python reads (and the reverse held above): one store, one hash.
    stored = polyemb.open_store(store).bind(tiny_encoder)
    vectors = stored.encode(["text 29", "a new row", "text 0, edited"])
    assert (stored.stats.found, stored.stats.embedded) == (3, 0)
    np.testing.assert_allclose(
        vectors, tiny_encoder.encode(["text 29", "a new row", "text 0, edited"]), atol=1e-5
    )


def test_two_jobs_appending_at_once_corrupt_nothing(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    results: dict[int, list[Any]] = {}
    reports = [polyemb.spark.IncrementalReport() for _ in range(2)]

    def job(i: int) -> None:
        texts = [f"concurrent spark text {j}" for j in range(i * 40, i * 40 + 80)]  # 40 shared
        results[i] = polyemb.spark.embed_incremental(
            frame(spark, texts), "text", store, tiny_model_dir, report=reports[i]
        ).collect()

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1]
    for rows in results.values():
        assert len(rows) == 80
        check(rows, tiny_encoder)
    [model] = polyemb.open_store(store).stats().models
    assert model.distinct == 120 and model.entries >= 120  # a text both jobs wrote is there twice
    # Each job's own report: what it wrote, in a run of its own (no shared global to race on).
    assert sum(r.embedded for r in reports) == model.entries and reports[0].run != reports[1].run
    reader = polyemb.open_store(store).bind(tiny_encoder)
    reader.encode([f"concurrent spark text {j}" for j in range(120)])
    assert reader.stats.found == 120
    polyemb.open_store(store).compact()
    [model] = polyemb.open_store(store).stats().models
    assert model.entries == model.distinct == 120


def test_wrong_column_names_are_clear(spark: SparkSession, tiny_model_dir: Path, tmp_path: Path) -> None:
    df = frame(spark, ["a"])
    with pytest.raises(polyemb.ColumnNotFoundError, match="Did you mean 'text'"):
        polyemb.spark.embed_incremental(df, "txt", str(tmp_path / "s"), tiny_model_dir)
    with pytest.raises(polyemb.InvalidInputError, match="already has a column 'id'"):
        polyemb.spark.embed_incremental(df, "text", str(tmp_path / "s"), tiny_model_dir, vector_column="id")
