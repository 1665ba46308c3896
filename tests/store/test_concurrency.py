"""Concurrency and crashes: two processes writing at once, a writer killed mid-write."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.embedder import VectorSpec
from polyemb.store import VectorStore, maintenance, open_store, stored, text_hashes, writer
from polyemb.store.keys import text_digests


def _write_in_process(args: tuple[str, str, list[str]]) -> int:
    model, store, texts = args
    stored.WRITE_ROWS = 7  # many small files, so the two writers interleave
    encoder = open_store(store).bind(polyemb.load(model))
    encoder.encode(texts)
    return encoder.stats.written


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
    from polyemb.store import stored

    stored.WRITE_ROWS = 5
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
    reader = open_store(store).bind(encoder)
    vectors = reader.encode(texts[:100])
    assert reader.stats.found == 100  # every finished batch: the first 20 x 5 texts
    np.testing.assert_allclose(vectors, encoder.encode(texts[:100]), rtol=0, atol=1e-6)
    reader.encode(texts)  # a new run finishes the job beside the leftover
    assert reader.stats.embedded == 900
    # compact removes the killed writer's leftover once it is stale (an hour old).
    os.utime(leftovers[0], (0, 0))
    report = open_store(store).compact()
    assert report.temporary_removed == 1 and not list(store.rglob(".*.tmp"))


def _count_embedded(monkeypatch: pytest.MonkeyPatch, pause: float = 0.0) -> Counter[str]:
    """Count every text the encoder embeds (``pause`` seconds a call, so that calls overlap)."""
    embedded: Counter[str] = Counter()
    lock = threading.Lock()
    encode = polyemb.Encoder.encode

    def counting(self: polyemb.Encoder, texts: list[str], **options: object) -> np.ndarray:
        with lock:
            embedded.update(texts)
        time.sleep(pause)
        return encode(self, texts, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(polyemb.Encoder, "encode", counting)
    return embedded


def _until_claimed(store: VectorStore) -> None:
    """Wait (at most 30 s) until some call of ``store`` has claimed texts."""
    deadline = time.monotonic() + 30
    while not store.in_flight._claims:
        assert time.monotonic() < deadline, "no call claimed its texts"
        time.sleep(0.001)


class _Bars:
    """The store's progress bars: each one's total and the sum of its updates."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def __call__(self, *, total: int, **options: object) -> _Bars:
        self.seen.append([total, 0])
        return self

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:  # of the last bar made: one call at a time in these tests
        self.seen[-1][1] += n


def test_threads_that_need_one_text_embed_it_once(
    tiny_encoder: polyemb.Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_threads: Callable[[Callable[[int], None], int], None],
) -> None:
    # Polars' streaming engine, DuckDB and pandas in threads call one store at once, with texts in
    # common: each is embedded (and stored) once, the others wait for it.
    monkeypatch.setattr(stored, "WRITE_ROWS", 8)  # several claims per call
    texts = [f"shared text {i}" for i in range(70)]
    expected = tiny_encoder.encode(texts)
    embedded = _count_embedded(monkeypatch, pause=0.05)
    store = open_store(tmp_path / "store")
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = store.encode(texts[i * 10 : i * 10 + 40], encoder=tiny_encoder)

    run_threads(work, 4)
    assert embedded == Counter(texts)  # every text once, whichever thread came first
    for i, vectors in results.items():
        np.testing.assert_allclose(vectors, expected[i * 10 : i * 10 + 40], rtol=0, atol=1e-6)
    [model] = store.stats().models
    assert (model.entries, model.distinct) == (70, 70)


