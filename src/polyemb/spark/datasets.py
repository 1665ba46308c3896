"""Parquet datasets on a lake as the jobs in ``udfs/spark`` read and write them.

A job's session reads partition values as their folders name them (``hour=05`` stays ``"05"``,
``zip=01234`` a text; Spark would infer the numbers 5 and 1234 and write ``hour=5``). A dataset
is read with the partition columns its ``key=value`` folders name, also when the path is a glob
or one partition's folder (Spark's ``basePath``, which Spark leaves unset then). An output is
checked before any work: it holds no file read, it is not inside a folder read, and, unless
appended to or overwritten, it is not there yet.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from py4j.protocol import Py4JJavaError  # type: ignore[import-untyped]
from pyspark.errors import AnalysisException, IllegalArgumentException
from pyspark.sql import SparkSession

from polyemb.errors import InvalidInputError
from polyemb.spark.lakefs import LakeFs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pyspark.sql import DataFrame

__all__ = [
    "PARTITION_TYPES",
    "check_output",
    "folder_keys",
    "input_files",
    "job_session",
    "partition_base",
    "read_parquet",
]

PARTITION_TYPES = "spark.sql.sources.partitionColumnTypeInference.enabled"
# Hadoop's glob characters; a folder named key=value is a partition's.
_GLOB = re.compile(r"[*?\[\]{}]")
_PARTITION = re.compile(r"[^=]+=[^=]*")
_FOLDER_KEY = re.compile(r"/([^/=]+)=[^/]*(?=/)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def job_session(name: str) -> SparkSession:
    """The job's session (the active one, or a new one named ``name``), partition values as written.

    The setting stays on the session: the jobs own theirs (``spark-submit``).
    """
    spark = SparkSession.builder.appName(name).getOrCreate()
    spark.conf.set(PARTITION_TYPES, "false")
    return spark


def _parts(path: str) -> list[str]:
    return path.rstrip("/").split("/")


def _folder(path: str) -> str | None:
    """The folder above the first glob in ``path`` (``path`` itself without one); None: none named.

    ``s3a://bucket-*/x`` or ``/da*/x`` name no folder (only a scheme or the root is left).
    """
    parts = _parts(path)
    cut = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
    folder = "/".join(parts[:cut])
    named = folder.split(":", 1)[1] if _SCHEME.match(folder) else folder
    return folder if named.strip("/") else None


def partition_base(path: str) -> str | None:
    """Where partition discovery starts for ``path``: above its globs and its own partition folders.

    None where that is ``path`` itself (Spark's default then finds every partition column), or
    where no folder is left.

    Example:
        >>> partition_base("s3a://lake/articles/year=2023/*/*.parquet")
        's3a://lake/articles'
    """
    folder = _folder(path)
    if folder is None:
        return None
    parts = _parts(folder)
    while parts and _PARTITION.fullmatch(parts[-1]):
        parts.pop()
    base = "/".join(parts)
    return base if _folder(base) is not None and base != path.rstrip("/") else None


def input_files(frame: DataFrame) -> list[str]:
    """The files ``frame`` reads, as paths (Spark gives URIs: ``my%20lake`` is ``my lake``)."""
    return [_canonical(unquote(file)) for file in frame.inputFiles()]


def folder_keys(files: Iterable[str]) -> list[str]:
    """The keys of the ``key=value`` folders that every file sits under, in folder order."""
    found: list[str] | None = None
    for path in files:
        keys = _FOLDER_KEY.findall(path)
        found = keys if found is None else [k for k in found if k in keys]
    return found or []


def read_parquet(spark: Any, path: str) -> DataFrame:
    """The Parquet dataset at ``path`` (a file, folder or glob), with its partition columns.

    Partition folders that a glob or a partition's own folder hides from Spark (and that are
    not data columns of the files) are read from ``partition_base(path)`` on.

    Raises:
        InvalidInputError: Nothing readable there (no such path, no Parquet files), said in one line.
    """
    frame = _read(spark.read, path)
    base = partition_base(path)
    if base is not None and any(key not in frame.columns for key in folder_keys(input_files(frame))):
        frame = _read(spark.read.option("basePath", base), path)
    return frame


def _read(reader: Any, path: str) -> DataFrame:
    try:
        frame = reader.parquet(path)
        _ = frame.schema  # Spark Connect analyses lazily: a missing path fails here
    except AnalysisException as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"cannot read Parquet at {path!r}: {reason}") from exc
    return frame


def check_output(spark: Any, output: str, mode: str, inputs: Mapping[str, DataFrame]) -> None:
    """Refuse, before any work, an output that would clobber an input or fail at the end.

    Args:
        spark: The session.
        output: Where the job writes.
        mode: Its save mode.
        inputs: Each input as given (a path or glob) and as read.

    Raises:
        InvalidInputError: ``output`` holds a file read, or is inside a folder read (an
            overwrite would delete what is read, a write add to it); or it exists and ``mode``
            is ``errorifexists`` (classic Spark: a Spark Connect client cannot look).
    """
    target = _qualified(spark, output)
    for given, frame in inputs.items():
        folder = _folder(given)
        root = _qualified(spark, folder) if folder is not None else None
        nested = root is not None and (_within(target, root) or _within(root, target))
        if nested or any(_within(file, target) for file in input_files(frame)):
            raise InvalidInputError(
                f"the output {output!r} holds or is inside the input {given!r}: writing there would "
                "change (with --mode overwrite, delete) what is read; choose another"
            )
    fs = _file_system(spark, output)
    if mode == "errorifexists" and fs is not None and fs.exists(output):
        raise InvalidInputError(
            f"the output {output!r} exists: choose another, or give --mode overwrite or append"
        )


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(f"{folder}/")


def _canonical(path: str) -> str:
    """A path as Hadoop qualifies local ones (``file:/a/b``), without a trailing slash."""
    path = path.rstrip("/")
    return f"file:/{path[5:].lstrip('/')}" if path.startswith("file:") else path


def _qualified(spark: Any, path: str) -> str:
    """``path`` in full (scheme, absolute path), by its own file system where the session has one."""
    fs = _file_system(spark, path)
    if fs is not None:
        try:
            return _canonical(fs.qualified(path))
        except (Py4JJavaError, IllegalArgumentException):  # a path Hadoop cannot place: as given
            return _canonical(path)
    return _canonical(path if _SCHEME.match(path) else f"file:{os.path.abspath(path)}")


def _file_system(spark: Any, path: str) -> LakeFs | None:
    """The file system of ``path``; None on Spark Connect, or where this driver cannot reach it.

    Spark's own read or write then says why.
    """
    try:
        return LakeFs.of(spark, path)
    except (Py4JJavaError, IllegalArgumentException):
        return None
