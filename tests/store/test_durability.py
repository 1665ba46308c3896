"""Publishing: a file appears whole, is never replaced, and is on disk (fsync) before it counts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyemb.embedder import VectorSpec
from polyemb.store import open_store, text_hashes, writer

SPEC = VectorSpec("durability-test", "sha256:0", 4, 16, "fp32", True)


def _table(values: list[int]) -> pa.Table:
    return pa.table({"n": pa.array(values, pa.int64())})


def test_publishing_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "run=a" / "part-00001.parquet"
    writer.write_table(_table([1]), target)
    with pytest.raises(FileExistsError):
        writer.write_table(_table([2]), target)
    assert pq.read_table(target).column("n").to_pylist() == [1]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_without_hard_links_publishing_still_never_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:  # FAT, some FUSE and SMB mounts
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "run=a" / "part-00001.parquet"
    writer.write_table(_table([1]), target)
    with pytest.raises(FileExistsError):
        writer.write_table(_table([2]), target)
    assert pq.read_table(target).column("n").to_pylist() == [1]
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_a_replaced_file_never_gives_another_texts_vector(tmp_path: Path) -> None:
    # polyemb never replaces a file, but anything else may (a copy tool, a restore from backup):
    # a reader that indexed the old file must not read the new file's rows by the old positions.
    store = open_store(tmp_path / "store")
    path = store.append(SPEC, text_hashes(["alpha", "beta"]), np.array([[1] * 4, [2] * 4], np.float32))
    assert path is not None
    reader = open_store(tmp_path / "store", read_only=True)
    assert reader.lookup(SPEC, text_hashes(["alpha"]))[1].all()  # indexed
    other = open_store(tmp_path / "other")
    foreign = other.append(SPEC, text_hashes(["gamma", "delta"]), np.array([[3] * 4, [4] * 4], np.float32))
    assert foreign is not None
    reader._cache.forget()  # as if its cached row groups were evicted meanwhile
    os.replace(foreign, path)
    vectors, found = reader.lookup(SPEC, text_hashes(["alpha", "beta", "gamma"]))
    assert found.tolist() == [False, False, True]
    np.testing.assert_array_equal(vectors[2], [3] * 4)


def _recorder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsyncs, links, renames and unlinks in order, by path."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace, real_rename = os.fsync, os.link, os.replace, os.rename
    real_unlink = Path.unlink

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(source: str, target: str, **kwargs: object) -> None:
        events.append(("publish", os.fspath(target)))
        real_link(source, target, **kwargs)  # type: ignore[arg-type]

    def replace(source: str, target: str) -> None:
        events.append(("publish", os.fspath(target)))
        real_replace(source, target)

    def rename(source: str, target: str) -> None:
        events.append(("publish", os.fspath(target)))
        real_rename(source, target)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        events.append(("unlink", str(self)))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(Path, "unlink", unlink)
    return events


def test_a_published_file_and_its_folder_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path / "store")
    events = _recorder(monkeypatch)
    path = store.append(SPEC, text_hashes(["alpha"]), np.ones((1, 4), np.float32))
    assert path is not None
    published = events.index(("publish", str(path)))
    synced = [name for kind, name in events if kind == "fsync"]
    # The file's bytes reach the disk before its name appears, and the name after.
    before = [name for kind, name in events[:published] if kind == "fsync"]
    after = [name for kind, name in events[published:] if kind == "fsync"]
    assert any(Path(name).name.startswith(f".{path.name}") for name in before), before
    assert str(path.parent) in after, after
    # The new run folder and model folder are recorded in their parents too.
    assert {str(path.parent.parent), str(path.parent.parent.parent)} <= set(synced), synced


def test_compact_syncs_its_merged_files_before_removing_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "store")
    inputs = []
    for i in range(3):
        path = store.append(SPEC, text_hashes([f"text {i}"]), np.full((1, 4), i, np.float32))
        assert path is not None
        inputs.append(path)
    events = _recorder(monkeypatch)
    store.compact()
    first_removal = min(events.index(("unlink", str(path))) for path in inputs)
    [merged] = [Path(name) for kind, name in events if kind == "publish" and "compact-" in name]
    synced = [name for kind, name in events[:first_removal] if kind == "fsync"]
    assert str(merged.parent) in synced and any(f".{merged.name}" in name for name in synced), synced
