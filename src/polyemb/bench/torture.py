"""``polyemb bench-store torture``: the store tested the way storage engines test themselves.

For a fixed time, several processes, spawned ones and ones forked from a process that had the
store open (:mod:`polyemb.bench._torture_child`), encode random overlapping texts through one
store, read it, compact it (several at once), collect its garbage (keeping the live models) and
take its stats, while this process SIGKILLs random writers and corrupts or truncates random
files; a Spark job may append meanwhile. Then the invariants are checked against a recomputation:

- every text a finished write stored is found (unless every copy sat in a file corrupted here);
- every vector in the store, and every one a reader got, is bitwise the one of its own text and
  model (the synthetic models' vectors are a pure function of the text; Spark's model's vectors
  are checked against the model within float tolerance);
- no worker met an error other than a documented one (a :class:`polyemb.PolyembError`);
- ``stats`` agrees with the files, as read here;
- ``compact`` then leaves one entry per text, and every text is still found.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from polyemb.embedder import VectorSpec
from polyemb.errors import PolyembError

__all__ = ["DEAD_MODEL", "LIVE_MODELS", "HashEncoder", "SparkSide", "TortureReport", "pool_texts", "torture"]

LIVE_MODELS = ("alpha", "beta")
DEAD_MODEL = "retired"  # written before the run: the model gc drops
_DIM = 16


class HashEncoder:
    """A synthetic model: a text's vector is a pure function of the text and the model's name.

    Bitwise reproducible anywhere, so any vector read from a store can be checked exactly.
    """

    def __init__(self, name: str, dim: int = _DIM) -> None:
        self.name = name
        self.dim = dim
        self.fingerprint = "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:16]
        self.provenance = f"torture-{name}@{self.fingerprint}"

    def vector_spec(self, *, normalize: bool = True) -> VectorSpec:
        """The store key's content: the model, its dimension, fp32, normalized."""
        return VectorSpec(f"torture-{self.name}", self.fingerprint, self.dim, 128, "fp32", True)

    def encode(self, texts: Iterable[str], **_: Any) -> np.ndarray:
        """Unit vectors, float32, one per text."""
        rows = []
        for text in texts:
            seed = hashlib.sha256(f"{self.name}\0{text}".encode()).digest()[:8]
            vector = np.random.default_rng(int.from_bytes(seed, "little")).standard_normal(self.dim)
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows, dtype=np.float32).reshape(len(rows), self.dim)


def pool_texts(count: int) -> list[str]:
    """The texts the workers draw from (overlapping on purpose), in several scripts."""
    words = ["cat", "gato", "Katze", "猫", "кошка", "قطة", "chat", "gatto", "😀", "mat"]
    return [
        f"torture text {i}: " + " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 9))
        for i in range(count)
    ]


@dataclass
class TortureReport:
    """What a torture run did and found; ``ok`` when every invariant held."""

    seconds: float
    operations: dict[str, int] = field(default_factory=dict)
    processes_spawned: int = 0
    processes_forked: int = 0
    kills: int = 0
    corruptions: int = 0
    spark_runs: int = 0
    spark_seconds: list[float] = field(default_factory=list)  # each Spark run's time
    texts_stored: int = 0  # (model, text) pairs a finished write stored
    texts_excused: int = 0  # of those, every copy in a file corrupted here
    warnings: int = 0  # bad files reported to workers
    documented_errors: int = 0
    documented_samples: list[str] = field(default_factory=list)  # the first few, to read
    undocumented_errors: list[str] = field(default_factory=list)
    wrong_vectors: int = 0
    losses: int = 0
    stats_mismatches: list[str] = field(default_factory=list)
    duplicates_after_compact: int = 0
    files_at_end: int = 0
    quarantined: int = 0

    @property
    def ok(self) -> bool:
        """Every invariant held."""
        return not (
            self.undocumented_errors
            or self.wrong_vectors
            or self.losses
            or self.stats_mismatches
            or self.duplicates_after_compact
        )

    def format(self) -> str:
        """The counts, one per line."""
        return "\n".join(f"{name}: {value}" for name, value in asdict(self).items()) + f"\nok: {self.ok}"


@dataclass(frozen=True)
class SparkSide:
    """A Spark job that appends beside the workers: a session, its model and the model's encoder."""

    session: Any
    model: Path
    encoder: Any  # polyemb.Encoder of the same model, for the expected vectors


