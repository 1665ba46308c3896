"""Incremental embedding on Spark: each text embedded once per model, through the vector store.

:func:`embed_incremental` works the Spark way, with no per-row lookups from workers: it hashes
the texts in the JVM (``substr(sha2(text, 256), 1, 32)``, the store's text hash), finds the
hashes the store lacks with a left anti-join against the store's Parquet table, embeds only the
distinct missing texts, appends them as a run folder of its own (so jobs appending at once never
touch each other's files), and joins the vectors back. The store may be on any path Spark reads
and writes; its layout is :mod:`polyemb.store.layout`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from polyemb.arrow import MODEL_METADATA
from polyemb.embedder import VectorSpec
from polyemb.encoder import describe
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.options import Delivery, LongTexts, Precision
from polyemb.spark.delivery import active_session
from polyemb.spark.udfs import col_named, embed_udf
from polyemb.store.layout import HASH_COLUMN, VECTOR_COLUMN, description, model_dir, run_dir, run_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["IncrementalReport", "embed_incremental"]

logger = logging.getLogger(__name__)

_HASH = "__polyemb_hash"
_TEXT = "__polyemb_text"
# Row groups of 32 MiB: a lookup from Python reads whole row groups.
_BLOCK_BYTES = 32 * 2**20


@dataclass
class IncrementalReport:
    """What one :func:`embed_incremental` call did, filled in by the call (as Spark's ``Observation``).

    Each call fills its own report, so jobs running at once on one driver never mix theirs up.

    Attributes:
        model_key: The store key of the model's vectors.
        provenance: The model's provenance (``id@fingerprint``).
        embedded: Distinct texts the store lacked, embedded and stored by this call.
        run: The run folder the call wrote; None where it embedded nothing.
        seconds: How long the call took (the joined result is computed later, when used).

    Example:
        >>> report = polyemb.spark.IncrementalReport()
        >>> out = polyemb.spark.embed_incremental(df, "title", "s3a://lake/vectors", report=report)
        >>> report.embedded
        8000
    """

    model_key: str = ""
    provenance: str = ""
    embedded: int = 0
    run: str | None = None
    seconds: float = 0.0


def embed_incremental(
    df: DataFrame,
    column: str,
    store: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    spark: SparkSession | None = None,
    vector_column: str = "embedding",
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: Precision = "fp32",
    max_seq_length: int | None = None,
    revision: str | None = None,
    report: IncrementalReport | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> DataFrame:
    """``df`` with a vector column, embedding only the texts the store lacks for this model.

    Args:
        df: The input.
        column: Its text column; NULL texts get NULL vectors.
        store: The store's folder: a local path or any path Spark reads and writes (``s3a://``...).
        model: Hub id or folder; None: ``$POLYEMB_MODEL`` on the driver, else the default model.
        spark: The session; None: the active one (classic or Spark Connect).
        vector_column: Name of the new column; its metadata records the model's provenance.
        delivery: How executors get the model (see :mod:`polyemb.spark.delivery`).
        batch_size: Texts per forward pass on the workers.
        precision: ``"fp32"`` (default), ``"fp16"``, ``"bf16"`` or ``"int8"``. Part of the store key, so it is
            fixed here: ``"auto"`` means fp32, since vectors in a lake must not depend on which
            executor (GPU or CPU) computed them.
        max_seq_length: Tokens per text; None: the model's.
        revision: Hub revision.
        report: An :class:`IncrementalReport` this call fills in: texts embedded, model key, run.
        long_texts: ``"truncate"`` or ``"mean"``, as for :func:`polyemb.load`; part of the store key.
        stride: As for :func:`polyemb.load`; part of the key with ``"mean"``.

    Returns:
        ``df``'s rows and columns plus ``vector_column`` (``array<float>``). Row order, as with
        any Spark join, is not kept. ``df`` is read more than once (to find what is missing,
        and to join the vectors back), so it must give the same rows each time, as any input
        of a Spark job read twice: cache or checkpoint a ``df`` whose source changes meanwhile.

    Raises:
        ColumnNotFoundError: ``column`` is not in ``df``.
        InvalidInputError: ``vector_column`` is already a column of ``df``.

    Example:
        >>> out = polyemb.spark.embed_incremental(spark.read.parquet(lake), "title", store="s3a://lake/vectors")
        >>> out.write.parquet("s3a://lake/articles_vec")
    """
    started = time.perf_counter()
    if column not in df.columns:
        raise ColumnNotFoundError.from_missing(column, df.columns, "the DataFrame")
    if vector_column in df.columns:
        raise InvalidInputError(f"the DataFrame already has a column {vector_column!r}; choose another")
    session = active_session(spark)
    fixed = "fp32" if precision == "auto" else precision
    spec = describe(
        model,
        precision=fixed,
        max_seq_length=max_seq_length,
        revision=revision,
        long_texts=long_texts,
        stride=stride,
    )
    folder = model_dir(os.fspath(store), spec.key)
    keyed = df.withColumn(_HASH, F.substring(F.sha2(col_named(column), 256), 1, 32))
    texts = keyed.where(F.col(_HASH).isNotNull()).select(_HASH, col_named(column).alias(_TEXT))
    texts = texts.dropDuplicates([_HASH])
    make_udf = functools.partial(
        embed_udf,
        model,
        spark=session,
        delivery=delivery,
        batch_size=batch_size,
        precision=spec.precision,
        max_seq_length=spec.max_seq_length,
        revision=revision,
        long_texts=spec.long_texts,
        stride=stride,
    )
    embedded, run = _store_missing(session, texts, folder, spec, make_udf)
    result = _join_vectors(session, keyed, texts, folder, vector_column, spec)
    report = report if report is not None else IncrementalReport()
    report.model_key, report.provenance = spec.key, spec.provenance
    report.embedded, report.run = embedded, run
    report.seconds = round(time.perf_counter() - started, 2)
    logger.info("embed_incremental: %s", report)
    return result


def _store_missing(
    spark: Any, texts: DataFrame, folder: str, spec: VectorSpec, make_udf: Callable[[], Any]
) -> tuple[int, str | None]:
    """Embed the distinct texts the store lacks into a run folder of their own: ``(count, run)``.

    ``run`` is None where nothing was missing (no UDF is made then, so no model is shipped).
    """
    stored = _read_store(spark, folder)
    missing = (
        texts
        if stored is None
        else texts.join(stored.select(F.col(HASH_COLUMN).alias(_HASH)), _HASH, "left_anti")
    )
    missing = missing.persist()
    try:
        embedded = missing.count()
        if not embedded:
            return 0, None
        run = run_dir(folder, run_id())
        about = json.dumps(description(spec))
        new = missing.select(
            F.col(_HASH).alias(HASH_COLUMN),
            make_udf()(F.col(_TEXT)).alias(VECTOR_COLUMN, metadata={"polyemb": about}),
        )
        new.write.option("parquet.block.size", _BLOCK_BYTES).parquet(run)
        return embedded, run
    finally:
        missing.unpersist()


def _join_vectors(
    spark: Any, keyed: DataFrame, texts: DataFrame, folder: str, vector_column: str, spec: VectorSpec
) -> DataFrame:
    """``keyed``'s rows with their stored vectors (NULL for NULL texts), the hash column dropped."""
    vectors = _read_store(spark, folder)
    if vectors is None:  # nothing stored and nothing to embed: every text was NULL
        result = keyed.withColumn(vector_column, F.lit(None).cast("array<float>"))
    else:
        found = vectors.select(F.col(HASH_COLUMN).alias(_HASH), F.col(VECTOR_COLUMN).alias(vector_column))
        found = found.join(texts.select(_HASH), _HASH, "left_semi").dropDuplicates([_HASH])
        result = keyed.join(found, _HASH, "left")
    return result.drop(_HASH).withMetadata(vector_column, {MODEL_METADATA.decode(): spec.provenance})


def _read_store(spark: Any, folder: str) -> DataFrame | None:
    """The store's table of one model, or None where nothing is stored yet."""
    try:
        frame = spark.read.parquet(folder)
        _ = frame.schema  # Spark Connect analyses lazily: a missing path fails here
    except AnalysisException as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "UNABLE_TO_INFER_SCHEMA" in text or "does not exist" in text:
            return None
        raise
    return frame.select(HASH_COLUMN, VECTOR_COLUMN)
