"""Maintenance of a store only Spark reaches (``s3a://``, ``hdfs://``...): stats, compact and gc.

The same decisions as the Python store's (:mod:`polyemb.store.stats` and
:mod:`polyemb.store.maintenance`: the same counts, the same files merged, the same copy of a
duplicate kept, the same models kept by gc), made with Spark's readers and writers and Hadoop's
FileSystem, so that on a local path both give the same results. The same safety too: merged files
are written (and committed by Spark) before any input is removed, a bad file is moved into its
model's ``_quarantine/`` folder and never deleted, and a crash anywhere leaves a readable store
with nothing lost (at worst, duplicates the next run drops).

:func:`store_stats` works on classic Spark and Spark Connect. :func:`compact_store` and
:func:`gc_store` rename and delete files, which needs Hadoop's FileSystem through the session's
JVM: classic Spark only (run them with ``spark-submit udfs/spark/store_maintenance.py``).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from polyemb.errors import InvalidInputError, StoreError
from polyemb.options import check_mib
from polyemb.spark.lakefs import LakeFs
from polyemb.spark.store import STORE_SCHEMA, check_lake_marker, read_options, write_options
from polyemb.store.index import FileIndex, check_store_table, open_parquet
from polyemb.store.layout import (
    HASH_COLUMN,
    MODEL_FILE,
    MODEL_PREFIX,
    QUARANTINE,
    VECTOR_COLUMN,
    description_from_schema,
    parse_description,
    run_id,
)
from polyemb.store.maintenance import CompactReport, GcReport, plan_gc
from polyemb.store.quarantine import BAD_SUFFIX
from polyemb.store.stats import COMPACT_TARGET_MB, ModelStats, StoreStats, model_stats, target_rows
from polyemb.store.writer import STALE_SECONDS, is_stale_temporary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["compact_store", "gc_store", "store_stats"]

_VERDICT_SCHEMA = "path string, ok boolean, rows long, reason string, description string"
_VALID_HASH = r"^[0-9a-fA-F]{32}$"


# --------------------------------------------------------------------------- reading a store


def _same(path: str) -> tuple[str, str]:
    """A path as Hadoop lists it and as Spark's ``_metadata`` gives it, made comparable."""
    parts = urlparse(path)
    return parts.netloc, unquote(parts.path).rstrip("/")


def _verdicts(batches: Iterator[pa.RecordBatch], dim: int | None, whole: bool) -> Iterator[pa.RecordBatch]:
    """On executors: each file's bytes read as polyemb reads a store file, and the verdict.

    ``whole``: every hash and vector, as compaction reads a file; else the footer and the hashes,
    as stats and the index read it.
    """
    for batch in batches:
        out: dict[str, list[Any]] = {"path": [], "ok": [], "rows": [], "reason": [], "description": []}
        paths, contents = batch.column("path").to_pylist(), batch.column("content").to_pylist()
        for path, content in zip(paths, contents, strict=True):
            ok, rows, reason, about = True, 0, "", ""
            try:
                parquet = open_parquet(pa.BufferReader(content))
                about = json.dumps(description_from_schema(parquet.schema_arrow))
                if whole:
                    rows = check_store_table(parquet.read(), path, dim)[0].shape[0]
                else:
                    FileIndex.from_parquet(Path(urlparse(path).path), parquet)
                    rows = parquet.metadata.num_rows
            except (StoreError, pa.ArrowException, OSError) as exc:
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            for name, value in zip(out, (path, ok, rows, reason, about), strict=True):
                out[name].append(value)
        yield pa.RecordBatch.from_pydict(out)


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    rows: int
    reason: str
    description: dict[str, Any]


def _check(
    spark: Any, files: Sequence[tuple[str, int]], dim: int | None, *, whole: bool
) -> dict[tuple[str, str], _Verdict]:
    """Each ``(path, size)`` read and checked on the executors; one that vanished has no verdict.

    Spark packs small files into one task, up to ``spark.sql.files.maxPartitionBytes``: what a
    task holds at once. It skips empty files, which are bad (what pyarrow says of them).
    """
    verdicts = {
        _same(path): _Verdict(False, 0, "ArrowInvalid: Parquet file size is 0 bytes", {})
        for path, size in files
        if not size
    }
    paths = [path for path, size in files if size]
    if not paths:
        return verdicts
    frame = spark.read.format("binaryFile").option("ignoreMissingFiles", "true").load(paths)
    rows = frame.mapInArrow(lambda batches: _verdicts(batches, dim, whole), _VERDICT_SCHEMA).collect()
    for row in rows:
        about = parse_description(row["description"])
        verdicts[_same(row["path"])] = _Verdict(row["ok"], row["rows"], row["reason"], about)
    return verdicts


