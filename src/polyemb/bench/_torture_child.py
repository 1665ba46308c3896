"""A torture worker: random store operations until a deadline, each journaled once finished.

Run by :mod:`polyemb.bench.torture` as ``python -m polyemb.bench._torture_child STORE JOURNALS
SETTINGS`` (a spawned worker), or as a *forker*: a process that opens the store, writes to it,
then forks workers that inherit the open store (as gunicorn ``--preload`` or Spark's Python
daemon do), re-forks the ones that die, and SIGKILLs one of its own children on SIGUSR1.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polyemb.bench.torture import LIVE_MODELS, HashEncoder, pool_texts
from polyemb.errors import PolyembError
from polyemb.store import VectorStore, open_store, stored, text_hashes

__all__ = ["main"]


class _Journal:
    """One line per finished operation, flushed: a SIGKILL loses at most the line being written."""

    def __init__(self, folder: Path) -> None:
        self._handle = (folder / f"journal-{os.getpid()}.jsonl").open("a", encoding="utf-8")

    def write(self, **entry: Any) -> None:
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()


def _encode(store: VectorStore, rng: random.Random, texts: list[str], journal: _Journal) -> None:
    model = rng.choice(LIVE_MODELS)
    encoder = HashEncoder(model)
    ids = rng.sample(range(len(texts)), rng.randint(1, 60))
    vectors = store.bind(encoder).encode([texts[i] for i in ids])  # type: ignore[arg-type]
    expected = encoder.encode([texts[i] for i in ids])
    wrong = int((vectors != expected).any(axis=1).sum())
    journal.write(op="encode", model=model, ids=ids, wrong=wrong)


def _read(root: Path, rng: random.Random, texts: list[str], journal: _Journal) -> None:
    model = rng.choice(LIVE_MODELS)
    encoder = HashEncoder(model)
    ids = rng.sample(range(len(texts)), rng.randint(1, 200))
    reader = open_store(root, read_only=True, create=False)
    vectors, found = reader.lookup(encoder.vector_spec(), text_hashes(texts[i] for i in ids))
    expected = encoder.encode([texts[i] for i in ids])
    wrong = int((vectors[found] != expected[found]).any(axis=1).sum())
    journal.write(op="read", model=model, found=int(found.sum()), wrong=wrong)


def _stats(store: VectorStore, journal: _Journal) -> None:
    journal.write(op="stats", entries=sum(model.entries for model in store.stats().models))


def _compact(store: VectorStore, journal: _Journal) -> None:
    report = store.compact()
    journal.write(op="compact", files_before=report.files_before, files_after=report.files_after)


def _gc(store: VectorStore, keep: Sequence[str], journal: _Journal) -> None:
    report = store.gc(list(keep))
    journal.write(op="gc", dropped=report.dropped)


def work(root: Path, journals: Path, settings: dict[str, Any], store: VectorStore | None = None) -> None:
    """Random operations until the deadline; errors and warnings journaled, never raised."""
    stored.WRITE_ROWS = int(settings["write_rows"])  # small files: a kill lands mid-write often
    # A worker still running a minute past the deadline is stuck: it writes where, and leaves.
    hang = (journals / f"hang-{os.getpid()}.txt").open("w", encoding="utf-8")
    faulthandler.dump_traceback_later(
        max(1.0, float(settings["deadline"]) - time.time() + 60), exit=True, file=hang
    )
    store = store if store is not None else open_store(root)
    journal = _Journal(journals)
    texts = pool_texts(int(settings["texts"]))
    rng = random.Random(f"{settings['seed']}-{os.getpid()}")
    operations: dict[str, tuple[float, Callable[[], None]]] = {
        "encode": (60, lambda: _encode(store, rng, texts, journal)),
        "read": (15, lambda: _read(root, rng, texts, journal)),
        "stats": (8, lambda: _stats(store, journal)),
        "compact": (10, lambda: _compact(store, journal)),
        "gc": (3, lambda: _gc(store, settings["keep"], journal)),
    }
    names = list(operations)
    weights = [operations[name][0] for name in names]
    while time.time() < float(settings["deadline"]):
        name = rng.choices(names, weights)[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                operations[name][1]()
            except Exception as exc:  # journaled: the check counts every error a worker met
                journal.write(
                    op="error",
                    during=name,
                    type=type(exc).__name__,
                    documented=isinstance(exc, PolyembError),
                    message=str(exc)[:500],
                )
        if caught:
            journal.write(op="warnings", count=len(caught), first=str(caught[0].message)[:300])
    faulthandler.cancel_dump_traceback_later()
    hang.close()
    os.unlink(hang.name)


def _forker(root: Path, journals: Path, settings: dict[str, Any]) -> None:
    store = open_store(root)
    # The parent writes first: its run folder and file numbers are in use when it forks.
    store.bind(HashEncoder(LIVE_MODELS[0])).encode(pool_texts(int(settings["texts"]))[:5])  # type: ignore[arg-type]
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))
    (journals / "forker-ready").touch()  # the torture may now ask it to kill a child
    children: set[int] = set()
    rng = random.Random(f"{settings['seed']}-forker")
    kills = forks = 0
    while time.time() < float(settings["deadline"]):
        while len(children) < int(settings["forked"]):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)
                code = 0
                try:
                    work(root, journals, settings, store)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            children.add(pid)
            forks += 1
        if asked:
            asked.clear()
            os.kill(rng.choice(sorted(children)), signal.SIGKILL)  # a child not yet reaped: ours
            kills += 1
        _reap(children, block=False)
        time.sleep(0.05)
    while children:
        _reap(children, block=True)
    _Journal(journals).write(op="forker", forks=forks, kills=kills)


def _reap(children: set[int], *, block: bool) -> None:
    while children:
        pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        if block:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker (or a forker) as the torture asks."""
    root, journals, settings_text = argv if argv is not None else sys.argv[1:]
    settings = json.loads(settings_text)
    if settings.get("mode") == "forker":
        _forker(Path(root), Path(journals), settings)
    else:
        work(Path(root), Path(journals), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
