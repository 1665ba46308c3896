"""An encoder behind a store: what the adapters encode with when given ``store=``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from polyemb.batching import check_batch_size
from polyemb.embedder import Embedder, TextEncoder, VectorSpec
from polyemb.errors import InvalidInputError
from polyemb.progress import progress_bar
from polyemb.store.keys import text_digests

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.store.vector_store import VectorStore

__all__ = ["WRITE_ROWS", "InFlight", "RunStats", "StoredEncoder", "default_encoder_or", "embedder_for"]

# New vectors per file: a writer killed mid-run keeps every file it finished.
WRITE_ROWS = 16_384
# Fewer texts to embed than this show no progress bar unless asked.
_QUIET_BELOW = 5_000


@dataclass
class RunStats:
    """Counters of a :class:`StoredEncoder`: texts looked up (distinct in a call), found, embedded, written.

    Summed over calls: a text that two calls encode is looked up twice, and found the second time.
    ``found`` counts the texts this call did not embed: stored ones, and those another call of this
    process was embedding meanwhile (it waits for them).
    """

    looked_up: int = 0
    found: int = 0
    embedded: int = 0
    written: int = 0
    files_written: int = 0


class Claim:
    """Texts that one call embeds while other calls of the process wait for their vectors."""

    def __init__(self, in_flight: InFlight) -> None:
        self.keys: list[tuple[str, bytes]] = []  # (model key, text digest) of each text claimed
        self.rows: list[int] = []  # their rows in the claiming call
        self.vectors: np.ndarray | None = None  # their vectors once done; None if the call failed
        self._in_flight = in_flight
        self._done = threading.Event()

    def finish(self, vectors: np.ndarray | None) -> None:
        """Give the texts up, with their vectors (a copy of their own) or None, once."""
        if self._done.is_set():
            return
        self.vectors = vectors
        self._in_flight.release(self)
        self._done.set()

    def wait(self) -> np.ndarray | None:
        """The claimed texts' vectors, once the claiming call is done; None if it failed."""
        self._done.wait()
        return self.vectors


class InFlight:
    """Texts being embedded in this process, per model: a text two calls (threads) need is embedded once.

    A call claims the texts of its next file that no other call is embedding, embeds and stores
    them, and gives them up; once its own are done, it waits for the others. It never waits while
    holding a claim, so calls cannot wait for each other in a circle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, bytes], tuple[Claim, int]] = {}

    def claim(
        self, claim: Claim, key: str, digests: list[bytes], rows: list[int]
    ) -> list[tuple[int, Claim, int]]:
        """Claim for ``claim`` the ``rows`` (of ``digests``) of model ``key`` that no call is embedding.

        Call it inside the ``try`` whose ``finally`` finishes ``claim``: the texts are claimed in
        one step, after ``claim`` knows them, so an interrupt anywhere leaves none claimed for good.

        Returns:
            ``(row, claim, position in that claim)`` of the texts that other calls are embedding.
        """
        others: list[tuple[int, Claim, int]] = []
        with self._lock:
            for row in rows:
                text = (key, digests[row])
                held = self._claims.get(text)
                if held is None:
                    claim.keys.append(text)
                    claim.rows.append(row)
                else:
                    others.append((row, *held))
            entries = {text: (claim, position) for position, text in enumerate(claim.keys)}
            self._claims.update(entries)  # one step
        return others

    def release(self, claim: Claim) -> None:
        """Forget a claim's texts: a later call looks them up in the store."""
        with self._lock:
            for text in claim.keys:
                if self._claims.get(text, (None,))[0] is claim:  # not claimed yet if interrupted
                    del self._claims[text]


def take_from_others(others: list[tuple[int, Claim, int]], vectors: np.ndarray) -> list[int]:
    """Copy into ``vectors`` the rows that other calls embedded; the rows whose call failed."""
    failed: list[int] = []
    for row, claim, position in others:
        theirs = claim.wait()
        if theirs is not None:
            vectors[row] = theirs[position]
        else:
            failed.append(row)
    return failed


