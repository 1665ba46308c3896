"""What the Spark tests share: the suite's session as it was after each test that ran a job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from polyemb.spark.datasets import PARTITION_TYPES


@pytest.fixture(autouse=True)
def _session_as_before(request: pytest.FixtureRequest) -> Iterator[None]:
    """The jobs set their session's partition typing and Arrow batch size; this session is the suite's."""
    yield
    if "spark" in request.fixturenames:
        spark = request.getfixturevalue("spark")
        spark.conf.unset(PARTITION_TYPES)
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
