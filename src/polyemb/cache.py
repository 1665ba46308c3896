"""A bounded, thread-safe cache of text -> vector in front of an Encoder.

Engines hand texts over in small chunks (DuckDB: at most 2048 rows a call, from several threads)
and never de-duplicate across chunks or queries. The cache makes a text repeated anywhere cost
one encode while it stays among the most recently used.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from polyemb.embedder import Embedder, check_texts, place_nulls
from polyemb.errors import InvalidInputError

if TYPE_CHECKING:
    # Typing only: the command line reads DEFAULT_CACHE_MB for its help without importing torch.
    from polyemb.encoder import Encoder

__all__ = ["CacheStats", "EmbeddingCache"]

DEFAULT_CACHE_MB = 256.0


@dataclass(frozen=True)
class CacheStats:
    """Counters of an :class:`EmbeddingCache` (texts, not calls)."""

    hits: int
    misses: int
    entries: int
    capacity: int


class EmbeddingCache:
    """Vectors of recently seen texts for one Encoder (so keyed by text and model).

    At most ``capacity`` vectors are held, least recently used evicted first. They live in one
    preallocated float32 matrix (``capacity * dim * 4`` bytes, touched only as it fills), so the
    memory is that plus the texts and an index, whatever the number of rows streamed through.
    Safe to use from many threads: lookups and insertions take a lock, encoding does not.

    Use :meth:`shared` to get the one cache of an Encoder, so that several connections or UDFs
    over the same model share it.
    """

    # Encoder -> {store or None -> cache}: a cache in front of a store is that store's, so a text
    # cached without the store is still written to it, and stores never share entries.
    _shared: weakref.WeakKeyDictionary[Encoder, weakref.WeakKeyDictionary[Any, EmbeddingCache]] = (
        weakref.WeakKeyDictionary()
    )
    _plain: weakref.WeakKeyDictionary[Encoder, EmbeddingCache] = weakref.WeakKeyDictionary()
    _shared_lock = threading.Lock()

    def __init__(self, encoder: Encoder, *, max_mb: float = DEFAULT_CACHE_MB) -> None:
        self.encoder = encoder
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, int] = OrderedDict()  # text -> row of _matrix, LRU order
        self._matrix = np.empty((0, encoder.dim), dtype=np.float32)
        self.capacity = 0
        self._hits = 0
        self._misses = 0
        self.resize(max_mb)

    @classmethod
    def shared(cls, encoder: Encoder, *, max_mb: float | None = None, store: Any = None) -> EmbeddingCache:
        """The process-wide cache of ``encoder`` (in front of ``store``); ``max_mb`` resizes it."""
        with cls._shared_lock:
            if store is None:
                cache = cls._plain.get(encoder)
            else:
                cache = cls._shared.setdefault(encoder, weakref.WeakKeyDictionary()).get(store)
            if cache is None:
                cache = cls(encoder, max_mb=DEFAULT_CACHE_MB if max_mb is None else max_mb)
                if store is None:
                    cls._plain[encoder] = cache
                else:
                    cls._shared[encoder][store] = cache
            elif max_mb is not None:
                cache.resize(max_mb)
            return cache

    def resize(self, max_mb: float) -> None:
        """Set the size in MiB of vectors held; shrinking keeps the most recently used."""
        if not 0 <= max_mb * 2**20 < math.inf:  # the bytes too: 1e308 MiB overflows
            raise InvalidInputError(f"the cache size must be a finite number of MB >= 0, got {max_mb!r}")
        capacity = int(max_mb * 2**20 // (self.encoder.dim * 4))
        with self._lock:
            if capacity == self.capacity:
                return
            kept = list(self._slots.items())[-capacity:] if capacity else []
            try:
                matrix = np.empty((capacity, self.encoder.dim), dtype=np.float32)
            except (ValueError, MemoryError) as exc:
                raise InvalidInputError(f"a cache of {max_mb!r} MB cannot be allocated here: {exc}") from exc
            for slot, (_, old) in enumerate(kept):
                matrix[slot] = self._matrix[old]
            self._slots = OrderedDict((text, slot) for slot, (text, _) in enumerate(kept))
            self._matrix = matrix
            self.capacity = capacity

    def stats(self) -> CacheStats:
        """Hits, misses (texts looked up), entries held and capacity."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._slots), self.capacity)

    def clear(self) -> int:
        """Drop every cached vector and reset the counters; returns how many were dropped."""
        with self._lock:
            dropped = len(self._slots)
            self._slots.clear()
            self._hits = self._misses = 0
            return dropped

    def encode_nullable(
        self, texts: Iterable[str | None], *, batch_size: int | None = None, source: Embedder | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`Encoder.encode_nullable` (unit vectors, None -> invalid row), cached.

        Texts not cached are encoded by ``source``: the Encoder itself, or the Encoder behind a
        vector store (:meth:`polyemb.store.VectorStore.bind`), which gives the same vectors.
        """
        items = check_texts(texts, allow_none=True)
        fill = source if source is not None else self.encoder
        return place_nulls(items, self.encoder.dim, lambda present: self._encode(present, batch_size, fill))

    def _encode(self, texts: list[str], batch_size: int | None, source: Embedder) -> np.ndarray:
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        rows_of: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            rows_of.setdefault(text, []).append(row)
        missing: list[str] = []
        with self._lock:
            for text, rows in rows_of.items():
                slot = self._slots.get(text)
                if slot is None:
                    missing.append(text)
                else:
                    self._slots.move_to_end(text)
                    out[rows] = self._matrix[slot]
            self._hits += len(rows_of) - len(missing)
            self._misses += len(missing)
        if missing:
            fresh = source.encode(missing, batch_size=batch_size, show_progress=False)
            for text, vector in zip(missing, fresh, strict=True):
                out[rows_of[text]] = vector
            self._store(missing, fresh)
        return out

    def _store(self, texts: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            if self.capacity == 0:
                return
            start = max(0, len(texts) - self.capacity)  # only the last `capacity` can stay
            for text, vector in zip(texts[start:], vectors[start:], strict=True):
                slot = self._slots.get(text)
                if slot is None:  # another thread may have stored it meanwhile
                    # Rows 0 .. len - 1 are taken until the cache is full; then the LRU row is reused.
                    full = len(self._slots) == self.capacity
                    slot = self._slots.popitem(last=False)[1] if full else len(self._slots)
                    self._slots[text] = slot
                else:
                    self._slots.move_to_end(text)
                self._matrix[slot] = vector
