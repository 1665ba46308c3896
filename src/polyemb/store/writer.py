"""Writing store files: each appears whole, never replaces another, and is on disk when it counts.

A file is written under a hidden temporary name, synced (``fsync``), then given its name by a
hard link, which fails if the name is taken (a plain rename would silently replace it), and the
folder is synced so that the name itself survives a power loss. A writer killed mid-file leaves
at most a hidden ``.tmp`` beside the files it finished; readers never list hidden files, and
compaction removes stale ones.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

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
    "is_stale_temporary",
    "make_dirs",
    "remove_leftovers",
    "sorted_table",
    "sync_folder",
    "write_table",
    "write_text",
]

WriteErrors = Literal["raise", "warn"]
_T = TypeVar("_T")

PARQUET_OPTIONS: dict[str, Any] = {
    "row_group_size": ROW_GROUP_ROWS,
    "compression": {HASH_COLUMN: "zstd", VECTOR_COLUMN: "none"},  # random floats do not compress
    "use_dictionary": False,
    # A CRC per page: readers verify it, so a flipped bit in a vector is a bad file, not a wrong vector.
    "write_page_checksum": True,
}
# Hidden temporary files older than this are a killed writer's: compact and gc remove them.
STALE_SECONDS = 3_600
_TEMPORARY_SUFFIX = ".tmp"
# What link() says where a file system has no hard links (FAT, some FUSE and SMB mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}


def _atomically(target: Path, write: Callable[[Path], _T]) -> _T:
    """``write`` a hidden temporary file beside ``target``, sync it, then publish it: all or nothing.

    Returns:
        What ``write`` returned.

    Raises:
        FileExistsError: ``target`` exists (it is left as it is).
    """
    make_dirs(target.parent)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{_TEMPORARY_SUFFIX}")
    try:
        result = write(temporary)
        _sync_file(temporary)
        _publish(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    sync_folder(target.parent)
    return result


def _publish(temporary: Path, target: Path) -> None:
    """Give ``temporary``'s content the name ``target``, never replacing a file of that name."""
    try:
        os.link(temporary, target)
        return
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
            raise
    # No hard links here: claim the name with a file only one writer can create (O_EXCL), then
    # rename. Every polyemb writer claims first, so none renames onto a name another publishes.
    claim = target.with_name(f".{target.name}.claim{_TEMPORARY_SUFFIX}")
    os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    try:
        if target.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(temporary, target)
    finally:
        claim.unlink(missing_ok=True)


def _sync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` (files published, removed) durable: ``fsync`` of the folder.

    A no-op where folders cannot be opened (Windows), whose file systems order this themselves.
    """
    if os.name != "posix":
        return
    _sync_file(folder)


def make_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, syncing each parent that gained one."""
    missing = []
    at = folder
    while not at.is_dir():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # another writer made it meanwhile
            continue
        sync_folder(path.parent)


def write_table(table: pa.Table, target: Path) -> pq.FileMetaData:
    """Write a store file atomically, with the store's Parquet options.

    Returns:
        The file's Parquet metadata (its row groups as written), read before it was published:
        once published, a compaction may remove it at any moment.

    Raises:
        FileExistsError: ``target`` exists (it is never replaced).
    """

    def write(path: Path) -> pq.FileMetaData:
        pq.write_table(table, path, **PARQUET_OPTIONS)
        return pq.read_metadata(path)

    return _atomically(target, write)


def write_text(target: Path, text: str, *, exist_ok: bool = False) -> None:
    """Write a small text file (a marker, a model description) atomically.

    Args:
        target: The file.
        text: Its content.
        exist_ok: If ``target`` exists, leave it and return (another writer wrote the same thing).

    Raises:
        FileExistsError: ``target`` exists and ``exist_ok`` is False.
    """
    try:
        _atomically(target, lambda path: path.write_text(text, encoding="utf-8"))
    except FileExistsError:
        if not exist_ok:
            raise


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
                "Open it with on_write_error='warn' (on the command line: --store-on-write-error warn) "
                "to use it read-only (new vectors are computed but not stored), or give a writable folder"
            )
            if self.on_write_error == "raise":
                raise StoreError(message) from exc
            with self._lock:
                first, self.failed = not self.failed, True
            if first:
                warnings.warn(message + "; writes are skipped from now on", RuntimeWarning, stacklevel=4)
            return False


def is_stale_temporary(name: str, age_seconds: float) -> bool:
    """Whether a file so named and so old is a killed writer's leftover (a hidden ``.tmp``, an hour old)."""
    return name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX) and age_seconds > STALE_SECONDS


def remove_leftovers(root: Path) -> int:
    """Remove stale (an hour old) hidden temporary files and empty run folders; return the files removed."""
    removed = 0
    now = time.time()
    for folder, _, names in os.walk(root):  # skips a folder removed while it is walked
        for name in names:
            path = Path(folder, name)
            try:
                if is_stale_temporary(name, now - path.stat().st_mtime):
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
