"""Bad files and unreadable folders: reported, skipped, set aside (never deleted), texts embedded again."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.store import open_store, text_hashes

QUARANTINE = "_quarantine"  # inside each model folder, as docs/store.md says
TEXTS = [f"a text kept in a store {i}" for i in range(40)]


def _files(store: Path) -> list[Path]:
    return sorted(store.glob("model=*/run=*/part-*.parquet"))


def _four_files(encoder: polyemb.Encoder, root: Path) -> list[Path]:
    for start in range(0, 40, 10):  # four writers: a run folder each
        open_store(root).encode(TEXTS[start : start + 10], encoder=encoder)
    return sorted(_files(root), key=lambda path: TEXTS.index(_first_text(path)))


def _first_text(path: Path) -> str:
    stored = set(pq.read_table(path).column("text_hash").to_pylist())
    return next(text for text in TEXTS if text_hashes([text])[0] in stored)


def test_stats_and_compact_skip_and_set_aside_bad_files(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    files[0].write_bytes(b"")  # zero length
    files[1].write_bytes(files[1].read_bytes()[:300])  # truncated: no footer
    stats = open_store(root, read_only=True).stats()
    [model] = stats.models
    assert (model.files, model.bad_files, model.entries, model.distinct) == (4, 2, 20, 20)
    assert "2 bad files" in stats.format() and "compact" in stats.format()
    assert _files(root) == sorted(files)  # stats moves nothing
    with pytest.warns(RuntimeWarning, match="set aside in .*_quarantine"):
        report = open_store(root).compact()
    assert report.quarantined == 2
    quarantined = sorted((root / f"model={model.key}" / QUARANTINE).iterdir())
    assert len(quarantined) == 2 and not any(path.suffix == ".parquet" for path in quarantined)
    assert sorted(path.stat().st_size for path in quarantined) == [0, 300]  # kept as they were
    [model] = open_store(root).stats().models
    assert (model.files, model.bad_files, model.quarantined, model.entries) == (1, 0, 2, 20)
    # The texts of the bad files are embedded again; the rest are found.
    stored = open_store(root).bind(tiny_encoder)
    np.testing.assert_allclose(stored.encode(TEXTS), tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert (stored.stats.found, stored.stats.embedded) == (20, 20)


def test_a_file_this_user_cannot_open_is_unreadable_not_bad(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user's file with a strict mode: nothing is wrong with it, so compact cannot help.
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    import polyemb.store.index as index
    import polyemb.store.maintenance as maintenance

    real = index.open_parquet

    def guarded(source: Any) -> Any:
        if source == files[0]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        return real(source)

    # The suite may run as root, for which chmod denies nothing.
    monkeypatch.setattr(index, "open_parquet", guarded)
    monkeypatch.setattr(maintenance, "open_parquet", guarded)
    [model] = open_store(root).stats().models
    assert (model.files, model.bad_files, model.unreadable_files, model.entries) == (4, 0, 1, 30)
    assert "bad files" not in model.advice
    assert "1 files could not be opened (permissions)" in open_store(root).stats().format()
    with pytest.warns(RuntimeWarning, match="cannot list or read"):
        report = open_store(root).compact()
    # The three others merged into one; the unreadable one is still there, and counted.
    assert (report.files_before, report.files_after, report.quarantined) == (4, 2, 0)
    assert files[0].exists() and len(_files(root)) == 2


def test_a_footer_naming_a_column_in_bytes_that_are_not_utf8_is_a_bad_file(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    # Found by the torture run: random bytes over a footer's column names got past Arrow, whose
    # Python layer then raised UnicodeDecodeError from stats, compact and encode alike.
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    data = bytearray(files[0].read_bytes())
    at = -1
    while (at := data.find(b"text_hash", at + 1)) >= 0:
        data[at + 2] = 0xFD  # "te\xfdt_hash"
    files[0].write_bytes(bytes(data))
    [model] = open_store(root, read_only=True).stats().models
    assert (model.files, model.bad_files, model.entries) == (4, 1, 30)
    stored = open_store(root).bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match="a corrupt footer"):
        vectors = stored.encode(TEXTS)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert (stored.stats.found, stored.stats.embedded) == (30, 10)
    assert open_store(root).compact().quarantined == 0  # set aside by the encode already
    assert len(list((root / f"model={model.key}" / QUARANTINE).iterdir())) == 1


def _rewrite(path: Path, vectors: pa.Array) -> None:
    table = pq.read_table(path)
    pq.write_table(pa.table({"text_hash": table.column("text_hash"), "vector": vectors}), path)


@pytest.mark.parametrize("defect", ["a NULL vector", "another dimension"])
def test_a_bad_row_group_is_set_aside_and_its_texts_embedded_again(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, defect: str
) -> None:
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    if defect == "a NULL vector":
        vectors = pq.read_table(files[2]).column("vector").combine_chunks().to_pylist()
        vectors[3] = None
        _rewrite(files[2], pa.array(vectors, pa.list_(pa.float32())))
    else:
        _rewrite(files[2], pa.array([[0.5] * 7] * 10, pa.list_(pa.float32())))
    stored = open_store(root).bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match=f"skipping {files[2]}.*set aside"):
        vectors = stored.encode(TEXTS)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert not files[2].exists() and len(list(root.glob(f"model=*/{QUARANTINE}/*"))) == 1
    assert stored.stats.embedded == 10  # the bad file's ten texts, and only them
    again = open_store(root).bind(tiny_encoder)
    again.encode(TEXTS)
    assert again.stats.found == 40


def test_a_read_only_store_reports_bad_files_but_moves_nothing(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    files[3].write_bytes(b"not parquet at all")
    reader = open_store(root, read_only=True).bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match="not a readable store file"):
        vectors = reader.encode(TEXTS)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert files[3].exists() and not list(root.glob(f"model=*/{QUARANTINE}"))


def test_a_bad_file_that_cannot_be_moved_is_skipped_in_a_store_this_user_cannot_change(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user's store: readable, but its quarantine folder cannot be made here.
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    files[3].write_bytes(b"not parquet at all")

    def denied(path: Path) -> Path:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path.parent.parent / QUARANTINE))

    # The suite may run as root, for which chmod denies nothing.
    monkeypatch.setattr("polyemb.store.quarantine.set_aside", denied)
    stored = open_store(root).bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match="left where it is \\(cannot move it: Permission denied\\)"):
        vectors = stored.encode(TEXTS)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert files[3].exists()


@pytest.fixture
def unlistable(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Path, type[OSError]]]:
    """Folders whose listing fails, as another user's umask or a folder removed meanwhile makes it."""
    failing: dict[Path, type[OSError]] = {}
    real = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self in failing:
            code = errno.EACCES if failing[self] is PermissionError else errno.ENOENT
            raise failing[self](code, os.strerror(code), str(self))
        return real(self)

    # The suite may run as root, for which chmod denies nothing.
    monkeypatch.setattr(Path, "iterdir", iterdir)
    yield failing