def _listing(spark: Any, fs: LakeFs | None, folder: str) -> list[tuple[str, int]]:
    """``(path, size)`` of a model folder's data files: ``run=*/*.parquet``, no ``.`` or ``_`` names."""
    if fs is not None:
        return sorted(
            (entry.path, entry.size)
            for run in fs.list(folder)
            if run.is_dir and not run.name.startswith((".", "_"))
            for entry in fs.list(run.path)
            if not entry.is_dir and entry.name.endswith(".parquet") and not entry.name.startswith((".", "_"))
        )
    try:  # Spark Connect: Spark's own listing, which skips the same names
        frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
        rows = frame.where(F.col("path").endswith(".parquet")).select("path", "length").collect()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc):
            return []
        raise
    return sorted((row["path"], int(row["length"])) for row in rows)


def _models(spark: Any, fs: LakeFs | None, root: str) -> list[tuple[str, str]]:
    """``(key, folder)`` of every model folder, sorted by key."""
    if fs is not None:
        return sorted(
            (entry.name.removeprefix(MODEL_PREFIX), entry.path)
            for entry in fs.list(root)
            if entry.is_dir and entry.name.startswith(MODEL_PREFIX)
        )
    keys = {
        part.removeprefix(MODEL_PREFIX)
        for path, _ in _listing(spark, None, root)
        for part in urlparse(path).path.split("/")
        if part.startswith(MODEL_PREFIX)
    }
    return [(key, f"{root}/{MODEL_PREFIX}{key}") for key in sorted(keys)]


def _description(
    spark: Any, fs: LakeFs | None, folder: str, files: Sequence[tuple[str, int]]
) -> dict[str, Any]:
    """A model's ``_model.json`` (classic), else the description in its first readable file."""
    found = parse_description(fs.read_text(f"{folder}/{MODEL_FILE}") or "") if fs is not None else {}
    for path, size in files if not found else []:
        verdict = _check(spark, [(path, size)], None, whole=False).get(_same(path))
        if verdict is not None and verdict.description:
            return verdict.description
    return found


@dataclass
class _Files:
    """What the hash columns of a model's files say: rows per file, and which files look bad."""

    rows: dict[tuple[str, str], int]
    named: dict[tuple[str, str], str]  # each file read, as Spark's _metadata names it
    suspects: set[tuple[str, str]]  # no rows read, or a malformed hash
    hashes: DataFrame | None  # (file, text_hash) of every row read


def _read_hashes(spark: Any, files: Sequence[str]) -> _Files:
    if not files:
        return _Files({}, {}, set(), None)
    frame = (
        spark.read.options(**read_options())
        .schema(f"{HASH_COLUMN} string")
        .parquet(*files)
        .select(F.col("_metadata.file_path").alias("file"), F.col(HASH_COLUMN))
    )
    valid = F.coalesce(F.col(HASH_COLUMN).rlike(_VALID_HASH), F.lit(False))
    counts = frame.groupBy("file").agg(F.count("*").alias("n"), F.min(valid).alias("valid")).collect()
    rows = {_same(row["file"]): int(row["n"]) for row in counts}
    named = {_same(row["file"]): str(row["file"]) for row in counts}
    suspects = {_same(path) for path in files if _same(path) not in rows}
    suspects |= {_same(row["file"]) for row in counts if not row["valid"]}
    return _Files(rows, named, suspects, frame)


# --------------------------------------------------------------------------- stats


def store_stats(spark: SparkSession, path: str, *, target_mb: float = COMPACT_TARGET_MB) -> StoreStats:
    """Entries, distinct texts, files and sizes per model, and whether to compact, through Spark.

    What :meth:`polyemb.store.VectorStore.stats` gives for a local store. Reads the hash column
    of every data file (and reads whole the few whose hashes cannot be read); moves nothing. On
    Spark Connect, which cannot see hidden files, sizes count the data files only, and
    ``unlisted_folders`` is always 0 (a folder Spark cannot list fails the read instead).

    Args:
        spark: The session (classic or Spark Connect).
        path: The store's folder, any path Spark reads.
        target_mb: The compaction target (which files count as small).

    Returns:
        The stats, as Python's.

    Raises:
        InvalidInputError: ``target_mb`` is not a number of MiB above 0.
        StoreError: ``path`` holds no store.

    Example:
        >>> print(polyemb.spark.store_stats(spark, "s3a://lake/vectors").format())
    """
    target_mb = check_mib("target_mb", target_mb)
    root = path.rstrip("/")
    fs = LakeFs.of(spark, root)
    check_lake_marker(spark, root)
    models = [_model_stats(spark, fs, key, folder, target_mb) for key, folder in _models(spark, fs, root)]
    if not models and (fs is None or not fs.exists(root)):
        raise StoreError(f"{path} holds no polyemb store (no model=* folders)")
    total = fs.tree_bytes(root) if fs is not None else sum(m.bytes for m in models)
    return StoreStats(path, models, total)


