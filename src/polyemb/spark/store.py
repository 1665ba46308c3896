"""Incremental embedding on Spark: each text embedded once per model, through the vector store.

:func:`embed_incremental` works the Spark way, with no per-row lookups from workers: it hashes
the texts in the JVM (``substr(sha2(text, 256), 1, 32)``, the store's text hash), reads the
stored vectors of those hashes, embeds only the distinct texts it did not find, appends them as
a run folder of its own (so jobs appending at once never touch each other's files), and joins
the vectors back. The vectors it found and made are held by Spark (a local checkpoint) before
it returns, so the result never reads the store again: a ``compact`` or ``gc`` after the call
changes nothing in it. The store may be on any path Spark reads and writes; its layout is
:mod:`polyemb.store.layout`.
"""

from __future__ import annotations

import json
import logging
import math
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
from polyemb.spark.delivery import active_session, model_source
from polyemb.spark.lakefs import LakeFs
from polyemb.spark.udfs import col_named, embed_with, has_column
from polyemb.store import stored
from polyemb.store.layout import (
    HASH_COLUMN,
    MARKER,
    VECTOR_COLUMN,
    check_marker_text,
    description,
    model_dir,
    run_dir,
    run_id,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["STORE_SCHEMA", "IncrementalReport", "embed_incremental", "read_options"]

logger = logging.getLogger(__name__)

_HASH = "__polyemb_hash"
_TEXT = "__polyemb_text"
_VECTOR = "__polyemb_vector"
# Row groups of 32 MiB: a lookup from Python reads whole row groups.
_BLOCK_BYTES = 32 * 2**20
STORE_SCHEMA = f"{HASH_COLUMN} string, {VECTOR_COLUMN} array<float>"
"""A store file's columns as Spark reads them: given, never inferred (see :func:`_read_store`)."""


def read_options() -> dict[str, str]:
    """How Spark reads a store: a file removed meanwhile (a compaction) or bad is skipped, not an error.

    A skipped file's texts read as missing, and are embedded again: never a failed job, and never
    a NULL vector for a text that has one. Page checksums are verified where files have them.
    """
    return {
        "ignoreMissingFiles": "true",
        "ignoreCorruptFiles": "true",
        "parquet.page.verify-checksum.enabled": "true",
    }


def write_options() -> dict[str, str]:
    """How Spark writes store files: row groups of 32 MiB, with a checksum per page."""
    return {"parquet.block.size": str(_BLOCK_BYTES), "parquet.page.write-checksum.enabled": "true"}


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
        any Spark join, is not kept. Its vectors are read and computed by this call and held by
        Spark (a local checkpoint, on the executors), so it never reads the store again: a
        ``compact`` or ``gc`` before it is used changes nothing. ``df`` is read more than once
        (to find what is missing, and to join the vectors back), so it must give the same rows
        each time, as any input of a Spark job read twice: cache or checkpoint a ``df`` whose
        source changes meanwhile.

    Raises:
        ColumnNotFoundError: ``column`` is not in ``df``.
        InvalidInputError: ``column`` is not a string column, or ``vector_column`` is already a
            column of ``df``.
        ModelMismatchError: The model changed between computing the key and shipping it (a
            folder rewritten, a hub branch moved): nothing was stored.
        StoreError: The store's marker is malformed or of a newer polyemb.

    Example:
        >>> out = polyemb.spark.embed_incremental(spark.read.parquet(lake), "title", store="s3a://lake/vectors")
        >>> out.write.parquet("s3a://lake/articles_vec")
    """
    started = time.perf_counter()
    if column not in df.columns:
        raise ColumnNotFoundError.from_missing(column, df.columns, "the DataFrame")
    kind = df.schema[column].dataType.simpleString()
    if kind != "string":
        raise InvalidInputError(f"column {column!r} is {kind}: give a text (string) column")
    if has_column(df, vector_column):
        raise InvalidInputError(f"the DataFrame already has a column {vector_column!r}; choose another")
    session = active_session(spark)
    root = os.fspath(store)
    check_lake_marker(session, root)
    fixed = "fp32" if precision == "auto" else precision
    spec = describe(
        model,
        precision=fixed,
        max_seq_length=max_seq_length,
        revision=revision,
        long_texts=long_texts,
        stride=stride,
    )
    folder = model_dir(root, spec.key)
    keyed = df.withColumn(_HASH, F.substring(F.sha2(col_named(column), 256), 1, 32))
    texts = keyed.where(F.col(_HASH).isNotNull()).select(_HASH, col_named(column).alias(_TEXT))
    texts = texts.dropDuplicates([_HASH])

    def make_udf() -> Any:
        # The executors must compute exactly the model the key names: pin a hub commit, and
        # refuse a model whose content is not the key's (a folder rewritten, a branch moved).
        pinned = revision if spec.fingerprint.startswith("sha256:") else spec.fingerprint
        source = model_source(
            session,
            model,
            delivery=delivery,
            precision=spec.precision,
            max_seq_length=spec.max_seq_length,
            revision=pinned,
            fingerprint=spec.fingerprint,
            long_texts=spec.long_texts,
            stride=spec.stride,
        )
        return embed_with(source, batch_size)

    vectors, embedded, run = _vectors(session, texts, folder, spec, make_udf)
    result = keyed.join(vectors.withColumnRenamed(_VECTOR, vector_column), _HASH, "left").drop(_HASH)
    result = result.withMetadata(vector_column, {MODEL_METADATA.decode(): spec.provenance})
    report = report if report is not None else IncrementalReport()
    report.model_key, report.provenance = spec.key, spec.provenance
    report.embedded, report.run = embedded, run
    report.seconds = round(time.perf_counter() - started, 2)
    logger.info("embed_incremental: %s", report)
    return result


def check_lake_marker(spark: Any, root: str) -> None:
    """Check the marker of a store Spark reaches, where it has one (a lake store may have none).

    Spark's readers skip ``_`` files, so the marker is read through Hadoop's FileSystem: on a
    Spark Connect session, which has none, it is not checked.

    Raises:
        StoreError: The marker is malformed, or of a newer store version than this polyemb writes.
    """
    fs = LakeFs.of(spark, root)
    text = fs.read_text(f"{root.rstrip('/')}/{MARKER}") if fs is not None else None
    if text is not None:
        check_marker_text(text, root)


def _is_missing(exc: AnalysisException) -> bool:
    text = str(exc)
    return "PATH_NOT_FOUND" in text or "does not exist" in text


def _vectors(
    spark: Any, texts: DataFrame, folder: str, spec: VectorSpec, make_udf: Callable[[], Any]
) -> tuple[DataFrame, int, str | None]:
    """``(hash, vector)`` of every distinct text, held by Spark; the count embedded; the run written.

    The stored vectors of the texts are read and checkpointed first; the texts not found among
    them (never stored, or in a file removed or bad meanwhile) are embedded, in parallel as the
    input is partitioned, kept, then written in ``ceil(new / WRITE_ROWS)`` files. No UDF is made
    (no model shipped) where nothing is missing.
    """
    found = _stored_vectors(spark, folder, texts, spec)
    missing = texts.join(found.select(_HASH), _HASH, "left_anti").persist()
    try:
        count = missing.count()
        if not count:
            return found, 0, None
        new = missing.select(F.col(_HASH), make_udf()(F.col(_TEXT)).alias(_VECTOR)).persist()
        try:
            new.count()  # computed here, in parallel: the write below reads them from Spark's storage
            run = run_dir(folder, run_id())
            _write(new, run, spec, math.ceil(count / stored.WRITE_ROWS))
            # The result's vectors, held by Spark: it never reads the store again.
            return found.unionByName(new).localCheckpoint(eager=True), count, run
        finally:
            new.unpersist()
    finally:
        missing.unpersist()


def _stored_vectors(spark: Any, folder: str, texts: DataFrame, spec: VectorSpec) -> DataFrame:
    """The stored ``(hash, vector)`` of ``texts``' hashes, one each, checkpointed (read now)."""
    stored_table = _read_store(spark, folder)
    if stored_table is None:  # nothing stored yet
        return texts.select(_HASH, F.lit(None).cast("array<float>").alias(_VECTOR)).limit(0)
    found = stored_table.select(F.col(HASH_COLUMN).alias(_HASH), F.col(VECTOR_COLUMN).alias(_VECTOR))
    # A NULL vector or one of another length (a bad row group) is not a stored vector.
    found = found.where(F.col(_VECTOR).isNotNull() & (F.size(F.col(_VECTOR)) == spec.dim))
    found = found.join(texts.select(_HASH), _HASH, "left_semi").dropDuplicates([_HASH])
    return found.localCheckpoint(eager=True)


def _write(new: DataFrame, run: str, spec: VectorSpec, files: int) -> None:
    """Write the new vectors as ``files`` files of one run (``coalesce``: no shuffle)."""
    about = json.dumps(description(spec))
    columns = new.select(
        F.col(_HASH).alias(HASH_COLUMN),
        F.col(_VECTOR).alias(VECTOR_COLUMN, metadata={"polyemb": about}),
    )
    columns.coalesce(max(files, 1)).write.options(**write_options()).parquet(run)


def _read_store(spark: Any, folder: str) -> DataFrame | None:
    """The store's table of one model, or None where nothing is stored yet.

    The schema is given, not inferred: Spark infers a schema from one file's footer, and with
    that file bad (truncated, overwritten) it fails the read or finds no schema at all, where
    ``ignoreCorruptFiles`` would have skipped the file alone. A foreign file's rows read as NULLs,
    which are not stored vectors.
    """
    try:
        frame = spark.read.options(**read_options()).schema(STORE_SCHEMA).parquet(folder)
        _ = frame.schema  # Spark Connect analyses lazily: a missing path fails here
    except AnalysisException as exc:
        if _is_missing(exc):
            return None
        raise
    return frame.select(HASH_COLUMN, VECTOR_COLUMN)
