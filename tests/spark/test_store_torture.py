"""The store's torture run with a Spark job appending beside the processes, in the suite's session."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

import polyemb
from polyemb.bench.torture import SparkSide, torture

pytestmark = pytest.mark.spark


def test_a_torture_run_with_spark_appending_keeps_every_promise(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    side = SparkSide(spark, tiny_model_dir, tiny_encoder)
    report = torture(tmp_path, seconds=30, seed=26, spawned=1, forked=1, spark=side)
    print(report.format())
    # Spark's runs raced the workers' compactions and gcs, and the corruptions.
    assert report.spark_runs >= 2 and report.kills >= 1 and report.corruptions >= 1
    assert report.operations.get("compact", 0) > 0
    assert not report.undocumented_errors, report.undocumented_errors
    assert (report.wrong_vectors, report.losses, report.duplicates_after_compact) == (0, 0, 0)
    assert not report.stats_mismatches, report.stats_mismatches