def _model_stats(spark: Any, fs: LakeFs | None, key: str, folder: str, target_mb: float) -> ModelStats:
    listed = _listing(spark, fs, folder)
    files = [file for file, _ in listed]
    read = _read_hashes(spark, files)
    description = _description(spark, fs, folder, listed)
    suspects = [(file, size) for file, size in listed if _same(file) in read.suspects]
    verdicts = _check(spark, suspects, None, whole=False)
    bad = {name for name, verdict in verdicts.items() if not verdict.ok}
    rows = [read.rows.get(_same(file), 0) for file in files if _same(file) not in bad]
    distinct = 0
    if read.hashes is not None:
        excluded = [read.named[name] for name in bad if name in read.named]
        good = read.hashes.where(~F.col("file").isin(excluded)) if excluded else read.hashes
        distinct = good.select(HASH_COLUMN).distinct().count()
    quarantined = _listing_any(spark, fs, f"{folder}/{QUARANTINE}")
    sizes = [size for _, size in listed]
    return model_stats(
        key,
        description,
        rows=rows,
        sizes=sizes,
        distinct=distinct,
        bad_files=len(bad),
        quarantined=len(quarantined),
        unlisted_folders=0,
        folder_bytes=fs.tree_bytes(folder) if fs is not None else sum(sizes) + sum(quarantined),
        target_mb=target_mb,
    )


def _listing_any(spark: Any, fs: LakeFs | None, folder: str) -> list[int]:
    """Sizes of every file directly in ``folder`` (the quarantine): its names are not ``.`` or ``_``."""
    if fs is not None:
        return [entry.size for entry in fs.list(folder, raw=True) if not entry.is_dir]
    try:
        return [
            int(row["length"])
            for row in spark.read.format("binaryFile").load(folder).select("length").collect()
        ]
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc):
            return []
        raise


# --------------------------------------------------------------------------- compaction and gc


def _lake(spark: Any, path: str, what: str) -> tuple[str, LakeFs]:
    root = path.rstrip("/")
    fs = LakeFs.of(spark, root)
    if fs is None:
        raise InvalidInputError(
            f"{what} renames and deletes files, which a Spark Connect session cannot do (it has no "
            "file system API): run it from a classic session, e.g. spark-submit "
            "udfs/spark/store_maintenance.py, or with Python's polyemb store on a mounted path"
        )
    check_lake_marker(spark, root)
    if not fs.exists(root):
        raise StoreError(f"{path} holds no polyemb store")
    return root, fs


@dataclass
class _Counts:
    before: int = 0
    after: int = 0
    kept: int = 0
    dropped: int = 0
    quarantined: int = 0


def compact_store(spark: SparkSession, path: str, *, target_mb: float = COMPACT_TARGET_MB) -> CompactReport:
    """Merge each model's small files into files of about ``target_mb`` of vectors, through Spark.

    What :meth:`polyemb.store.VectorStore.compact` does for a local store: the files under the
    target are read whole and checked (bad ones are moved into the model's ``_quarantine/``
    folder), merged with one entry per text (the copy in the first file by path, as Python
    keeps), written as a new run, and removed only once Spark has committed that run. Readers
    (polyemb, Spark jobs started after it) are safe meanwhile; a Spark job that listed the files
    before they were removed reads them as missing and embeds their texts again.

    Raises:
        InvalidInputError: ``spark`` is a Spark Connect session (it cannot delete files), or
            ``target_mb`` is not a number of MiB above 0.
        StoreError: ``path`` holds no store.

    Example:
        >>> polyemb.spark.compact_store(spark, "s3a://lake/vectors")
    """
    target_mb = check_mib("target_mb", target_mb)
    root, fs = _lake(spark, path, "compact_store")
    counts = _Counts()
    for _, folder in _models(spark, fs, root):
        _compact_model(spark, fs, folder, target_mb, counts)
    removed = _remove_leftovers(fs, root)
    return CompactReport(
        counts.before, counts.after, counts.kept, counts.dropped, removed, counts.quarantined
    )