@pytest.mark.parametrize("error", [PermissionError, FileNotFoundError])
def test_a_run_folder_that_cannot_be_listed_stops_nothing(
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,
    unlistable: dict[Path, type[OSError]],
    error: type[OSError],
) -> None:
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    unlistable[files[0].parent] = error
    stored = open_store(root).bind(tiny_encoder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = stored.encode(TEXTS)
    # A folder another user's umask hides is reported; one removed meanwhile (compacted) is not.
    said = [str(w.message) for w in caught if "cannot list" in str(w.message)]
    assert len(said) == (1 if error is PermissionError else 0), said
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS), rtol=0, atol=1e-6)
    assert stored.stats.found >= 30  # the files of the folders listed
    [model] = open_store(root).stats().models
    assert model.unlisted_folders == (1 if error is PermissionError else 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_store(root).compact()  # skips the folder; nothing there is touched
    assert any("cannot list" in str(w.message) for w in caught) == (error is PermissionError)
    assert files[0].exists()
    del unlistable[files[0].parent]
    vectors, found = open_store(root).lookup(tiny_encoder.vector_spec(), text_hashes(TEXTS))
    assert found.all()


def test_stats_while_spark_removes_its_temporary_folder(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the torture run with Spark appending: stats walked a run's _temporary folder as
    # Spark's commit removed it, and raised FileNotFoundError.
    root = tmp_path / "store"
    files = _four_files(tiny_encoder, root)
    temporary = files[0].parent.parent / "run=spark-job" / "_temporary" / "0"
    temporary.mkdir(parents=True)
    (temporary / "part-00000.parquet").write_bytes(b"half written")
    outside = [p for p in root.rglob("*") if p.is_file() and "_temporary" not in p.parts]
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path).name == "_temporary":  # listed a moment ago, gone now
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    [model] = open_store(root, read_only=True).stats().models
    assert (model.files, model.bad_files, model.entries) == (4, 0, 40)
    folder = root / f"model={model.key}"
    walked = [path for path in outside if folder in path.parents]
    assert model.bytes == sum(path.stat().st_size for path in walked)  # what could be walked
