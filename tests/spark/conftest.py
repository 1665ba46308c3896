"""One local[2] SparkSession for the Spark tests, with per-worker load logs."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark


@pytest.fixture(scope="session")
def load_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark-loads")


@pytest.fixture(scope="session")
def spark(load_log_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # pyspark 4 warns that it does not fully support pandas 3; polyemb's UDFs are tested with it here.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    model_cache = tmp_path_factory.mktemp("spark-model-cache")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("polyemb-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.POLYEMB_LOAD_LOG", str(load_log_dir))
        .config("spark.executorEnv.POLYEMB_MODEL_CACHE", str(model_cache))
        .config("spark.executorEnv.HF_HUB_OFFLINE", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
