"""Bad files: told apart from files that cannot be reached, reported once, and set aside, never deleted.

A store file is *bad* when its content is wrong: not Parquet, truncated, a page whose checksum
fails, a missing column, a malformed hash, a NULL vector or one of another dimension. Its texts
are then looked up as missing (and embedded again), and a writable store moves the file into its
model's ``_quarantine/`` folder, where no reader looks and from where a person may restore it.
A file that cannot be *reached* (removed meanwhile, permission denied, too many open files) is
not bad: it is skipped this time and left where it is.
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from pathlib import Path

import pyarrow as pa

from polyemb.errors import StoreError
from polyemb.store.layout import quarantine_dir
from polyemb.store.writer import make_dirs, sync_folder

__all__ = ["BAD_SUFFIX", "BadFiles", "is_bad_content", "set_aside"]

# Quarantined files end in this, not ``.parquet``: a glob such as DuckDB's ``*/*/*.parquet`` skips them.
BAD_SUFFIX = ".bad"


def is_bad_content(exc: BaseException) -> bool:
    """Whether an error from reading a store file says its content is bad (not that it is out of reach).

    Operating-system errors carry an ``errno`` (a vanished file, a denied permission); Arrow's
    decoding and checksum errors, and polyemb's own checks (:class:`StoreError`), carry none.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return False
    return isinstance(exc, (StoreError, pa.ArrowException, OSError))


def set_aside(path: Path) -> Path | None:
    """Move a bad file of a model folder into the folder's quarantine; None if it vanished meanwhile.

    The new name keeps the run and file names, so a person can tell where it came from.
    """
    model_folder = path.parent.parent
    folder = quarantine_dir(model_folder)
    make_dirs(folder)
    target = folder / f"{path.parent.name}--{path.name}.{uuid.uuid4().hex[:8]}{BAD_SUFFIX}"
    try:
        os.rename(path, target)  # the name is new (a random part): nothing is replaced
    except FileNotFoundError:  # set aside or compacted by another process meanwhile
        return None
    sync_folder(folder)
    sync_folder(path.parent)
    return target


class BadFiles:
    """Reports bad and unreachable files once each, and sets bad ones aside when allowed.

    Shared by a store's readers, its compaction and its stats. Thread-safe.
    """

    def __init__(self, move: bool) -> None:
        self.move = move
        self.moved: list[Path] = []
        self._told: set[Path] = set()
        self._lock = threading.Lock()

    def bad(self, path: Path, exc: BaseException) -> bool:
        """A file whose content is bad: set it aside (if allowed) and warn once; True if it moved."""
        refused: OSError | None = None
        try:
            target = set_aside(path) if self.move else None
        except OSError as error:  # a store this process may read but not change (another user's)
            target, refused = None, error
        if target is not None:
            with self._lock:
                self.moved.append(target)
            where = f"set aside in {target.parent}"
        elif refused is not None:
            where = f"left where it is (cannot move it: {refused.strerror or refused})"
        elif self.move:
            return False  # someone else set it aside (and said so) or compacted it meanwhile
        else:
            where = "left where it is (the store is read-only; polyemb store compact sets it aside)"
        self._tell(
            path,
            f"skipping {path}: not a readable store file ({type(exc).__name__}: {exc}); {where}; "
            "its texts are embedded again where asked",
        )
        return target is not None

    def unreachable(self, path: Path, exc: BaseException) -> None:
        """A file or folder that cannot be read now (permissions, resources): warn once, move nothing."""
        self._tell(
            path,
            f"cannot list or read {path} ({type(exc).__name__}: {exc}); it is skipped, and the texts "
            "stored there are embedded again where asked",
        )

    def _tell(self, path: Path, message: str) -> None:
        with self._lock:
            if path in self._told:
                return
            self._told.add(path)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
