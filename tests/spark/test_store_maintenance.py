"""A store only Spark reaches, maintained through Spark: the same results as Python's, as safely."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrameWriter, SparkSession

import polyemb
import polyemb.spark
from polyemb.spark.lakefs import LakeFs
from polyemb.store import StoreStats, open_store, text_hashes

pytestmark = pytest.mark.spark

RECIPE = Path(__file__).parents[2] / "udfs" / "spark" / "store_maintenance.py"


def frame(spark: SparkSession, texts: list[str]) -> Any:
    return spark.createDataFrame(list(enumerate(texts)), "id long, text string").repartition(4)


def daily_runs(spark: SparkSession, model: Path, store: Path, days: int) -> list[str]:
    """``days`` small incremental runs through Spark, each with new texts and some of the day before."""
    texts: list[str] = []
    for day in range(days):
        today = [f"day {day} text {i}" for i in range(25)] + texts[-5:]
        polyemb.spark.embed_incremental(frame(spark, today), "text", str(store), model).collect()
        texts += today[:25]
    return texts


def lookup(store: Path, encoder: polyemb.Encoder, texts: list[str]) -> np.ndarray:
    vectors, found = open_store(store, read_only=True).lookup(encoder.vector_spec(), text_hashes(texts))
    assert found.all()
    return vectors


def test_compact_store_keeps_every_text_bitwise_from_python_and_spark(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    texts = daily_runs(spark, tiny_model_dir, store, days=4)
    key = tiny_encoder.vector_spec().key
    assert len(list(store.glob(f"model={key}/run=*/*.parquet"))) == 4  # one file a run
    before = lookup(store, tiny_encoder, texts)
    through_spark = polyemb.spark.embed_incremental(frame(spark, texts), "text", str(store), tiny_model_dir)
    spark_before = {row["text"]: row["embedding"] for row in through_spark.collect()}
    report = polyemb.spark.compact_store(spark, str(store))
    assert (report.files_before, report.files_after, report.entries) == (4, 1, 100)
    # From Python: every text found, the same bits.
    np.testing.assert_array_equal(lookup(store, tiny_encoder, texts), before)
    # From Spark: nothing embedded again, the same bits.
    incremental = polyemb.spark.IncrementalReport()
    after = polyemb.spark.embed_incremental(
        frame(spark, texts), "text", str(store), tiny_model_dir, report=incremental
    ).collect()
    assert incremental.embedded == 0
    assert {row["text"]: row["embedding"] for row in after} == spark_before
    np.testing.assert_array_equal(np.array([spark_before[t] for t in texts], dtype=np.float32), before)


def _lake_like_store(spark: SparkSession, model: Path, encoder: polyemb.Encoder, root: Path) -> list[str]:
    """Spark runs, a Python run, a duplicate, a second model, a bad file and a truncated one."""
    texts = daily_runs(spark, model, root, days=3)
    python = open_store(root)
    python.encode([*texts[:3], "only python wrote this"], encoder=encoder)
    spec = encoder.vector_spec()
    python.append(spec, text_hashes(texts[:4]), encoder.encode(texts[:4]))  # duplicates
    python.encode(texts[:6], encoder=polyemb.load(model, max_seq_length=16))  # another model
    folder = root / f"model={spec.key}"
    (folder / "run=broken").mkdir()
    (folder / "run=broken" / "part-00001.parquet").write_bytes(b"")
    good = sorted(folder.glob("run=*/*.parquet"))[0]
    (folder / "run=broken" / "part-00002.parquet").write_bytes(good.read_bytes()[:200])
    return [*texts, "only python wrote this"]


def _without_path(stats: StoreStats) -> list[Any]:
    return [dataclasses.astuple(model) for model in stats.models] + [stats.bytes]


def test_spark_stats_compact_and_gc_agree_with_python(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    texts = _lake_like_store(spark, tiny_model_dir, tiny_encoder, tmp_path / "python")
    shutil.copytree(tmp_path / "python", tmp_path / "spark", symlinks=True)
    python, lake = tmp_path / "python", str(tmp_path / "spark")

    python_stats = open_store(python, read_only=True).stats()
    spark_stats = polyemb.spark.store_stats(spark, lake)
    assert _without_path(spark_stats) == _without_path(python_stats)
    main = {m.key: m for m in python_stats.models}[tiny_encoder.vector_spec().key]
    assert (main.bad_files, main.entries - main.distinct, main.files) == (2, 4, 7)
    assert "compact advised: 2 bad files" in spark_stats.format()

    with pytest.warns(RuntimeWarning, match="set aside"):
        python_report = open_store(python).compact()
    for bad in ("64", float("nan"), -1):
        with pytest.raises(polyemb.InvalidInputError, match="target_mb must be a number of MiB above 0"):
            polyemb.spark.compact_store(spark, lake, target_mb=bad)  # type: ignore[arg-type]
        with pytest.raises(polyemb.InvalidInputError, match="target_mb must be a number of MiB above 0"):
            polyemb.spark.store_stats(spark, lake, target_mb=bad)  # type: ignore[arg-type]
    spark_report = polyemb.spark.compact_store(spark, lake)
    assert spark_report == python_report
    assert (python_report.quarantined, python_report.duplicates_dropped) == (2, 4)
    after = [
        (m.key, m.entries, m.distinct, m.files, m.bad_files, m.quarantined)
        for m in polyemb.spark.store_stats(spark, lake).models
    ]
    assert after == [
        (m.key, m.entries, m.distinct, m.files, m.bad_files, m.quarantined)
        for m in open_store(python, read_only=True).stats().models
    ]
    # The same copy of each text kept: bitwise the same vectors from both stores.
    np.testing.assert_array_equal(
        lookup(Path(lake), tiny_encoder, texts), lookup(python, tiny_encoder, texts)
    )

    keep = [tiny_encoder.vector_spec().key]
    python_gc = open_store(python).gc(keep)
    spark_gc = polyemb.spark.gc_store(spark, lake, keep=keep)
    assert (spark_gc.kept, spark_gc.dropped) == (python_gc.kept, python_gc.dropped)
    assert len(spark_gc.dropped) == 1 and spark_gc.bytes_freed == python_gc.bytes_freed > 0
    with pytest.raises(polyemb.InvalidInputError, match="nothing dropped"):
        polyemb.spark.gc_store(spark, lake, keep=["typo@sha256:0"])


def test_a_crash_in_the_middle_of_compact_store_loses_nothing(
    spark: SparkSession,
    tiny_model_dir: Path,
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    texts = daily_runs(spark, tiny_model_dir, store, days=3)
    before = lookup(store, tiny_encoder, texts)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the driver died")

    # Killed while writing the merged files: nothing was removed.
    with monkeypatch.context() as patch:
        patch.setattr(DataFrameWriter, "parquet", crash)
        with pytest.raises(RuntimeError, match="the driver died"):
            polyemb.spark.compact_store(spark, str(store))
    np.testing.assert_array_equal(lookup(store, tiny_encoder, texts), before)
    # Killed after the merged files were committed, while removing the small ones: duplicates only.
    real_delete = LakeFs.delete
    deleted: list[str] = []

    def delete_one_then_crash(self: LakeFs, path: str, *, recursive: bool = False) -> bool:
        if deleted:
            raise RuntimeError("the driver died")
        deleted.append(path)
        return real_delete(self, path, recursive=recursive)

    with monkeypatch.context() as patch:
        patch.setattr(LakeFs, "delete", delete_one_then_crash)
        with pytest.raises(RuntimeError, match="the driver died"):
            polyemb.spark.compact_store(spark, str(store))
    np.testing.assert_array_equal(lookup(store, tiny_encoder, texts), before)
    incremental = polyemb.spark.IncrementalReport()
    polyemb.spark.embed_incremental(
        frame(spark, texts), "text", str(store), tiny_model_dir, report=incremental
    ).collect()
    assert incremental.embedded == 0
    # The next run finishes the job: one entry per text.
    polyemb.spark.compact_store(spark, str(store))
    [model] = polyemb.spark.store_stats(spark, str(store)).models
    assert model.entries == model.distinct == len(texts)
    np.testing.assert_array_equal(lookup(store, tiny_encoder, texts), before)


def test_the_maintenance_recipe(
    spark: SparkSession, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("store_maintenance", RECIPE)
    assert spec and spec.loader
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    store = tmp_path / "store"
    daily_runs(spark, tiny_model_dir, store, days=2)
    assert recipe.main(["--store", str(store), "stats"]) == 0
    assert "entries" in capsys.readouterr().out
    assert recipe.main(["--store", str(store), "compact"]) == 0
    assert "2 files -> 1" in capsys.readouterr().out
    assert recipe.main(["--store", str(store), "gc"]) == 2
    assert recipe.main(["--store", str(store), "gc", "--keep-model", "typo"]) == 2
    assert "nothing dropped" in capsys.readouterr().err
