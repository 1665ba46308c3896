"""Spark: pandas UDFs that get the model to every Python worker once, for classic Spark and Connect.

``embed_udf()`` and ``similarity_udf()`` are pandas UDFs for the DataFrame API; ``register()``
makes them ``embed`` and ``semantic_similarity`` in Spark SQL. ``embed_incremental()`` embeds
through a vector store on any path Spark reaches; ``store_stats()``, ``compact_store()`` and
``gc_store()`` maintain such a store. How the model reaches the
executors (``delivery=``) is described in :mod:`polyemb.spark.delivery`: by default its files
are shipped, as a broadcast on classic Spark and as a session artifact on Spark Connect.

Each Python worker loads the model at most once and reuses it across Arrow batches, tasks and
queries (with ``spark.python.worker.reuse``, Spark's default). A task that Spark gave GPUs
(``TaskContext.resources()["gpu"]``) runs on that GPU in fp16; otherwise on the CPU with torch
threads capped to the task's CPUs (``spark.task.cpus``), so the workers on one machine do not
oversubscribe its cores.
"""

from __future__ import annotations

from polyemb.errors import MissingDependencyError

try:
    import pandas  # noqa: F401
    import pyspark  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without pyspark
    raise MissingDependencyError(
        "polyemb.spark needs pyspark and pandas: pip install 'polyemb[spark]'"
    ) from exc

from polyemb.spark.dedup import near_duplicates
from polyemb.spark.delivery import worker_loads
from polyemb.spark.join import semantic_join
from polyemb.spark.maintenance import compact_store, gc_store, store_stats
from polyemb.spark.store import IncrementalReport, embed_incremental
from polyemb.spark.udfs import embed_chunks_udf, embed_udf, register, similarity_udf

__all__ = [
    "IncrementalReport",
    "compact_store",
    "embed_chunks_udf",
    "embed_incremental",
    "embed_udf",
    "gc_store",
    "near_duplicates",
    "register",
    "semantic_join",
    "similarity_udf",
    "store_stats",
    "worker_loads",
]