def test_a_text_stored_between_lookup_and_claim_is_not_embedded_again(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window a claim alone leaves: another call stores the texts and gives its claim up after
    # this call looked them up, before this call claims them.
    store = open_store(tmp_path / "store")
    texts = ["first", "second", "third"]
    embedded = _count_embedded(monkeypatch)
    claim = store.in_flight.claim
    other = store.bind(tiny_encoder)
    calls: list[int] = []

    def another_call_first(*args: object, **options: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            other.encode(texts)  # runs in full: looks up, claims, embeds, stores, releases
        return claim(*args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(store.in_flight, "claim", another_call_first)
    late = store.bind(tiny_encoder)
    vectors = late.encode(texts)
    assert embedded == Counter(texts)
    assert (late.stats.found, late.stats.embedded, other.stats.embedded) == (3, 0, 3)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(texts), rtol=0, atol=1e-6)


def test_a_call_that_fails_leaves_its_texts_to_the_calls_waiting_for_them(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "store")
    texts = ["a", "b", "c"]
    waiting = threading.Event()
    take = stored.take_from_others

    def signal_then_take(others: list[tuple[int, stored.Claim, int]], vectors: np.ndarray) -> list[int]:
        if others:
            waiting.set()
        return take(others, vectors)

    monkeypatch.setattr(stored, "take_from_others", signal_then_take)
    encode = polyemb.Encoder.encode

    def fail_once_the_other_waits(self: polyemb.Encoder, batch: list[str], **options: object) -> np.ndarray:
        if threading.current_thread().name == "failing":
            assert waiting.wait(10)
            raise RuntimeError("the first call's model failed")
        return encode(self, batch, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(polyemb.Encoder, "encode", fail_once_the_other_waits)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            store.encode(texts, encoder=tiny_encoder)
        except RuntimeError as exc:
            errors.append(exc)

    failing = threading.Thread(target=first, name="failing")
    failing.start()
    _until_claimed(store)
    vectors = store.encode(texts, encoder=tiny_encoder)
    failing.join()
    assert [str(e) for e in errors] == ["the first call's model failed"]
    np.testing.assert_allclose(vectors, tiny_encoder.encode(texts), rtol=0, atol=1e-6)
    assert store.in_flight._claims == {}  # nothing left claimed
    [model] = store.stats().models
    assert model.entries == 3


def test_a_waiting_call_gets_vectors_the_first_caller_cannot_change(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call's result is its caller's to change in place (faiss.normalize_L2, `v *= 2`):
    # a call that waited for its texts copies them from the claim's own copy, not from that result.
    store = open_store(tmp_path / "store")
    texts = [f"changed text {i}" for i in range(6)]
    changed = threading.Event()
    take = stored.take_from_others

    def take_after_the_change(others: list[tuple[int, stored.Claim, int]], vectors: np.ndarray) -> list[int]:
        if others:
            assert changed.wait(10)
        return take(others, vectors)

    monkeypatch.setattr(stored, "take_from_others", take_after_the_change)
    embedded = _count_embedded(monkeypatch, pause=0.3)
    first: dict[str, np.ndarray] = {}

    def first_call() -> None:
        first["v"] = store.encode(texts, encoder=tiny_encoder)
        first["v"] *= 2.0
        changed.set()

    thread = threading.Thread(target=first_call)
    thread.start()
    _until_claimed(store)
    bars = _Bars()
    monkeypatch.setattr(stored, "progress_bar", bars)  # the second call's bar
    second = store.encode(texts, encoder=tiny_encoder)
    thread.join()
    assert embedded == Counter(texts)  # the second call waited, embedding nothing
    assert bars.seen == [[6, 6]]  # its bar still ends full: the texts it waited for count
    np.testing.assert_allclose(second, tiny_encoder.encode(texts), rtol=0, atol=1e-6)
    np.testing.assert_allclose(first["v"], 2 * second, rtol=0, atol=1e-6)


def test_an_interrupt_right_after_claiming_leaves_nothing_claimed(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C lands where the texts are claimed but the call has not yet started on them: a later
    # call must not wait for them forever.
    store = open_store(tmp_path / "store")
    texts = ["interrupted", "claimed", "texts"]
    claim = store.in_flight.claim

    def claim_then_interrupt(*args: object) -> object:
        claim(*args)  # type: ignore[arg-type]
        assert store.in_flight._claims  # claimed
        raise KeyboardInterrupt

    monkeypatch.setattr(store.in_flight, "claim", claim_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.encode(texts, encoder=tiny_encoder)
    assert store.in_flight._claims == {}
    monkeypatch.undo()
    done = threading.Thread(target=store.encode, args=(texts,), kwargs={"encoder": tiny_encoder})
    done.start()
    done.join(60)
    assert not done.is_alive()  # a later call needing them embedded them itself


def _spec() -> VectorSpec:
    return VectorSpec("fork-test", "sha256:0", 4, 16, "fp32", True)


def test_forked_writers_never_overwrite_each_other(tmp_path: Path) -> None:
    # gunicorn --preload, multiprocessing's fork, Spark's Python daemon: a store opened (and
    # written to) before a fork is inherited by every child.
    store = open_store(tmp_path / "store")
    spec = _spec()
    store.append(spec, text_hashes(["the parent's text"]), np.zeros((1, 4), np.float32))
    children = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:  # the child: one different text each, then leave without cleanup
            code = 1
            try:
                store.append(spec, text_hashes([f"child {i}"]), np.full((1, 4), i + 1, np.float32))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    texts = ["the parent's text", "child 0", "child 1"]
    vectors, found = open_store(tmp_path / "store").lookup(spec, text_hashes(texts))
    assert found.tolist() == [True, True, True]
    np.testing.assert_array_equal(vectors[:, 0], [0, 1, 2])
    assert len(list((tmp_path / "store").glob("model=*/run=*/part-*.parquet"))) == 3


def test_a_forked_child_does_not_wait_for_its_parents_claims(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    # A parent's thread was embedding the texts at the fork: that thread is not in the child.
    store = open_store(tmp_path / "store")
    texts = ["claimed in the parent"]
    key = tiny_encoder.vector_spec(normalize=True).key
    store.in_flight.claim(stored.Claim(store.in_flight), key, text_digests(texts), [0])  # never finished
    pid = os.fork()
    if pid == 0:  # the child: embeds the text itself, then leaves without cleanup
        code = 1
        try:
            signal.alarm(60)  # never hang the suite
            store.encode(texts, encoder=tiny_encoder)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    [model] = open_store(tmp_path / "store").stats().models
    assert model.entries == 1


def test_two_compactions_at_once_both_finish_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    store = open_store(tmp_path / "store")
    texts = [f"compacted text {i}" for i in range(30)]
    for start in range(0, 30, 5):
        store.append(spec, text_hashes(texts[start : start + 5]), np.full((5, 4), start, np.float32))
    real_listing = maintenance.data_files
    raced = []

    def listing_then_another_compaction(folder: Path, *args: object) -> list[Path]:
        files = list(real_listing(folder, *args))  # type: ignore[arg-type]
        if not raced:  # the second compaction runs whole between the first's listing and reading
            raced.append(True)
            monkeypatch.setattr(maintenance, "data_files", real_listing)
            open_store(tmp_path / "store").compact()
            monkeypatch.setattr(maintenance, "data_files", listing_then_another_compaction)
        return files

    monkeypatch.setattr(maintenance, "data_files", listing_then_another_compaction)
    open_store(tmp_path / "store").compact()
    assert raced
    vectors, found = open_store(tmp_path / "store").lookup(spec, text_hashes(texts))
    assert found.all()
    np.testing.assert_array_equal(vectors[:, 0], np.repeat(np.arange(0, 30, 5), 5))


def test_a_file_compacted_away_right_after_it_is_published_fails_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the torture test: a writer read its own file back after publishing it, and a
    # compaction in another process may remove it in between.
    store = open_store(tmp_path / "store")
    real_sync = writer.sync_folder

    def sync_then_compact_away(folder: Path) -> None:
        real_sync(folder)
        for path in folder.glob("part-*.parquet"):
            path.unlink()  # what another process's compaction does once it merged the file

    monkeypatch.setattr(writer, "sync_folder", sync_then_compact_away)
    assert store.append(_spec(), text_hashes(["published"]), np.ones((1, 4), np.float32)) is not None


def test_a_store_another_process_creates_meanwhile_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes open one new folder: the first checks that it is no store yet, then the
    # other publishes the marker, then the first finds the folder no longer empty (CI saw it).
    from polyemb.store import layout, vector_store

    store = tmp_path / "store"
    open_store(store)  # "the other process": the folder now holds the marker
    first = iter([True])

    def is_store(path: Path) -> bool:  # "not yet" the first time, then the truth
        return False if next(first, False) else layout.is_store(path)

    monkeypatch.setattr(vector_store, "is_store", is_store)
    reopened = open_store(store)
    assert reopened.path == store and (store / layout.MARKER).is_file()
    # A folder that holds something else is still refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a store")
    with pytest.raises(polyemb.errors.StoreError, match="is not a polyemb store"):
        open_store(other)