def torture(
    workdir: Path,
    *,
    seconds: float,
    seed: int = 0,
    spawned: int = 2,
    forked: int = 2,
    texts: int = 2_000,
    spark: SparkSide | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> TortureReport:
    """Torture a new store in ``workdir`` for ``seconds``, then check every invariant.

    Args:
        workdir: An empty folder for the store and the workers' journals.
        seconds: How long the workers run.
        seed: Seeds every random choice here and in the workers.
        spawned: Workers started as new processes (replaced when killed).
        forked: Workers forked from one process that holds the store open.
        texts: Distinct texts the workers draw from.
        spark: A Spark job appending beside them, if given.
        progress: Called with a line now and then.

    Returns:
        The report; ``report.ok`` says whether every invariant held.
    """
    from polyemb.store import open_store, text_hashes

    store_dir, journals = workdir / "store", workdir / "journals"
    journals.mkdir(parents=True)
    dead = HashEncoder(DEAD_MODEL)
    pool = pool_texts(texts)
    open_store(store_dir).append(dead.vector_spec(), text_hashes(pool[:50]), dead.encode(pool[:50]))
    keep = [HashEncoder(name).provenance for name in LIVE_MODELS]
    if spark is not None:  # in the store from the start, so that gc may name it to keep
        keep.append(spark.encoder.provenance)
        open_store(store_dir).encode(pool[:5], encoder=spark.encoder)
        _warm_up(spark, workdir / "warm-up", pool)
    deadline = time.time() + seconds
    settings = {"seed": seed, "deadline": deadline, "write_rows": 16, "texts": texts, "keep": keep}
    report = TortureReport(seconds=seconds)
    rng = random.Random(seed)
    excused: dict[str, set[str]] = {}
    spark_stored: set[str] = set()
    chaos = _Chaos(store_dir, journals, settings, forked, rng, report, excused)
    thread = None
    if spark is not None:
        thread = threading.Thread(
            target=_spark_loop, args=(spark, store_dir, pool, deadline, seed, report, spark_stored)
        )
        thread.start()
    chaos.start(spawned)
    while time.time() < deadline:
        chaos.tick()
        time.sleep(0.1)
    chaos.stop()
    if thread is not None:
        thread.join()
    # No counts yet: the forked workers' kills are counted from their journals while checking.
    progress(f"ran {seconds:.0f}s; checking")
    for hang in sorted(journals.glob("hang-*.txt")):
        if hang.stat().st_size:  # written by a worker stuck past the deadline: where it was
            report.undocumented_errors.append(f"{hang.name}: {hang.read_text(encoding='utf-8')[-1500:]}")
    _check(store_dir, journals, pool, excused, spark, spark_stored, report)
    return report


class _Chaos:
    """The workers, and what this process does to them and to the store's files."""

    def __init__(
        self,
        store: Path,
        journals: Path,
        settings: dict[str, Any],
        forked: int,
        rng: random.Random,
        report: TortureReport,
        excused: dict[str, set[str]],
    ) -> None:
        self.store, self.journals, self.settings, self.rng = store, journals, settings, rng
        self.report, self.excused = report, excused
        self.forked = forked
        self.workers: list[subprocess.Popen[bytes]] = []
        self.forker: subprocess.Popen[bytes] | None = None

    def _spawn(self, mode: str) -> subprocess.Popen[bytes]:
        settings = json.dumps({**self.settings, "mode": mode, "forked": self.forked})
        command = [
            sys.executable,
            "-m",
            "polyemb.bench._torture_child",
            str(self.store),
            str(self.journals),
            settings,
        ]
        if mode == "worker":
            self.report.processes_spawned += 1
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self, spawned: int) -> None:
        self.workers = [self._spawn("worker") for _ in range(spawned)]
        if self.forked:
            self.forker = self._spawn("forker")

    def tick(self) -> None:
        """Maybe kill a worker, maybe corrupt a file; replace spawned workers that died."""
        if self.rng.random() < 0.12:
            self._kill()
        if self.rng.random() < 0.06:
            self._corrupt()
        for i, worker in enumerate(self.workers):
            if worker.poll() is not None and time.time() < float(self.settings["deadline"]) - 1:
                self.workers[i] = self._spawn("worker")

    def _kill(self) -> None:
        alive = [worker for worker in self.workers if worker.poll() is None]
        forker_ready = (self.journals / "forker-ready").exists()  # its SIGUSR1 handler is set
        if (
            forker_ready
            and self.forker is not None
            and self.forker.poll() is None
            and self.rng.random() < 0.5
        ):
            self.forker.send_signal(signal.SIGUSR1)  # it kills one of its own children
            return
        if alive:
            self.rng.choice(alive).kill()  # our own child, not yet reaped: the pid is still its
            self.report.kills += 1

    def _corrupt(self) -> None:
        # Writers' files, not compacted ones: a corruption excuses the few texts of one write,
        # not every text of a model.
        files = sorted(
            path for path in self.store.glob("model=*/run=*/*.parquet") if "compact-" not in path.parent.name
        )
        if not files:
            return
        path = self.rng.choice(files)
        try:
            hashes = pq.read_table(path, columns=["text_hash"]).column(0).to_pylist()
            size = path.stat().st_size
            with path.open("r+b") as handle:
                how = self.rng.choice(["truncate", "empty", "bytes"])
                if how == "truncate":
                    handle.truncate(self.rng.randrange(size))
                elif how == "empty":
                    handle.truncate(0)
                else:
                    handle.seek(self.rng.randrange(size))
                    handle.write(os.urandom(self.rng.randint(1, 16)))
        except (OSError, ValueError):  # compacted away, or already bad: nothing corrupted now
            return
        self.excused.setdefault(path.parent.parent.name.removeprefix("model="), set()).update(hashes)
        self.report.corruptions += 1

    def stop(self) -> None:
        """Wait for the workers to reach the deadline (they stop by themselves), and collect them."""
        everyone = [*self.workers, *([self.forker] if self.forker is not None else [])]
        for process in everyone:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.report.undocumented_errors.append(f"a worker (pid {process.pid}) did not stop by itself")
            if process.returncode not in (0, -signal.SIGKILL) and process.stderr is not None:
                self.report.undocumented_errors.append(
                    f"worker exited {process.returncode}: {process.stderr.read().decode()[-500:]}"
                )
            if process.stderr is not None:
                process.stderr.close()