def _compact_model(spark: Any, fs: LakeFs, folder: str, target_mb: float, counts: _Counts) -> None:
    listed = _listing(spark, fs, folder)
    files = [file for file, _ in listed]
    counts.before += len(files)
    description = _description(spark, fs, folder, listed)
    read = _read_hashes(spark, files)
    dim = description.get("dim")
    limit = target_rows(dim if isinstance(dim, int) else 1, target_mb)
    sizes = dict(listed)
    small = [file for file in files if read.rows.get(_same(file), 0) < limit]
    verdicts = _check(
        spark, [(file, sizes[file]) for file in small], dim if isinstance(dim, int) else None, whole=True
    )
    if any(_same(file) not in verdicts for file in small):  # another compaction took it
        counts.after += len(_listing(spark, fs, folder))
        return
    good = []
    for file in small:
        if verdicts[_same(file)].ok:
            good.append(file)
        elif _set_aside(fs, folder, file):
            counts.quarantined += 1
    if len(good) < 2 or not isinstance(dim, int):
        counts.after += len(files) - len(small) + len(good)
        return
    run = f"{folder}/run=compact-{run_id()}"
    try:
        kept = _merge(spark, sorted(good), run, description, limit)
    except Exception:
        if all(fs.exists(file) for file in good):
            raise
        counts.after += len(_listing(spark, fs, folder))  # another compaction took one: nothing removed
        return
    written = sum(1 for entry in fs.list(run) if entry.name.endswith(".parquet"))
    # Spark has committed the merged files: the small ones may go.
    for file in good:
        fs.delete(file)
    counts.kept += kept
    counts.dropped += sum(verdicts[_same(file)].rows for file in good) - kept
    counts.after += len(files) - len(small) + written


def _merge(spark: Any, files: list[str], run: str, description: dict[str, Any], limit: int) -> int:
    """Write ``files``' rows, one per hash, as about ``limit``-row files of ``run``; the rows kept."""
    frame = (
        spark.read.option("parquet.page.verify-checksum.enabled", "true")
        .schema(STORE_SCHEMA)  # as the store is read everywhere: never from one file's footer
        .parquet(*files)
        .select(HASH_COLUMN, VECTOR_COLUMN, F.col("_metadata.file_path").alias("file"))
    )
    # Of a text stored twice, the copy of the first file by path: the one Python's compact keeps.
    merged = frame.groupBy(HASH_COLUMN).agg(
        F.min_by(VECTOR_COLUMN, "file").alias(VECTOR_COLUMN, metadata={"polyemb": json.dumps(description)})
    )
    merged = merged.persist()
    try:
        kept = merged.count()
        merged.coalesce(max(1, math.ceil(kept / limit))).write.options(**write_options()).parquet(run)
    finally:
        merged.unpersist()
    return int(kept)


def _set_aside(fs: LakeFs, folder: str, file: str) -> bool:
    """Move a bad file into its model's quarantine (never delete it); False if it vanished."""
    quarantine = f"{folder}/{QUARANTINE}"
    fs.mkdirs(quarantine)
    parts = file.rstrip("/").split("/")
    target = f"{quarantine}/{parts[-2]}--{parts[-1]}.{uuid.uuid4().hex[:8]}{BAD_SUFFIX}"
    return fs.rename(file, target)


def _remove_leftovers(fs: LakeFs, root: str) -> int:
    """Python's rule on a lake: hidden ``.tmp`` files and empty run folders an hour old go."""
    removed = 0
    now = time.time()
    for model in fs.list(root):
        if not model.is_dir or not model.name.startswith(MODEL_PREFIX):
            continue
        for run in fs.list(model.path, raw=True):
            if not run.is_dir:
                continue
            entries = fs.list(run.path, raw=True)
            for entry in entries:
                if is_stale_temporary(entry.name, now - entry.modified) and fs.delete(entry.path):
                    removed += 1
            if not entries and now - run.modified > STALE_SECONDS:
                fs.delete(run.path)
    return removed


def gc_store(spark: SparkSession, path: str, keep: Sequence[str]) -> GcReport:
    """Drop the vectors of every model but ``keep``, through Spark: :meth:`VectorStore.gc` on a lake.

    ``keep`` holds provenances (``id@fingerprint``), fingerprints or model keys (one may be given
    as a str); a model whose
    description names no model is kept. Do not run it while a job writes a model it drops.

    Raises:
        InvalidInputError: ``keep`` is empty or names no model of the store (nothing is dropped),
            or ``spark`` is a Spark Connect session.
        StoreError: ``path`` holds no store.

    Example:
        >>> polyemb.spark.gc_store(spark, "s3a://lake/vectors", keep=[encoder.provenance])
    """
    root, fs = _lake(spark, path, "gc_store")
    models = _models(spark, fs, root)
    descriptions = [
        (key, _description(spark, fs, folder, _listing(spark, fs, folder))) for key, folder in models
    ]
    kept, dropped = plan_gc(descriptions, keep, path)
    folders = dict(models)
    freed = 0
    for key in dropped:
        freed += fs.tree_bytes(folders[key])
        fs.delete(folders[key], recursive=True)
    _remove_leftovers(fs, root)
    return GcReport(kept, dropped, freed)
