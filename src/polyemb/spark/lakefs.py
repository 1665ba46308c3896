"""A store's files as Spark's driver sees them: Hadoop's FileSystem, through the session's JVM.

Classic Spark only: a Spark Connect client has no JVM, so it can read a store's data files (as
DataFrames) but cannot list hidden files, read ``_model.json``, rename or delete. The paths are
strings, as Spark writes them (``s3a://...``, ``hdfs://...``, ``file:/...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polyemb.spark.delivery import is_connect

__all__ = ["Entry", "LakeFs"]


@dataclass(frozen=True)
class Entry:
    """One file or folder."""

    path: str
    name: str
    is_dir: bool
    size: int
    modified: float  # seconds since the epoch


class LakeFs:
    """The Hadoop FileSystem of a path, on a classic session's driver."""

    def __init__(self, spark: Any, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._path_class = jvm.org.apache.hadoop.fs.Path
        self._fs = self._path_class(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        # Hadoop's local file system hides its .crc files; the raw one shows every file on disk,
        # as Python's stats count them. Renames and deletes go through the checksummed one, which
        # moves and removes a file's .crc with it.
        raw = getattr(self._fs, "getRawFileSystem", None)
        self._raw = raw() if callable(raw) and "Local" in self._fs.getClass().getName() else self._fs

    @classmethod
    def of(cls, spark: Any, path: str) -> LakeFs | None:
        """The file system of ``path``, or None on a Spark Connect session (which has none)."""
        return None if is_connect(spark) else cls(spark, path)

    def _p(self, path: str) -> Any:
        return self._path_class(path)

    def list(self, path: str, *, raw: bool = False) -> list[Entry]:
        """The entries of a folder (every one, hidden ones too); ``[]`` where it does not exist."""
        fs = self._raw if raw else self._fs
        if not fs.exists(self._p(path)):
            return []
        return [
            Entry(
                path=str(status.getPath().toString()),
                name=str(status.getPath().getName()),
                is_dir=bool(status.isDirectory()),
                size=int(status.getLen()),
                modified=int(status.getModificationTime()) / 1000,
            )
            for status in fs.listStatus(self._p(path))
        ]

    def qualified(self, path: str) -> str:
        """``path`` in full, as its file system names it (scheme and absolute path, no trailing /)."""
        return str(self._fs.makeQualified(self._p(path)).toString()).rstrip("/")

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return bool(self._fs.exists(self._p(path)))

    def read_text(self, path: str) -> str | None:
        """A small file's text; None where it does not exist."""
        if not self._fs.exists(self._p(path)):
            return None
        size = int(self._fs.getFileStatus(self._p(path)).getLen())
        stream = self._fs.open(self._p(path))
        try:
            data = bytes(stream.readNBytes(size))  # a marker or a description: a few hundred bytes
        finally:
            stream.close()
        return data.decode("utf-8", errors="replace")

    def tree_bytes(self, path: str) -> int:
        """Bytes of every file under ``path`` (0 where it does not exist)."""
        if not self._raw.exists(self._p(path)):
            return 0
        return int(self._raw.getContentSummary(self._p(path)).getLength())

    def mkdirs(self, path: str) -> None:
        """Create a folder and its parents."""
        self._fs.mkdirs(self._p(path))

    def rename(self, source: str, target: str) -> bool:
        """Move ``source`` to ``target`` (which must not exist); False if it could not."""
        return bool(self._fs.rename(self._p(source), self._p(target)))

    def delete(self, path: str, *, recursive: bool = False) -> bool:
        """Remove a file (or a folder with ``recursive``); False if it was not there."""
        return bool(self._fs.delete(self._p(path), recursive))
