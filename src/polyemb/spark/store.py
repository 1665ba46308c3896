"""Incremental embedding on Spark: each text embedded once per model, through the vector store.

:func:`embed_incremental` works the Spark way, with no per-row lookups from workers: it hashes
the texts in the JVM (``substr(sha2(text, 256), 1, 32)``, the store's text hash), finds the
hashes the store lacks with a left anti-join against the store's Parquet table, embeds only the
distinct missing texts, appends them as a run folder of its own (so jobs appending at once never
touch each other's files), and joins the vectors back. The store may be on any path Spark reads
and writes; its layout is described in :mod:`polyemb.store`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from polyemb.arrow import MODEL_METADATA
from polyemb.encoder import describe
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.options import Delivery, Precision
from polyemb.spark.delivery import active_session
from polyemb.spark.udfs import col_named, embed_udf
from polyemb.store.layout import HASH_COLUMN, VECTOR_COLUMN, description, run_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["embed_incremental", "last_report"]

logger = logging.getLogger(__name__)

# What the latest embed_incremental of this driver did: model key, texts embedded, run, seconds.
last_report: dict[str, Any] = {}

_HASH = "__polyemb_hash"
_TEXT = "__polyemb_text"


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
    spec = describe(
        model,
        precision="fp32" if precision == "auto" else precision,
        max_seq_length=max_seq_length,
        revision=revision,
    )
    root = os.fspath(store).rstrip("/")
    model_dir = f"{root}/model={spec.key}"

    keyed = df.withColumn(_HASH, F.substring(F.sha2(col_named(column), 256), 1, 32))
    texts = (
        keyed.where(F.col(_HASH).isNotNull())
        .select(_HASH, col_named(column).alias(_TEXT))
        .dropDuplicates([_HASH])
    )
    stored = _read_store(session, model_dir)
    missing = (
        texts
        if stored is None
        else texts.join(stored.select(F.col(HASH_COLUMN).alias(_HASH)), _HASH, "left_anti")
    )
    missing = missing.persist()
    try:
        embedded = missing.count()
        run = f"{model_dir}/run={run_id()}"
        if embedded:
            embed = embed_udf(
                model,
                spark=session,
                delivery=delivery,
                batch_size=batch_size,
                precision=spec.precision,
                max_seq_length=spec.max_seq_length,
                revision=revision,
            )
            about = json.dumps(description(spec))
            new = missing.select(
                F.col(_HASH).alias(HASH_COLUMN),
                embed(F.col(_TEXT)).alias(VECTOR_COLUMN, metadata={"polyemb": about}),
            )
            # Row groups of 32 MiB: a lookup from Python reads whole row groups.
            new.write.option("parquet.block.size", 32 * 2**20).parquet(run)
    finally:
        missing.unpersist()
    vectors = _read_store(session, model_dir)
    if vectors is None:  # nothing stored and nothing to embed: every text was NULL
        result = keyed.withColumn(vector_column, F.lit(None).cast("array<float>"))
    else:
        found = vectors.select(F.col(HASH_COLUMN).alias(_HASH), F.col(VECTOR_COLUMN).alias(vector_column))
        found = found.join(texts.select(_HASH), _HASH, "left_semi").dropDuplicates([_HASH])
        result = keyed.join(found, _HASH, "left")
    result = result.drop(_HASH).withMetadata(vector_column, {MODEL_METADATA.decode(): spec.provenance})
    last_report.clear()
    last_report.update(
        model_key=spec.key,
        provenance=spec.provenance,
        embedded=embedded,
        run=run if embedded else None,
        seconds=round(time.perf_counter() - started, 2),
    )
    logger.info("embed_incremental: %s", last_report)
    return result


def _read_store(spark: Any, model_dir: str) -> DataFrame | None:
    """The store's table of one model, or None where nothing is stored yet."""
    try:
        frame = spark.read.parquet(model_dir)
        frame.schema  # noqa: B018 - Spark Connect analyses lazily: a missing path fails here
    except AnalysisException as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "UNABLE_TO_INFER_SCHEMA" in text or "does not exist" in text:
            return None
        raise
    return frame.select(HASH_COLUMN, VECTOR_COLUMN)
