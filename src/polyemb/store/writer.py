"""Writing store files: each appears whole, by an atomic rename, or not at all.

A writer killed mid-file leaves at most a hidden ``.tmp`` beside the files it finished; readers
never list hidden files, and compaction removes stale ones.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.embedder import VectorSpec
from polyemb.errors import StoreError
from polyemb.store.layout import (
    HASH_COLUMN,
    ROW_GROUP_ROWS,
    VECTOR_COLUMN,
    description,
    run_folders,
    store_schema,
)

__all__ = [
    "PARQUET_OPTIONS",
    "STALE_SECONDS",
    "WriteErrors",
    "WriteGuard",
    "remove_leftovers",
    "sorted_table",
    "write_table",
    "write_text",
]

WriteErrors = Literal["raise", "warn"]

PARQUET_OPTIONS: dict[str, Any] = {
    "row_group_size": ROW_GROUP_ROWS,
    "compression": {HASH_COLUMN: "zstd", VECTOR_COLUMN: "none"},  # random floats do not compress
    "use_dictionary": False,
}
# Hidden temporary files older than this are a killed writer's: compact and gc remove them.
STALE_SECONDS = 3_600
_TEMPORARY_SUFFIX = ".tmp"


def _atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a hidden temporary file beside ``target``, then rename it into place: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{_TEMPORARY_SUFFIX}")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_table(table: pa.Table, target: Path) -> None:
    """Write a store file atomically, with the store's Parquet options."""
    _atomically(target, lambda path: pq.write_table(table, path, **PARQUET_OPTIONS))


def write_text(target: Path, text: str) -> None:
    """Write a small text file (a marker, a model description) atomically."""
    _atomically(target, lambda path: path.write_text(text, encoding="utf-8"))


def sorted_table(
    spec: VectorSpec, hashes: Sequence[str], vectors: np.ndarray, hi: np.ndarray, lo: np.ndarray
) -> tuple[pa.Table, np.ndarray]:
    """A new store file's rows, sorted by hash (``hi``, ``lo``: the hashes' words), and the order taken."""
    order = np.lexsort((lo, hi))
    table = pa.table(
        {
            HASH_COLUMN: pa.array([hashes[i] for i in order], pa.string()),
            VECTOR_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors[order].reshape(-1)), spec.dim),
        }
    )
    return table.cast(store_schema(spec.dim, description(spec))), order


class WriteGuard:
    """Runs a store's writes: an OS error raises a clear StoreError, or warns once and stops writing."""

    def __init__(self, path: Path, on_write_error: WriteErrors) -> None:
        self.path = path
        self.on_write_error: WriteErrors = on_write_error
        self.failed = False
        self._lock = threading.Lock()

    def run(self, write: Callable[[], object]) -> bool:
        """Run ``write``; True if it wrote, False if it failed and writes are skipped from now on.

        Raises:
            StoreError: It failed and ``on_write_error`` is ``"raise"``.
        """
        try:
            write()
            return True
        except OSError as exc:
            message = (
                f"cannot write to the vector store at {self.path} ({type(exc).__name__}: {exc}). "
                "Open it with on_write_error='warn' to use it read-only (new vectors are computed "
                "but not stored), or give a writable folder"
            )
            if self.on_write_error == "raise":
                raise StoreError(message) from exc
            with self._lock:
                first, self.failed = not self.failed, True
            if first:
                warnings.warn(message + "; writes are skipped from now on", RuntimeWarning, stacklevel=4)
            return False


def remove_leftovers(root: Path) -> int:
    """Remove stale (an hour old) hidden temporary files and empty run folders; return the files removed."""
    removed = 0
    now = time.time()
    for path in root.rglob(f".*{_TEMPORARY_SUFFIX}"):
        try:
            if now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
                removed += 1
        except OSError:
            continue
    for run in run_folders(root):
        try:
            if now - run.stat().st_mtime > STALE_SECONDS:
                run.rmdir()  # only if empty; a fresh one may belong to a writer about to write
        except OSError:
            continue
    return removed
