"""Store stats: entries, distinct texts, files and sizes per model, and when to compact.

The one definition of what counts: :meth:`VectorStore.stats <polyemb.store.VectorStore.stats>`
reads a local store with :func:`stats`, and :func:`polyemb.spark.store_stats` reads a lake store
and builds the same :class:`ModelStats` with :func:`model_stats`. Compaction
(:mod:`polyemb.store.maintenance`) takes its target size from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.errors import StoreError
from polyemb.store.index import FileIndex
from polyemb.store.layout import (
    ROW_GROUP_ROWS,
    data_files,
    model_descriptions,
    model_dir,
    quarantine_dir,
)
from polyemb.store.quarantine import is_bad_content

__all__ = [
    "COMPACT_ADVICE_FILES",
    "COMPACT_TARGET_MB",
    "ModelStats",
    "StoreStats",
    "model_stats",
    "stats",
    "target_rows",
]

# A compacted file holds at most this many bytes of vectors.
COMPACT_TARGET_MB = 256.0
# Stats advise compacting a model from this many files under the target size: every file costs
# each new reader a listing, an open and an index read.
COMPACT_ADVICE_FILES = 16
# ... or once duplicate entries are this share of a model's entries.
_ADVICE_DUPLICATES = 0.1


def target_rows(dim: int, target_mb: float = COMPACT_TARGET_MB) -> int:
    """Rows of ``dim`` float32s in a compacted file of about ``target_mb`` (at least one row group)."""
    return max(ROW_GROUP_ROWS, int(target_mb * 2**20 // (max(dim, 1) * 4)))


@dataclass(frozen=True)
class ModelStats:
    """One model key of a store.

    Attributes:
        key: The model key.
        provenance: ``model_id@fingerprint``, or ``"unknown"``.
        dim: Length of its vectors, where its description says.
        entries: Rows in its readable files (a text written twice counted twice).
        distinct: Distinct texts in them.
        files: Its data files, bad ones included.
        bytes: Everything under its folder on disk (data, temporary and quarantined files).
        data_bytes: Its data files' bytes.
        small_files: Readable data files under the compaction target (what ``compact`` merges).
        bad_files: Data files that cannot be read as store files (``compact`` sets them aside).
        quarantined: Files already set aside in its ``_quarantine/`` folder.
        unlisted_folders: Run folders that could not be listed (permissions): not counted above.
        unreadable_files: Data files that could not be opened (permissions): counted in ``files``,
            not bad (``compact`` leaves them where they are).
    """

    key: str
    provenance: str
    dim: int | None
    entries: int
    distinct: int
    files: int
    bytes: int
    data_bytes: int = 0
    small_files: int = 0
    bad_files: int = 0
    quarantined: int = 0
    unlisted_folders: int = 0
    unreadable_files: int = 0

    @property
    def mean_file_bytes(self) -> float:
        """The mean size of its data files (0 without files)."""
        return self.data_bytes / self.files if self.files else 0.0

    @property
    def advice(self) -> str:
        """Why to run ``compact`` on this model now, or ``""`` where it would gain little."""
        reasons = []
        if self.bad_files:
            reasons.append(f"{self.bad_files} bad files to set aside")
        if self.small_files >= COMPACT_ADVICE_FILES:
            reasons.append(f"{self.small_files} files under the target size to merge")
        duplicates = self.entries - self.distinct
        if self.small_files >= 2 and duplicates > _ADVICE_DUPLICATES * self.entries:
            reasons.append(f"{duplicates:,} duplicate entries to drop")
        return "; ".join(reasons)


@dataclass(frozen=True)
class StoreStats:
    """What :meth:`VectorStore.stats` (or :func:`polyemb.spark.store_stats`) found."""

    path: Path | str
    models: list[ModelStats]
    bytes: int  # every file of the store, temporary ones included

    def format(self) -> str:
        """A readable table (what ``polyemb store stats`` prints), and what to do about it."""
        lines = [
            f"store: {self.path} ({_size(self.bytes)} on disk)",
            f"{'model key':<18}{'entries':>11}{'distinct':>11}{'files':>7}{'mean file':>12}{'size':>12}"
            "  provenance",
        ]
        for m in self.models:
            lines.append(
                f"{m.key:<18}{m.entries:>11,}{m.distinct:>11,}{m.files:>7}{_size(m.mean_file_bytes):>12}"
                f"{_size(m.bytes):>12}  {m.provenance} (dim {m.dim})"
            )
            if m.quarantined or m.unlisted_folders or m.unreadable_files:
                lines.append(
                    f"  {m.quarantined} files set aside in _quarantine/; {m.unlisted_folders} run folders "
                    f"could not be listed; {m.unreadable_files} files could not be opened (permissions)"
                )
            if m.advice:
                lines.append(f"  compact advised: {m.advice} (polyemb store compact)")
        if not self.models:
            lines.append("(no vectors yet)")
        return "\n".join(lines)


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover


def model_stats(
    key: str,
    description: dict[str, Any],
    *,
    rows: Sequence[int],
    sizes: Sequence[int],
    distinct: int,
    bad_files: int,
    quarantined: int,
    unlisted_folders: int,
    folder_bytes: int,
    target_mb: float = COMPACT_TARGET_MB,
    unreadable_files: int = 0,
) -> ModelStats:
    """One model's stats from what was read: the one definition Python's and Spark's stats share.

    Args:
        key: The model key.
        description: Its description (``_model.json`` or a file's metadata).
        rows: The row count of each readable data file.
        sizes: The size of each data file, bad ones included.
        distinct: Distinct hashes in the readable files.
        bad_files: Data files that could not be read as store files.
        quarantined: Files in its quarantine folder.
        unlisted_folders: Run folders that could not be listed.
        folder_bytes: Everything under its folder.
        target_mb: The compaction target (which files are small).
        unreadable_files: Data files that could not be opened (permissions).
    """
    dim = description.get("dim")
    dim = dim if isinstance(dim, int) and not isinstance(dim, bool) else None
    limit = target_rows(dim or 1, target_mb)
    return ModelStats(
        key=key,
        provenance=str(description.get("provenance", "unknown")),
        dim=dim,
        entries=int(sum(rows)),
        distinct=distinct,
        files=len(sizes),
        bytes=folder_bytes,
        data_bytes=int(sum(sizes)),
        small_files=sum(1 for n in rows if n < limit),
        bad_files=bad_files,
        quarantined=quarantined,
        unlisted_folders=unlisted_folders,
        unreadable_files=unreadable_files,
    )


def stats(root: Path, *, target_mb: float = COMPACT_TARGET_MB) -> StoreStats:
    """Entries, distinct texts, files and sizes per model of the store at ``root``; moves nothing.

    Reads every data file's footer and hashes: a file whose content fails there counts as bad
    (its vectors are checked when read, and by ``compact``); one this process may not open
    (permissions) as unreadable, not bad.
    """
    models = []
    for key, description in model_descriptions(root):
        folder = model_dir(root, key)
        unlisted: list[tuple[Path, OSError]] = []
        files: list[FileIndex] = []
        sizes: list[int] = []
        bad = unreadable = 0
        for path in data_files(folder, unlisted):
            try:
                size = path.stat().st_size
                files.append(FileIndex.read(path))
            except FileNotFoundError:  # compacted away meanwhile
                continue
            except (StoreError, pa.ArrowException, OSError) as exc:
                if is_bad_content(exc):
                    bad += 1
                else:
                    unreadable += 1
            sizes.append(size)
        models.append(
            model_stats(
                key,
                description,
                rows=[int(file.group_starts[-1]) for file in files],
                sizes=sizes,
                distinct=len(first_of_each(files)),
                bad_files=bad,
                quarantined=_count_entries(quarantine_dir(folder)),
                unlisted_folders=len(unlisted),
                folder_bytes=tree_bytes(folder),
                target_mb=target_mb,
                unreadable_files=unreadable,
            )
        )
    return StoreStats(root, models, tree_bytes(root))


def _count_entries(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.iterdir())
    except OSError:
        return 0


def first_of_each(files: list[FileIndex]) -> np.ndarray:
    """Positions (in the files' sorted hashes, one after the other) of each distinct hash's first entry."""
    if not files:
        return np.zeros(0, dtype=np.int64)
    words = np.stack([np.concatenate([f.hi for f in files]), np.concatenate([f.lo for f in files])], 1)
    _, first = np.unique(words, axis=0, return_index=True)
    return first


def tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root``; a folder or file that vanishes meanwhile counts as nothing.

    (A Spark job removes its ``_temporary`` folders while it commits: a walk must not fail on them.)
    """
    total = 0
    for folder, _, names in os.walk(root):  # skips a folder it cannot list
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total
