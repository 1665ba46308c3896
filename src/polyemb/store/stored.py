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
    """Texts that one call embeds (rows of its matrix) while other calls of the process wait for them."""

    def __init__(
        self, in_flight: InFlight, keys: list[tuple[str, bytes]], rows: list[int], vectors: np.ndarray
    ) -> None:
        self.keys = keys  # (model key, text digest) of each row
        self.rows = rows
        self.vectors = vectors  # the claiming call's matrix, its rows filled once done
        self.ok = False
        self._in_flight = in_flight
        self._done = threading.Event()

    def finish(self, *, ok: bool) -> None:
        """Give the texts up: to the waiting calls (``ok``: their rows are filled) and to later calls."""
        if self._done.is_set():
            return
        self._in_flight.release(self)
        self.ok = ok
        self._done.set()

    def wait(self) -> bool:
        """Wait for the claiming call; True if it filled the rows."""
        self._done.wait()
        return self.ok


class InFlight:
    """Texts being embedded in this process, per model: a text two calls (threads) need is embedded once.

    A call claims the texts no other call is embedding, embeds them, and only then waits for the
    others: it never waits while holding a claim, so calls cannot wait for each other in a circle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, bytes], tuple[Claim, int]] = {}

    def claim(
        self, key: str, digests: list[bytes], rows: list[int], vectors: np.ndarray, chunk: int
    ) -> tuple[list[Claim], list[tuple[int, Claim, int]]]:
        """Claim ``rows`` (of ``digests`` and ``vectors``) for model ``key``, ``chunk`` rows a claim.

        Returns:
            This call's claims, and ``(row, claim, row in the claim's matrix)`` of the texts that
            other calls are embedding.
        """
        mine: list[int] = []
        others: list[tuple[int, Claim, int]] = []
        claims: list[Claim] = []
        with self._lock:
            for row in rows:
                held = self._claims.get((key, digests[row]))
                if held is None:
                    mine.append(row)
                else:
                    others.append((row, *held))
            for start in range(0, len(mine), chunk):
                part = mine[start : start + chunk]
                claim = Claim(self, [(key, digests[i]) for i in part], part, vectors)
                self._claims.update((text, (claim, i)) for text, i in zip(claim.keys, part, strict=True))
                claims.append(claim)
        return claims, others

    def release(self, claim: Claim) -> None:
        """Forget a finished claim's texts: a later call looks them up in the store."""
        with self._lock:
            for text in claim.keys:
                del self._claims[text]


def take_from_others(others: list[tuple[int, Claim, int]], vectors: np.ndarray) -> list[int]:
    """Copy into ``vectors`` the rows that other calls embedded; the rows whose call failed."""
    failed: list[int] = []
    for row, claim, their_row in others:
        if claim.wait():
            vectors[row] = claim.vectors[their_row]
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
                claims, others = self.store.in_flight.claim(spec.key, digests, missing, vectors, WRITE_ROWS)
                try:
                    # Stored since the first lookup (by a call that finished meanwhile)?
                    claimed = [row for claim in claims for row in claim.rows]
                    stored_now = set(self._look_up_again(spec, digests, claimed, vectors))
                    for claim in claims:
                        rows = [row for row in claim.rows if row not in stored_now]
                        if rows:
                            vectors[rows] = self.encoder.encode(
                                [unique[i] for i in rows],
                                batch_size=batch_size,
                                normalize=normalize,
                                show_progress=False,
                            )
                            hexes = [digests[i].hex() for i in rows]
                            if self.store.append(spec, hexes, vectors[rows]) is not None:
                                written += len(rows)
                                files += 1
                        claim.finish(ok=True)
                        embedded += len(rows)
                        bar.update(len(claim.rows))
                finally:
                    for claim in claims:
                        claim.finish(ok=False)  # no-op for those finished above
                missing = take_from_others(others, vectors)
        with self._stats_lock:
            self.stats.looked_up += len(unique)
            self.stats.found += len(unique) - embedded
            self.stats.embedded += embedded
            self.stats.written += written
            self.stats.files_written += files
        return vectors if len(unique) == len(items) else vectors[inverse]

    def _look_up_again(
        self, spec: VectorSpec, digests: list[bytes], rows: list[int], vectors: np.ndarray
    ) -> list[int]:
        """Fill ``rows`` of ``vectors`` that the store holds now; those rows."""
        if not rows:
            return []
        again, found = self.store.lookup_digests(spec, [digests[i] for i in rows])
        hits = np.flatnonzero(found)
        taken = [rows[i] for i in hits.tolist()]
        vectors[taken] = again[hits]
        return taken


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
