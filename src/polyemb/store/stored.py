"""An encoder behind a store: what the adapters encode with when given ``store=``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from polyemb.batching import check_batch_size
from polyemb.embedder import Embedder, TextEncoder
from polyemb.errors import InvalidInputError
from polyemb.progress import progress_bar
from polyemb.store.keys import text_digests

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.store.vector_store import VectorStore

__all__ = ["WRITE_ROWS", "RunStats", "StoredEncoder", "default_encoder_or", "embedder_for"]

# New vectors per file: a writer killed mid-run keeps every file it finished.
WRITE_ROWS = 16_384
# Fewer texts to embed than this show no progress bar unless asked.
_QUIET_BELOW = 5_000


@dataclass
class RunStats:
    """Counters of a :class:`StoredEncoder`: texts looked up (distinct in a call), found, embedded, written.

    Summed over calls: a text that two calls encode is looked up twice, and found the second time.
    """

    looked_up: int = 0
    found: int = 0
    embedded: int = 0
    written: int = 0
    files_written: int = 0


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
        missing = np.flatnonzero(~found)
        written = files = 0
        with progress_bar(
            desc="embedding new texts",
            unit="text",
            total=len(missing),
            show=show_progress,
            quiet_below=_QUIET_BELOW,
        ) as bar:
            for start in range(0, len(missing), WRITE_ROWS):
                rows = missing[start : start + WRITE_ROWS].tolist()
                vectors[rows] = self.encoder.encode(
                    [unique[i] for i in rows], batch_size=batch_size, normalize=normalize, show_progress=False
                )
                if self.store.append(spec, [digests[i].hex() for i in rows], vectors[rows]) is not None:
                    written += len(rows)
                    files += 1
                bar.update(len(rows))
        with self._stats_lock:
            self.stats.looked_up += len(unique)
            self.stats.found += int(found.sum())
            self.stats.embedded += len(missing)
            self.stats.written += written
            self.stats.files_written += files
        return vectors if len(unique) == len(items) else vectors[inverse]


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
