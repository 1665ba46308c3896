"""Store maintenance: stats, compaction and garbage collection, with their reports.

:class:`~polyemb.store.VectorStore` runs these through its ``stats()``, ``compact()`` and ``gc()``
methods, which also check that the store is writable and drop the index they invalidate. The
decisions (what counts, which files are small, which models gc keeps, when to advise compacting)
are made here once; :mod:`polyemb.spark.maintenance` makes the same ones for stores on a lake.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.errors import InvalidInputError, StoreError
from polyemb.store import writer
from polyemb.store.index import FileIndex, check_store_table, group_starts, open_parquet, stored_vectors
from polyemb.store.layout import (
    HASH_COLUMN,
    ROW_GROUP_ROWS,
    VECTOR_COLUMN,
    data_files,
    model_descriptions,
    model_dir,
    part_name,
    quarantine_dir,
    run_dir,
    run_id,
    store_schema,
)
from polyemb.store.quarantine import BadFiles, is_bad_content

__all__ = [
    "COMPACT_ADVICE_FILES",
    "COMPACT_TARGET_MB",
    "CompactReport",
    "GcReport",
    "ModelStats",
    "StoreStats",
    "compact",
    "gc",
    "model_stats",
    "plan_gc",
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
            if m.quarantined or m.unlisted_folders:
                lines.append(
                    f"  {m.quarantined} files set aside in _quarantine/; {m.unlisted_folders} run folders "
                    "could not be listed"
                )
            if m.advice:
                lines.append(f"  compact advised: {m.advice} (polyemb store compact)")
        if not self.models:
            lines.append("(no vectors yet)")
        return "\n".join(lines)


@dataclass(frozen=True)
class CompactReport:
    """What :meth:`VectorStore.compact` did."""

    files_before: int
    files_after: int
    entries: int  # rows kept in the merged files
    duplicates_dropped: int
    temporary_removed: int
    quarantined: int = 0  # bad files set aside


@dataclass(frozen=True)
class GcReport:
    """What :meth:`VectorStore.gc` did."""

    kept: list[str]  # model keys
    dropped: list[str]
    bytes_freed: int


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover


# --------------------------------------------------------------------------- stats


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
    )


def stats(root: Path, *, target_mb: float = COMPACT_TARGET_MB) -> StoreStats:
    """Entries, distinct texts, files and sizes per model of the store at ``root``; moves nothing.

    Reads every data file's footer and hashes: a file that fails there counts as bad (its vectors
    are checked when read, and by ``compact``).
    """
    models = []
    for key, description in model_descriptions(root):
        folder = model_dir(root, key)
        unlisted: list[tuple[Path, OSError]] = []
        files: list[FileIndex] = []
        sizes: list[int] = []
        bad = 0
        for path in data_files(folder, unlisted):
            try:
                size = path.stat().st_size
                files.append(FileIndex.read(path))
            except FileNotFoundError:  # compacted away meanwhile
                continue
            except (StoreError, pa.ArrowException, OSError):
                bad += 1
            sizes.append(size)
        models.append(
            model_stats(
                key,
                description,
                rows=[int(file.group_starts[-1]) for file in files],
                sizes=sizes,
                distinct=len(_first_of_each(files)),
                bad_files=bad,
                quarantined=_count_entries(quarantine_dir(folder)),
                unlisted_folders=len(unlisted),
                folder_bytes=_tree_bytes(folder),
                target_mb=target_mb,
            )
        )
    return StoreStats(root, models, _tree_bytes(root))


def _count_entries(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.iterdir())
    except OSError:
        return 0


def _first_of_each(files: list[FileIndex]) -> np.ndarray:
    """Positions (in the files' sorted hashes, one after the other) of each distinct hash's first entry."""
    if not files:
        return np.zeros(0, dtype=np.int64)
    words = np.stack([np.concatenate([f.hi for f in files]), np.concatenate([f.lo for f in files])], 1)
    _, first = np.unique(words, axis=0, return_index=True)
    return first


# --------------------------------------------------------------------------- compaction


@dataclass
class _Counts:
    before: int = 0
    after: int = 0
    kept: int = 0
    dropped: int = 0
    quarantined: int = 0


class _Vanished(Exception):
    """An input vanished: another compaction (or gc) took it. This model is left for the next run."""


def compact(
    root: Path, *, target_mb: float = COMPACT_TARGET_MB, bad_files: BadFiles | None = None
) -> CompactReport:
    """Merge each model's small files into files of about ``target_mb`` of vectors; set bad files aside.

    See :meth:`VectorStore.compact`, which calls it on a writable store.
    """
    bad_files = bad_files if bad_files is not None else BadFiles(move=True)
    counts = _Counts()
    for key, description in model_descriptions(root):
        folder = model_dir(root, key)
        try:
            _compact_model(folder, description, target_mb, counts, bad_files)
        except _Vanished:
            counts.after += len(data_files(folder))
    removed = writer.remove_leftovers(root)
    return CompactReport(
        counts.before, counts.after, counts.kept, counts.dropped, removed, counts.quarantined
    )


def _compact_model(
    folder: Path, description: dict[str, Any], target_mb: float, counts: _Counts, bad_files: BadFiles
) -> None:
    unlisted: list[tuple[Path, OSError]] = []
    paths = sorted(data_files(folder, unlisted), key=str)  # the first copy by path is kept, as Spark keeps it
    for run, exc in unlisted:
        bad_files.unreachable(run, exc)
    counts.before += len(paths)
    dim = description.get("dim")
    rows: dict[Path, int] = {}
    for path in paths:
        footer = _guarded(path, lambda p: open_parquet(p).metadata, bad_files, counts)
        if footer is None:
            continue
        rows[path] = footer.num_rows
        if not isinstance(dim, int) and footer.num_rows:
            dim = _guarded(path, _file_dim, bad_files, counts)
            if dim is None:
                del rows[path]
    limit = target_rows(dim if isinstance(dim, int) else 1, target_mb)
    small = {path: n for path, n in rows.items() if n < limit}
    indexes = [
        index
        for index in (_guarded(path, lambda p: _checked_index(p, dim), bad_files, counts) for path in small)
        if index is not None
    ]
    if len(indexes) < 2 or not isinstance(dim, int):
        counts.after += len(rows) - len(small) + len(indexes)
        return
    run = run_dir(folder, f"compact-{run_id()}")
    merged = [index.path for index in indexes]
    written, kept, dropped = _merge(indexes, run, store_schema(dim, description), limit, bad_files, counts)
    # The merged files are on disk (synced) before the small ones go: a reader never misses a text.
    for path in merged:
        path.unlink(missing_ok=True)
    counts.kept += kept
    counts.dropped += dropped
    counts.after += len(rows) - len(small) + written


def _guarded(path: Path, read: Any, bad_files: BadFiles, counts: _Counts) -> Any:
    """``read(path)``; None where the file is bad (set aside) or unreachable (skipped).

    Raises:
        _Vanished: The file is gone: another compaction merged it.
    """
    try:
        return read(path)
    except FileNotFoundError as exc:
        raise _Vanished(str(path)) from exc
    except (StoreError, pa.ArrowException, OSError) as exc:
        if is_bad_content(exc):
            counts.quarantined += int(bad_files.bad(path, exc))
        else:
            bad_files.unreachable(path, exc)
        return None


def _file_dim(path: Path) -> int:
    parquet = open_parquet(path)
    column = parquet.read_row_group(0, columns=[VECTOR_COLUMN]).column(0)
    return int(stored_vectors(column, path).shape[1])


def _checked_index(path: Path, dim: int | None) -> FileIndex:
    """A file read whole and checked (every hash and vector), indexed by its hashes."""
    parquet = open_parquet(path)
    hi, lo, _ = check_store_table(parquet.read(columns=[HASH_COLUMN, VECTOR_COLUMN]), path, dim)
    return FileIndex.from_words(path, hi, lo, group_starts(parquet.metadata))


def _merge(
    files: list[FileIndex],
    run: Path,
    schema: pa.Schema,
    target: int,
    bad_files: BadFiles,
    counts: _Counts,
) -> tuple[int, int, int]:
    """Copy ``files`` (checked) into files of about ``target`` rows in ``run``, each hash once.

    Holds one output file's rows at a time. Returns ``(files written, rows kept, duplicates dropped)``.

    Raises:
        _Vanished: An input vanished, or turned bad, since it was checked: no input may be removed.
    """
    keep_all = np.zeros(sum(len(f.hi) for f in files), dtype=bool)
    keep_all[_first_of_each(files)] = True
    pending: list[pa.Table] = []
    written = kept = offset = 0

    def flush() -> None:
        nonlocal written
        if pending:
            writer.write_table(pa.concat_tables(pending), run / part_name(written))
            written += 1
            pending.clear()

    for file in files:
        rows = np.sort(file.rows[keep_all[offset : offset + len(file.hi)]])
        offset += len(file.hi)
        if len(rows):
            table = _guarded(file.path, lambda p: open_parquet(p).read(), bad_files, counts)
            if table is None:  # corrupted since it was checked: keep every input
                raise _Vanished(str(file.path))
            pending.append(_as_store_table(table.take(pa.array(rows)), schema, file.path))
            kept += len(rows)
        if sum(t.num_rows for t in pending) >= target:
            flush()
    flush()
    return written, kept, len(keep_all) - kept


def _as_store_table(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """A store file's rows in the store schema (Spark writes vectors as variable lists)."""
    dim = schema.field(VECTOR_COLUMN).type.list_size
    _, _, matrix = check_store_table(table, source, dim)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    return pa.Table.from_arrays([table.column(HASH_COLUMN).cast(pa.string()), vectors], schema=schema)


# --------------------------------------------------------------------------- garbage collection


def gc(root: Path, keep: Sequence[str]) -> GcReport:
    """Drop the vectors of every model but ``keep``; see :meth:`VectorStore.gc`.

    Raises:
        InvalidInputError: ``keep`` is empty, or names a model the store does not hold.
    """
    kept, dropped = plan_gc(model_descriptions(root), keep, str(root))
    freed = 0
    for key in dropped:
        folder = model_dir(root, key)
        freed += _tree_bytes(folder)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:  # another gc dropped it meanwhile
            continue
    writer.remove_leftovers(root)
    return GcReport(kept, dropped, freed)


def plan_gc(
    models: Sequence[tuple[str, dict[str, Any]]], keep: Sequence[str], where: str
) -> tuple[list[str], list[str]]:
    """Which model keys gc keeps and which it drops: ``(kept, dropped)``.

    ``keep`` holds provenances (``id@fingerprint``), bare fingerprints or model keys. A model
    whose description names neither provenance nor fingerprint cannot be matched, so it is kept.

    Raises:
        InvalidInputError: ``keep`` is empty, or an item names no model (a typo would drop the model meant).
    """
    if not keep:
        raise InvalidInputError("gc needs at least one model to keep (a provenance or a model key)")
    wanted = {item.strip() for item in keep}
    matches: dict[str, set[str]] = {}
    for key, description in models:
        provenance = str(description.get("provenance", ""))
        fingerprint = str(description.get("fingerprint", provenance.rsplit("@", 1)[-1]))
        matches[key] = {
            item for item in wanted if item == key or (fingerprint and item.rsplit("@", 1)[-1] == fingerprint)
        }
    unmatched = wanted.difference(*matches.values())
    if unmatched:
        present = [f"{key} ({description.get('provenance', 'unknown')})" for key, description in models]
        raise InvalidInputError(
            f"nothing dropped: {sorted(unmatched)} match(es) no model in {where}, so gc could "
            f"drop a model you meant to keep. The store holds: {present or 'no models'}"
        )
    kept: list[str] = []
    dropped: list[str] = []
    for key, description in models:
        identified = bool(description.get("provenance") or description.get("fingerprint"))
        (kept if matches[key] or not identified else dropped).append(key)
    return kept, dropped


# --------------------------------------------------------------------------- files


def _tree_bytes(root: Path) -> int:
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
