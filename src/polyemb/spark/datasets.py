"""Parquet datasets on a lake as the jobs in ``udfs/spark`` read and write them.

A job's session reads partition values as their folders name them (``hour=05`` stays ``"05"``,
``zip=01234`` a text; Spark would infer the numbers 5 and 1234 and write ``hour=5``). A dataset
is read with the partition columns its ``key=value`` folders name, also when the path is a glob
or one partition's folder (Spark's ``basePath``, which Spark leaves unset then). An output is
checked before any work: never the input, inside it or around it (an overwrite would delete
what is being read), and, unless appended to or overwritten, not there yet.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from polyemb.errors import InvalidInputError
from polyemb.spark.lakefs import LakeFs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import DataFrame

__all__ = ["PARTITION_TYPES", "check_output", "job_session", "partition_base", "read_parquet"]

PARTITION_TYPES = "spark.sql.sources.partitionColumnTypeInference.enabled"

# Hadoop's glob characters; a folder named key=value is a partition's.
_GLOB = re.compile(r"[*?\[\]{}]")
_PARTITION = re.compile(r"[^=]+=[^=]*")


def job_session(name: str) -> SparkSession:
    """The job's session (the active one, or a new one named ``name``), partition values as written."""
    spark = SparkSession.builder.appName(name).getOrCreate()
    spark.conf.set(PARTITION_TYPES, "false")
    return spark


def _parts(path: str) -> list[str]:
    return path.rstrip("/").split("/")


def _fixed(path: str) -> str:
    """The folder above the first glob in ``path`` (``path`` itself without one)."""
    parts = _parts(path)
    cut = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
    return "/".join(parts[:cut])


def partition_base(path: str) -> str | None:
    """Where partition discovery starts for ``path``: above its globs and its own partition folders.

    None where that is ``path`` itself (Spark's default then finds every partition column).

    Example:
        >>> partition_base("s3a://lake/articles/year=2023/*/*.parquet")
        's3a://lake/articles'
    """
    parts = _parts(_fixed(path))
    while parts and _PARTITION.fullmatch(parts[-1]):
        parts.pop()
    base = "/".join(parts)
    return base if base and base != path.rstrip("/") and not base.endswith(":") else None


def read_parquet(spark: Any, path: str) -> DataFrame:
    """The Parquet dataset at ``path`` (a file, folder or glob), with its partition columns.

    Raises:
        InvalidInputError: Nothing readable there (no such path, no Parquet files), said in one line.
    """
    reader = spark.read
    base = partition_base(path)
    if base is not None:
        reader = reader.option("basePath", base)
    try:
        return reader.parquet(path)
    except AnalysisException as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"cannot read Parquet at {path!r}: {reason}") from exc


def check_output(spark: Any, output: str, mode: str, inputs: Sequence[str]) -> None:
    """Refuse, before any work, an output that would clobber an input or fail at the end.

    Raises:
        InvalidInputError: ``output`` is an input, inside one or holds one; or it exists and
            ``mode`` is ``errorifexists`` (classic Spark: a Spark Connect client cannot look).
    """
    fs = LakeFs.of(spark, output)
    where = (lambda p: fs.qualified(p)) if fs is not None else (lambda p: p.rstrip("/"))
    target = where(output)
    for given in inputs:
        source = where(_fixed(given) or given)
        if target == source or target.startswith(f"{source}/") or source.startswith(f"{target}/"):
            raise InvalidInputError(
                f"the output {output!r} is the input {given!r}, inside it or around it: writing "
                "there would change (with --mode overwrite, delete) what is read; choose another"
            )
    if mode == "errorifexists" and fs is not None and fs.exists(output):
        raise InvalidInputError(
            f"the output {output!r} exists: choose another, or give --mode overwrite or append"
        )