class StoredEncoder(TextEncoder):
    """An :class:`~polyemb.encoder.Encoder` behind a :class:`VectorStore`: an Embedder.

    ``encode`` looks every distinct text up in the store, embeds only the ones it lacks for this
    model (in files of ``WRITE_ROWS``, each stored as soon as it is done), and returns the same
    vectors the encoder gives, in input order. ``stats`` counts what it did.
    """

    def __init__(self, store: VectorStore, encoder: Encoder) -> None:
        self.store = store
        self.encoder = encoder
        self.dim = encoder.dim
        self.stats = RunStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoredEncoder({self.store!r}, {self.encoder!r})"

    @property
    def provenance(self) -> str:
        """The encoder's provenance."""
        return self.encoder.provenance

    def _encode(
        self, items: list[str], *, batch_size: int | None, normalize: bool, show_progress: bool | None
    ) -> np.ndarray:
        batch_size = check_batch_size(batch_size)  # here, not only when a text is missing from the store
        spec = self.encoder.vector_spec(normalize=normalize)
        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(t, len(index)) for t in items), dtype=np.intp, count=len(items)
        )
        unique = list(index)
        digests = text_digests(unique)
        vectors, found = self.store.lookup_digests(spec, digests)
        missing = np.flatnonzero(~found).tolist()
        embedded = written = files = 0
        with progress_bar(
            desc="embedding new texts",
            unit="text",
            total=len(missing),
            show=show_progress,
            quiet_below=_QUIET_BELOW,
        ) as bar:
            while missing:  # again for texts whose other call failed
                others: list[tuple[int, Claim, int]] = []
                for start in range(0, len(missing), WRITE_ROWS):
                    claim = Claim(self.store.in_flight)
                    try:
                        others += self.store.in_flight.claim(
                            claim, spec.key, digests, missing[start : start + WRITE_ROWS]
                        )
                        new, stored = self._fill(
                            spec,
                            claim.rows,
                            unique,
                            digests,
                            vectors,
                            batch_size=batch_size,
                            normalize=normalize,
                        )
                        # Their own copy: the caller may change the vectors it gets back.
                        claim.finish(vectors[claim.rows])
                    finally:
                        claim.finish(None)  # no-op once finished above
                    embedded += new
                    written += new if stored else 0
                    files += stored
                    bar.update(len(claim.rows))
                missing = take_from_others(others, vectors)
                bar.update(len(others) - len(missing))
        with self._stats_lock:
            self.stats.looked_up += len(unique)
            self.stats.found += len(unique) - embedded
            self.stats.embedded += embedded
            self.stats.written += written
            self.stats.files_written += files
        return vectors if len(unique) == len(items) else vectors[inverse]

    def _fill(
        self,
        spec: VectorSpec,
        rows: list[int],
        unique: list[str],
        digests: list[bytes],
        vectors: np.ndarray,
        *,
        batch_size: int | None,
        normalize: bool,
    ) -> tuple[int, bool]:
        """Fill ``rows`` of ``vectors`` (claimed): from the store, else embedded and stored.

        The store may hold some now: a call that finished since the first lookup stored them.

        Returns:
            How many were embedded, and whether they were stored.
        """
        if not rows:
            return 0, False
        again, found = self.store.lookup_digests(spec, [digests[i] for i in rows])
        vectors[rows] = again
        new = [row for row, hit in zip(rows, found.tolist(), strict=True) if not hit]
        if not new:
            return 0, False
        vectors[new] = self.encoder.encode(
            [unique[i] for i in new], batch_size=batch_size, normalize=normalize, show_progress=False
        )
        return len(new), self.store.append(spec, [digests[i].hex() for i in new], vectors[new]) is not None


def default_encoder_or(encoder: Encoder | None) -> Encoder:
    """``encoder``, else :func:`polyemb.default_encoder` (loaded on first use)."""
    from polyemb.encoder import default_encoder  # here: importing the store must not import torch

    return encoder if encoder is not None else default_encoder()


def embedder_for(encoder: Encoder | None, store: VectorStore | None) -> Embedder:
    """What the adapters encode with: the encoder (default: the default one), behind ``store`` if given.

    Args:
        encoder: The encoder; None: :func:`polyemb.default_encoder`.
        store: A store to look texts up in (and write new vectors to); None: none.

    Returns:
        The encoder itself, or a :class:`StoredEncoder` around it.

    Raises:
        InvalidInputError: ``store`` is not a :class:`VectorStore`.

    Example:
        >>> embedder_for(encoder, polyemb.open_store("vectors/")).encode(["a text"])
    """
    model = default_encoder_or(encoder)
    if store is None:
        return model
    from polyemb.store.vector_store import VectorStore  # here: that module imports this one

    if not isinstance(store, VectorStore):
        raise InvalidInputError(
            f"store must be a VectorStore (polyemb.open_store(path)), got {type(store).__name__}"
        )
    return store.bind(model)
