"""The vector store: keys, round trips, other models, concurrent writers, kills, read-only paths."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb import store as store_module
from polyemb.embedder import VectorSpec
from polyemb.store import StoreError, open_store, text_hashes
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


def test_the_text_hash_is_sha256_and_sql_computes_the_same(tmp_path: Path) -> None:
    texts = ["hello", "", "naïve café", "猫がマット", "emoji 😀", "lone \ud800 surrogate"]
    hashes = text_hashes(texts)
    assert hashes[0] == hashlib.sha256(b"hello").hexdigest()[:32]
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hashes)
    assert hashes[5] == text_hashes(["lone \ufffd surrogate"])[0]  # read as the encoder reads it
    sql = duckdb.execute("SELECT left(sha256(t), 32) FROM unnest($1::VARCHAR[]) AS u(t)", [texts[:5]])
    assert [row[0] for row in sql.fetchall()] == hashes[:5]


def test_the_model_key_changes_with_everything_that_changes_a_vector(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = polyemb.load(tiny_model_dir).vector_spec()
    keys = {
        "base": base.key,
        "length": polyemb.load(tiny_model_dir, max_seq_length=16).vector_spec().key,
        "precision": polyemb.load(tiny_model_dir, precision="bf16").vector_spec().key,
        "not normalized": polyemb.load(tiny_model_dir).vector_spec(normalize=False).key,
        "other weights": polyemb.load(build_tiny_model(tmp_path / "seed1", seed=1)).vector_spec().key,
        "other revision": VectorSpec(**{**base.__dict__, "fingerprint": "0123abcd"}).key,
        "other pooling": VectorSpec(**{**base.__dict__, "pooling": "cls"}).key,
    }
    assert len(set(keys.values())) == len(keys), keys
    # The same content in another folder, or described without loading the weights: one key.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert polyemb.load(copy).vector_spec().key == base.key
    assert polyemb.encoder.describe(tiny_model_dir).key == base.key


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


def test_layout_is_plain_parquet_that_duckdb_queries(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:10], encoder=tiny_encoder)
    key = tiny_encoder.vector_spec().key
    files = list((tmp_path / "store" / f"model={key}").glob("run=*/part-*.parquet"))
    assert files and (tmp_path / "store" / f"model={key}" / "_model.json").is_file()
    assert pq.read_schema(files[0]).names == ["text_hash", "vector"]
    row = duckdb.execute(
        "SELECT model, vector FROM read_parquet($1, hive_partitioning = true) "
        "WHERE text_hash = left(sha256($2), 32)",
        [str(tmp_path / "store" / "*" / "*" / "*.parquet"), TEXTS[3]],
    ).fetchall()
    assert len(row) == 1 and row[0][0] == key
    np.testing.assert_array_equal(np.array(row[0][1], dtype=np.float32), tiny_encoder.encode([TEXTS[3]])[0])


def test_stats_compact_and_gc(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = polyemb.load(tiny_model_dir)
    other = polyemb.load(tiny_model_dir, max_seq_length=16)
    store = open_store(tmp_path / "store")
    for start in range(0, 60, 10):  # six files
        store.encode(TEXTS[start : start + 10], encoder=first)
    open_store(tmp_path / "store").encode(TEXTS[:20], encoder=first)  # found: nothing written
    open_store(tmp_path / "store").encode(TEXTS[:5], encoder=other)
    # A duplicate entry, as two writers racing leave one: the same text in two files.
    dup = open_store(tmp_path / "store")
    dup.append(first.vector_spec(), text_hashes(TEXTS[:3]), first.encode(TEXTS[:3]))
    stats = {m.key: m for m in store.stats().models}
    main = stats[first.vector_spec().key]
    assert (main.entries, main.distinct, main.files) == (63, 60, 7)
    assert stats[other.vector_spec().key].entries == 5 and main.provenance == first.provenance
    report = store.compact()
    assert report.duplicates_dropped == 3 and report.files_after == 2
    main = {m.key: m for m in store.stats().models}[first.vector_spec().key]
    assert (main.entries, main.distinct, main.files) == (60, 60, 1)
    np.testing.assert_array_equal(
        open_store(tmp_path / "store").encode(TEXTS, encoder=first), first.encode(TEXTS)
    )
    with pytest.raises(polyemb.InvalidInputError, match="nothing dropped.*typo@sha256:0"):
        store.gc(["typo@sha256:0"])
    assert len(store.stats().models) == 2
    gc = store.gc([first.provenance])  # a provenance keeps every key of that content
    assert sorted(gc.kept) == sorted({first.vector_spec().key, other.vector_spec().key}) and not gc.dropped
    gc = store.gc([first.vector_spec().key])
    assert gc.dropped == [other.vector_spec().key] and gc.bytes_freed > 0


def test_a_folder_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "important.csv").write_text("a,b\n")
    with pytest.raises(StoreError, match="not a polyemb store"):
        open_store(tmp_path / "data")


def test_a_read_only_store_serves_reads(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(tmp_path / "store").encode(TEXTS[:10], encoder=tiny_encoder)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "store"))

    # A read-only lake path (the suite may run as root, for which chmod denies nothing).
    monkeypatch.setattr(store_module, "_write_table", denied)
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


# ------------------------------------------------------------------ processes


def _write_in_process(args: tuple[str, str, list[str]]) -> int:
    model, store, texts = args
    store_module.WRITE_ROWS = 7  # many small files, so the two writers interleave
    stored = open_store(store).bind(polyemb.load(model))
    stored.encode(texts)
    return stored.stats.written


def test_two_processes_writing_at_once_lose_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = [f"concurrent text {i}" for i in range(120)]
    jobs = [
        (str(tiny_model_dir), str(tmp_path / "store"), texts[:80]),
        (str(tiny_model_dir), str(tmp_path / "store"), texts[40:]),
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        written = pool.map(_write_in_process, jobs)
    assert sum(written) >= 120  # the 40 shared texts may be written by both
    encoder = polyemb.load(tiny_model_dir)
    reader = open_store(tmp_path / "store").bind(encoder)
    vectors = reader.encode(texts)
    assert (reader.stats.found, reader.stats.embedded) == (120, 0)
    np.testing.assert_allclose(vectors, encoder.encode(texts), rtol=0, atol=1e-6)
    [model] = reader.store.stats().models
    assert model.distinct == 120 and model.entries == sum(written)


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pyarrow.parquet as pq
    import polyemb
    from polyemb import store as store_module

    store_module.WRITE_ROWS = 5
    real_write, writes = pq.write_table, []

    def write_table(table, where, **options):
        real_write(table, where, **options)
        writes.append(where)
        if len(writes) == 21:  # the 21st file: cut it in half and stop there, as a kill would
            os.truncate(where, os.path.getsize(where) // 2)
            print("mid-write", flush=True)
            time.sleep(600)

    pq.write_table = write_table
    texts = [f"killed writer text {i} " + "word " * (i % 9) for i in range(1_000)]
    polyemb.open_store(sys.argv[2]).encode(texts, encoder=polyemb.load(sys.argv[1]))
    """
)


def test_a_writer_killed_mid_write_leaves_every_finished_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tiny_model_dir), str(store)],
        stdout=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"mid-write"  # 20 files done, the 21st half on disk
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    files = list(store.glob("model=*/run=*/part-*.parquet"))
    leftovers = list(store.rglob(".*.tmp"))
    assert len(files) == 20 and len(leftovers) == 1  # the half-written file is hidden
    for path in files:  # every visible file is whole
        assert pq.read_table(path).num_rows == 5
    encoder = polyemb.load(tiny_model_dir)
    texts = [f"killed writer text {i} " + "word " * (i % 9) for i in range(1_000)]
    stored = open_store(store).bind(encoder)
    vectors = stored.encode(texts[:100])
    assert stored.stats.found == 100  # every finished batch: the first 20 x 5 texts
    np.testing.assert_allclose(vectors, encoder.encode(texts[:100]), rtol=0, atol=1e-6)
    stored.encode(texts)  # a new run finishes the job beside the leftover
    assert stored.stats.embedded == 900
    # compact removes the killed writer's leftover once it is stale (an hour old).
    os.utime(leftovers[0], (0, 0))
    report = open_store(store).compact()
    assert report.temporary_removed == 1 and not list(store.rglob(".*.tmp"))
