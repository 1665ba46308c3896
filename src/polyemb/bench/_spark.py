"""The benchmarks' Spark session, and the memory of its Python workers."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from polyemb._platform import process_mib

__all__ = ["local_spark", "python_worker_peaks"]


def local_spark(app: str, conf: dict[str, str]) -> Any:
    """The benchmarks' Spark: ``local[2]``, no UI or progress bars, errors-only logs, plus ``conf``.

    Its Python workers run this Python (the one with polyemb), not whatever ``python3`` is first
    on PATH, as when ``.venv/bin/polyemb bench`` runs without the venv activated.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def python_worker_peaks() -> list[float]:
    """Peak memory (MiB) of each running PySpark Python worker process on this machine, largest first."""
    peaks = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes()
        except OSError:  # the process has ended
            continue
        if b"pyspark.daemon" in command or b"pyspark.worker" in command:
            peak = process_mib("VmHWM", cmdline.parent.name)
            if not math.isnan(peak):  # NaN: it ended in between
                peaks.append(round(peak, 1))
    return sorted(peaks, reverse=True)
