"""Reading and writing: round trips, only new texts embedded, other models, read-only paths, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.store import StoreError, open_store, text_hashes, writer
from polyemb.store.layout import MARKER
from polyemb.testing import build_tiny_model

TEXTS = [f"stored text number {i} " + "word " * (i % 5) for i in range(60)]


def test_a_stored_vector_is_the_encoders_vector(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    stored = store.bind(tiny_encoder)
    first = stored.encode(TEXTS + TEXTS[:5])  # duplicates in one call are looked up once
    assert (stored.stats.looked_up, stored.stats.found, stored.stats.embedded) == (60, 0, 60)
    expected = tiny_encoder.encode(TEXTS + TEXTS[:5])
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-6)
    # A new process's view of the store: every vector read back, none embedded again.
    again = open_store(tmp_path / "store").bind(tiny_encoder)
    read = again.encode(list(reversed(TEXTS)))
    assert (again.stats.found, again.stats.embedded) == (60, 0)
    cosines = np.einsum("ij,ij->i", read, expected[:60][::-1]) / (
        np.linalg.norm(read, axis=1) * np.linalg.norm(expected[:60][::-1], axis=1)
    )
    assert cosines.min() >= 1 - 1e-6
    np.testing.assert_array_equal(read, first[:60][::-1])  # float32 written and read as it was


def test_lookup_by_hash_finds_what_the_encoder_stored(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    stored = store.encode(TEXTS[:10], encoder=tiny_encoder)
    vectors, found = open_store(tmp_path / "store").lookup(
        tiny_encoder.vector_spec(), text_hashes([TEXTS[4], "never stored", TEXTS[0]])
    )
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(vectors[[0, 2]], stored[[4, 0]])
    assert not vectors[1].any()  # a miss reads as zeros


def test_only_new_texts_are_embedded_and_nulls_stay_in_place(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:40], encoder=tiny_encoder)
    stored = store.bind(tiny_encoder)
    vectors, valid = stored.encode_nullable([TEXTS[0], None, "an edited text", TEXTS[39], None])
    assert valid.tolist() == [True, False, True, True, False]
    assert (stored.stats.found, stored.stats.embedded, stored.stats.written) == (2, 1, 1)
    assert not vectors[~valid].any()
    np.testing.assert_allclose(
        vectors[valid], tiny_encoder.encode([TEXTS[0], "an edited text", TEXTS[39]]), rtol=0, atol=1e-6
    )


def test_a_store_is_never_read_for_another_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = polyemb.load(tiny_model_dir)
    other = polyemb.load(build_tiny_model(tmp_path / "other", seed=7))  # same shape, other weights
    assert other.dim == first.dim
    store = open_store(tmp_path / "store")
    store.encode(TEXTS, encoder=first)
    stored = store.bind(other)
    vectors = stored.encode(TEXTS)
    assert (stored.stats.found, stored.stats.embedded) == (0, len(TEXTS))
    np.testing.assert_allclose(vectors, other.encode(TEXTS), rtol=0, atol=1e-6)
    assert not np.allclose(vectors, first.encode(TEXTS), atol=1e-2)
    assert {m.key for m in store.stats().models} == {first.vector_spec().key, other.vector_spec().key}


def test_a_read_only_store_serves_reads(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(tmp_path / "store").encode(TEXTS[:10], encoder=tiny_encoder)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "store"))

    # A read-only lake path (the suite may run as root, for which chmod denies nothing).
    monkeypatch.setattr(writer, "write_table", denied)
    strict = open_store(tmp_path / "store").bind(tiny_encoder)
    np.testing.assert_array_equal(strict.encode(TEXTS[:10]), tiny_encoder.encode(TEXTS[:10]))
    with pytest.raises(StoreError, match="cannot write to the vector store.*on_write_error='warn'"):
        strict.encode(TEXTS[:12])
    lenient = open_store(tmp_path / "store", on_write_error="warn").bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match="writes are skipped from now on") as caught:
        vectors = lenient.encode(TEXTS[:12])
        lenient.encode(["one more", "and another"])
    assert len(caught) == 1  # one warning, not one per write
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS[:12]), rtol=0, atol=1e-6)
    assert lenient.stats.written == 0 and lenient.stats.embedded == 4
    reader = open_store(tmp_path / "store", read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        reader.compact()


def test_a_foreign_file_in_a_model_folder_is_skipped_once(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:10], encoder=tiny_encoder)
    run = store.model_folder(tiny_encoder.vector_spec().key) / "run=foreign"
    run.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), run / "part-0.parquet")
    stored = open_store(tmp_path / "store").bind(tiny_encoder)
    with pytest.warns(RuntimeWarning, match="skipping .*part-0.parquet: not a readable store file") as caught:
        vectors = stored.encode(TEXTS[:12])
        stored.encode(["yet another text"])
    assert len(caught) == 1
    assert (stored.stats.found, stored.stats.embedded) == (10, 3)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(TEXTS[:12]), rtol=0, atol=1e-6)


def test_the_store_keeps_each_long_text_settings_vectors_apart(tiny_model_dir: Path, tmp_path: Path) -> None:
    truncate = polyemb.load(tiny_model_dir)
    mean = polyemb.load(tiny_model_dir, long_texts="mean")
    texts = [" ".join(TEXTS[:8]), "short", " ".join(TEXTS[8:20])]  # two far over 32 tokens
    store = open_store(tmp_path / "store")
    first = store.encode(texts, encoder=truncate)
    second = store.encode(texts, encoder=mean)
    np.testing.assert_allclose(second, mean.encode(texts), rtol=0, atol=1e-6)
    np.testing.assert_allclose(first, truncate.encode(texts), rtol=0, atol=1e-6)
    assert not np.allclose(first[[0, 2]], second[[0, 2]], atol=1e-3)
    np.testing.assert_allclose(first[1], second[1], atol=1e-6)  # a text that fits: one vector either way
    keys = {m.key for m in store.stats().models}
    assert keys == {truncate.vector_spec().key, mean.vector_spec().key}
    again = open_store(tmp_path / "store").bind(mean)
    np.testing.assert_array_equal(again.encode(texts), second)
    assert again.stats.embedded == 0


def test_an_index_update_stopped_half_way_is_built_again(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C in the middle of merging the index's arrays left them of different lengths: every
    # later call on the store failed (IndexError), and good files were set aside as bad.
    from polyemb.store.index import ModelIndex

    store = open_store(tmp_path / "store")
    texts = [f"indexed text {i}" for i in range(40)]
    spec = tiny_encoder.vector_spec()
    vectors = tiny_encoder.encode(texts)
    store.append(spec, text_hashes(texts[:20]), vectors[:20])
    add = ModelIndex.add

    def add_half_then_interrupt(index: ModelIndex, file: object) -> None:
        add(index, file)  # type: ignore[arg-type]
        index._merge_pending()
        index._hi = index._hi[:-1]  # as an interrupt between two of the merge's assignments leaves it
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelIndex, "add", add_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.append(spec, text_hashes(texts[20:]), vectors[20:])
    monkeypatch.undo()
    found, ok = store.lookup(spec, text_hashes(texts))
    assert ok.all()  # both files: the one written before the interrupt too
    np.testing.assert_allclose(found, vectors, rtol=0, atol=1e-6)
    store.append(spec, text_hashes(["one more"]), tiny_encoder.encode(["one more"]))
    [model] = store.stats().models
    assert (model.entries, model.files, model.bad_files) == (41, 3, 0)


def test_a_store_pickles_as_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # For a spawned worker (a process pool's argument): it opens the folder again, options kept.
    import pickle

    for read_only in (True, False):
        store = open_store(tmp_path / "store", read_only=read_only, on_write_error="warn", cache_mb=3)
        again = pickle.loads(pickle.dumps(store))
        assert (again.path, again.read_only, again.on_write_error) == (store.path, read_only, "warn")
        assert again._cache.max_bytes == 3 * 2**20 and again is not store
        assert (tmp_path / "store").exists() != read_only  # a read-only open makes nothing
    # Where the worker runs in another folder: the same store, never a new empty one.
    monkeypatch.chdir(tmp_path)
    pickled = pickle.dumps(open_store("store"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert pickle.loads(pickled).path == tmp_path / "store"
    (tmp_path / "store" / MARKER).unlink()
    with pytest.raises(StoreError, match="is not a polyemb vector store"):
        pickle.loads(pickled)  # gone meanwhile: an error, not a new store made