def _warm_up(spark: SparkSide, store: Path, pool: list[str]) -> None:
    """One run before the clock starts: Spark's Python workers started, the model shipped and loaded."""
    from polyemb.spark import embed_incremental

    frame = spark.session.createDataFrame(list(enumerate(pool[:3])), "id long, text string")
    embed_incremental(frame, "text", str(store), spark.model).collect()


def _spark_loop(
    spark: SparkSide,
    store: Path,
    pool: list[str],
    deadline: float,
    seed: int,
    report: TortureReport,
    stored: set[str],
) -> None:
    """Incremental Spark runs over random overlapping texts until the deadline, results checked."""
    from polyemb.spark import embed_incremental

    rng = random.Random(f"{seed}-spark")
    while time.time() < deadline:
        texts = [pool[i] for i in rng.sample(range(len(pool)), rng.randint(10, 60))]
        frame = spark.session.createDataFrame(list(enumerate(texts)), "id long, text string")
        started = time.perf_counter()
        try:
            rows = embed_incremental(frame, "text", str(store), spark.model).collect()
        except PolyembError as exc:
            report.documented_errors += 1
            if len(report.documented_samples) < 5:
                report.documented_samples.append(f"spark: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        except Exception as exc:  # counted: the invariant is that there are none
            report.undocumented_errors.append(f"spark: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        got = np.array([row["embedding"] for row in rows], dtype=np.float32)
        expected = spark.encoder.encode([row["text"] for row in rows])
        report.wrong_vectors += int((np.abs(got - expected) > 1e-5).any(axis=1).sum())
        stored.update(row["text"] for row in rows)
        report.spark_runs += 1
        report.spark_seconds.append(round(time.perf_counter() - started, 1))


# --------------------------------------------------------------------------- the check


def _read_journals(journals: Path, report: TortureReport, stored: dict[str, set[int]]) -> None:
    for path in sorted(journals.glob("journal-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # the line a SIGKILL cut short
                continue
            report.operations[entry["op"]] = report.operations.get(entry["op"], 0) + 1
            _count(entry, report, stored)


def _count(entry: dict[str, Any], report: TortureReport, stored: dict[str, set[int]]) -> None:
    """Add one journal entry to the report."""
    op = entry["op"]
    if op == "encode":
        stored[entry["model"]].update(entry["ids"])
    if op in ("encode", "read"):
        report.wrong_vectors += int(entry["wrong"])
    elif op == "error" and entry["documented"]:
        report.documented_errors += 1
        if len(report.documented_samples) < 5:
            report.documented_samples.append(f"{entry['during']}: {entry['type']}: {entry['message']}")
    elif op == "error":
        report.undocumented_errors.append(f"{entry['during']}: {entry['type']}: {entry['message']}")
    elif op == "warnings":
        report.warnings += int(entry["count"])
    elif op == "forker":
        report.processes_forked += int(entry["forks"])
        report.kills += int(entry["kills"])


@dataclass
class _Recount:
    """A model's files as read here, directly: what stats must say, and the vectors that are wrong."""

    files: int = 0
    bad: int = 0
    entries: int = 0
    hashes: set[tuple[int, int]] = field(default_factory=set)
    wrong: int = 0


def _recount(folder: Path, expect: Callable[[list[str]], np.ndarray], by_hash: dict[str, str]) -> _Recount:
    """Every data file read as stats reads it (footer and hashes), then whole, every vector checked."""
    from polyemb.store.index import FileIndex, check_store_table, open_parquet
    from polyemb.store.layout import data_files

    count = _Recount()
    for path in data_files(folder):
        count.files += 1
        try:
            index = FileIndex.read(path)
        except (PolyembError, OSError, ValueError):
            count.bad += 1
            continue
        count.entries += len(index.hi)
        count.hashes.update(zip(index.hi.tolist(), index.lo.tolist(), strict=True))
        try:
            hi, lo, vectors = check_store_table(open_parquet(path).read(), path, None)
        except (PolyembError, OSError, ValueError):  # a bad vector: compact sets the file aside
            continue
        texts = [by_hash.get(f"{h:016x}{w:016x}") for h, w in zip(hi.tolist(), lo.tolist(), strict=True)]
        known = [i for i, text in enumerate(texts) if text is not None]
        count.wrong += len(texts) - len(known)  # a hash of no text of the pool: foreign
        if known:
            expected = expect([str(texts[i]) for i in known])
            close = np.abs(vectors[known] - expected) <= (1e-5 if expected.dtype != vectors.dtype else 0)
            count.wrong += int((~close.all(axis=1)).sum())
    return count


def _check(
    store: Path,
    journals: Path,
    pool: list[str],
    excused: dict[str, set[str]],
    spark: SparkSide | None,
    spark_stored: set[str],
    report: TortureReport,
) -> None:
    from polyemb.store import open_store, text_hashes

    stored: dict[str, set[int]] = {name: set() for name in LIVE_MODELS}
    _read_journals(journals, report, stored)
    hashes = text_hashes(pool)
    by_hash = dict(zip(hashes, pool, strict=True))
    models: dict[str, tuple[Any, set[str]]] = {}  # key: (encoder, texts a finished write stored)
    for name in (*LIVE_MODELS, DEAD_MODEL):
        encoder = HashEncoder(name)
        models[encoder.vector_spec().key] = (encoder, {pool[i] for i in stored.get(name, set())})
    if spark is not None:
        models[spark.encoder.vector_spec().key] = (spark.encoder, spark_stored)
    report.texts_stored = sum(len(texts) for _, texts in models.values())
    for compacted in (False, True):
        if compacted:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                open_store(store).compact()  # quietly, alone: every file merged, bad ones set aside
            report.warnings += len(caught)
        stats = {model.key: model for model in open_store(store, read_only=True).stats().models}
        for key, (encoder, texts) in models.items():
            recount = _recount(store / f"model={key}", _expected(encoder), by_hash)
            report.wrong_vectors += recount.wrong
            model = stats.get(key)
            said = (model.files, model.bad_files, model.entries, model.distinct) if model else (0, 0, 0, 0)
            seen = (recount.files, recount.bad, recount.entries, len(recount.hashes))
            if said != seen:
                report.stats_mismatches.append(f"{key}: stats say {said}, the files {seen}")
            if compacted:
                report.duplicates_after_compact += recount.entries - len(recount.hashes) + recount.bad
                report.files_at_end += recount.files
            report.losses += _losses(store, encoder, texts, excused.get(key, set()), report, compacted)
    report.quarantined = sum(1 for _ in store.glob("model=*/_quarantine/*"))


def _expected(encoder: Any) -> Callable[[list[str]], np.ndarray]:
    def expect(texts: list[str]) -> np.ndarray:
        vectors = encoder.encode(texts)
        # The synthetic models' vectors are exact: compared bitwise. A real model's (Spark's) in
        # float64, so that its comparison is within tolerance, not bitwise.
        return np.asarray(vectors, dtype=np.float32 if isinstance(encoder, HashEncoder) else np.float64)

    return expect


def _losses(
    store: Path, encoder: Any, texts: set[str], excused: set[str], report: TortureReport, count_excused: bool
) -> int:
    """Texts a finished write stored that the store no longer finds (every copy corrupted here excused)."""
    from polyemb.store import open_store, text_hashes

    wanted = [text for text in sorted(texts) if text_hashes([text])[0] not in excused]
    if count_excused:
        report.texts_excused += len(texts) - len(wanted)
    if not wanted or encoder.name == DEAD_MODEL if isinstance(encoder, HashEncoder) else not wanted:
        return 0
    _, found = open_store(store, read_only=True).lookup(encoder.vector_spec(), text_hashes(wanted))
    return int((~found).sum())
