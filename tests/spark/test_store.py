"""Spark's incremental embedding through the vector store, on local[2]."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

import polyemb
import polyemb.spark
import polyemb.spark.store
from polyemb.store import stored
from polyemb.testing import build_tiny_model

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


@pytest.mark.parametrize("damage", ["truncated", "empty", "footer overwritten"])
def test_bad_store_files_are_skipped_and_their_texts_embedded_again(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path, damage: str
) -> None:
    # Spark infers a schema from one file's footer: every file but the last is bad here, so
    # whichever it would have picked, the read must skip the bad ones and keep the good one.
    store = tmp_path / "store"
    batches = [[f"batch {b} text {i}" for i in range(10)] for b in range(4)]
    for batch in batches:
        polyemb.open_store(store).encode(batch, encoder=tiny_encoder)
    files = sorted((store / f"model={tiny_encoder.vector_spec().key}").glob("run=*/*.parquet"))
    assert len(files) == 4
    for path in files[:-1]:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            if damage == "truncated":
                handle.truncate(size // 2)
            elif damage == "empty":
                handle.truncate(0)
            else:
                handle.seek(size - 12)
                handle.write(b"\xff" * 12)
    good = set(pq.read_table(files[-1], columns=["text_hash"]).column(0).to_pylist())
    assert len(good) == 10
    report = polyemb.spark.IncrementalReport()
    texts = [text for batch in batches for text in batch]
    rows = polyemb.spark.embed_incremental(
        frame(spark, texts), "text", str(store), tiny_model_dir, report=report
    ).collect()
    assert sorted(row["id"] for row in rows) == list(range(40))
    check(rows, tiny_encoder)
    assert report.embedded == 30  # the good file's 10 texts were found, the rest embedded again


def test_wrong_column_names_are_clear(spark: SparkSession, tiny_model_dir: Path, tmp_path: Path) -> None:
    df = frame(spark, ["a"])
    with pytest.raises(polyemb.ColumnNotFoundError, match="Did you mean 'text'"):
        polyemb.spark.embed_incremental(df, "txt", str(tmp_path / "s"), tiny_model_dir)
    with pytest.raises(polyemb.InvalidInputError, match="already has a column 'id'"):
        polyemb.spark.embed_incremental(df, "text", str(tmp_path / "s"), tiny_model_dir, vector_column="id")
    # Spark takes "ID" for "id" (spark.sql.caseSensitive is false): an ambiguous reference later.
    with pytest.raises(polyemb.InvalidInputError, match="already has a column 'ID'"):
        polyemb.spark.embed_incremental(df, "text", str(tmp_path / "s"), tiny_model_dir, vector_column="ID")
    # Not a raw AnalysisException about sha2(id, 256), an expression the user never wrote.
    with pytest.raises(polyemb.InvalidInputError, match="column 'id' is bigint: give a text"):
        polyemb.spark.embed_incremental(df, "id", str(tmp_path / "s"), tiny_model_dir)


def test_a_model_that_changes_after_the_key_is_made_is_refused(
    spark: SparkSession, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key comes from describe(); the executors get the model later. A folder rewritten in
    # between (a hub branch that moved is the same) must not put its vectors under the old key.
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    real_describe = polyemb.spark.store.describe

    def describe_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        spec = real_describe(*args, **kwargs)
        shutil.rmtree(model)
        build_tiny_model(model, seed=3)
        return spec

    monkeypatch.setattr(polyemb.spark.store, "describe", describe_then_rewrite)
    store = tmp_path / "store"
    with pytest.raises(polyemb.ModelMismatchError, match="changed"):
        polyemb.spark.embed_incremental(frame(spark, ["a", "b"]), "text", str(store), model).collect()
    assert not list(store.glob("model=*/run=*/*.parquet"))  # nothing stored under the old key


def test_the_result_does_not_read_the_store_after_the_call(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    texts = [f"text {i}" for i in range(40)]
    python = polyemb.open_store(store)
    python.encode(texts[:20], encoder=tiny_encoder)  # found by the call
    other = polyemb.load(tiny_model_dir, max_seq_length=16)
    python.encode(texts[:2], encoder=other)  # another model, which gc keeps below
    out = polyemb.spark.embed_incremental(frame(spark, texts), "text", str(store), tiny_model_dir)
    out2 = polyemb.spark.embed_incremental(frame(spark, texts), "text", str(store), tiny_model_dir)
    # Before the caller's action: the files listed by the call are compacted away...
    polyemb.open_store(store).compact()
    check(out.collect(), tiny_encoder)
    # ... and the model's folder is dropped (with missing files ignored, Spark would read NULLs).
    polyemb.open_store(store).gc([other.vector_spec().key])
    spark.conf.set("spark.sql.files.ignoreMissingFiles", "true")
    try:
        rows = out2.collect()
    finally:
        spark.conf.unset("spark.sql.files.ignoreMissingFiles")
    assert all(row["embedding"] is not None for row in rows)
    check(rows, tiny_encoder)


def test_a_store_of_a_newer_version_is_refused(
    spark: SparkSession, tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    polyemb.open_store(store)
    (store / "_polyemb_store.json").write_text(json.dumps({"format": "polyemb-store", "version": 99}))
    with pytest.raises(polyemb.StoreError, match="upgrade polyemb"):
        polyemb.spark.embed_incremental(frame(spark, ["a"]), "text", str(store), tiny_model_dir)
    assert not list(store.glob("model=*"))


def test_incremental_runs_write_files_sized_by_the_data(
    spark: SparkSession,
    tiny_model_dir: Path,
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    model_folder = store / f"model={tiny_encoder.vector_spec().key}"
    report = polyemb.spark.IncrementalReport()
    for day in range(3):  # small daily runs over many partitions: one file each
        texts = [f"day {day} text {i}" for i in range(30)]
        polyemb.spark.embed_incremental(
            frame(spark, texts).repartition(8), "text", str(store), tiny_model_dir, report=report
        ).collect()
        assert report.embedded == 30
        assert len(list(Path(str(report.run)).glob("*.parquet"))) == 1
    files = sorted(model_folder.glob("run=*/*.parquet"))
    assert len(files) == 3 and all(pq.read_metadata(path).num_rows == 30 for path in files)
    # A run of more than a file's worth: ceil(new / WRITE_ROWS) files of about WRITE_ROWS each,
    # from the new vectors' eight partitions (as many as Spark computed them in).
    monkeypatch.setattr(stored, "WRITE_ROWS", 25)
    texts = [f"a larger day, text {i}" for i in range(70)]
    spark.conf.set("spark.sql.shuffle.partitions", "8")
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        polyemb.spark.embed_incremental(
            frame(spark, texts), "text", str(store), tiny_model_dir, report=report
        ).collect()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    rows = sorted(pq.read_metadata(path).num_rows for path in Path(str(report.run)).glob("*.parquet"))
    assert len(rows) == 3 and sum(rows) == 70 and max(rows) <= 2 * 25
