"""A bounded, thread-safe cache of text -> vector in front of an Encoder.

Engines hand texts over in small chunks (DuckDB: at most 2048 rows a call, from several threads)
and never de-duplicate across chunks or queries. The cache makes a text repeated anywhere cost
one encode while it stays among the most recently used.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from polyemb.encoder import Encoder, check_texts
from polyemb.errors import InvalidInputError

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

    At most ``capacity`` vectors are held, least recently used evicted first; memory is about
    ``capacity * dim * 4`` bytes plus the texts. Safe to use from many threads: lookups and
    insertions take a lock, encoding does not.

    Use :meth:`shared` to get the one cache of an Encoder, so that several connections or UDFs
    over the same model share it.
    """

    _shared: weakref.WeakKeyDictionary[Encoder, EmbeddingCache] = weakref.WeakKeyDictionary()
    _shared_lock = threading.Lock()

    def __init__(self, encoder: Encoder, *, max_mb: float = DEFAULT_CACHE_MB) -> None:
        if not max_mb >= 0:
            raise InvalidInputError(f"the cache size must be >= 0 MB, got {max_mb!r}")
        self.encoder = encoder
        self.capacity = int(max_mb * 2**20 // (encoder.dim * 4))
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @classmethod
    def shared(cls, encoder: Encoder, *, max_mb: float | None = None) -> EmbeddingCache:
        """The process-wide cache of ``encoder``; ``max_mb`` resizes it when given."""
        with cls._shared_lock:
            cache = cls._shared.get(encoder)
            if cache is None:
                cache = cls(encoder, max_mb=DEFAULT_CACHE_MB if max_mb is None else max_mb)
                cls._shared[encoder] = cache
            elif max_mb is not None:
                cache.resize(max_mb)
            return cache

    def resize(self, max_mb: float) -> None:
        """Change the capacity, evicting the least recently used vectors if it shrinks."""
        if not max_mb >= 0:
            raise InvalidInputError(f"the cache size must be >= 0 MB, got {max_mb!r}")
        with self._lock:
            self.capacity = int(max_mb * 2**20 // (self.encoder.dim * 4))
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)

    def stats(self) -> CacheStats:
        """Hits, misses (texts looked up), entries held and capacity."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._vectors), self.capacity)

    def clear(self) -> int:
        """Drop every cached vector and reset the counters; returns how many were dropped."""
        with self._lock:
            dropped = len(self._vectors)
            self._vectors.clear()
            self._hits = self._misses = 0
            return dropped

    def encode_nullable(
        self, texts: Iterable[str | None], *, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`Encoder.encode_nullable` (unit vectors, None -> invalid row), cached."""
        items = check_texts(texts, allow_none=True)
        valid = np.fromiter((text is not None for text in items), dtype=bool, count=len(items))
        out = np.zeros((len(items), self.encoder.dim), dtype=np.float32)
        rows_of: dict[str, list[int]] = {}
        for row, text in enumerate(items):
            if text is not None:
                rows_of.setdefault(text, []).append(row)
        missing: list[str] = []
        with self._lock:
            for text, rows in rows_of.items():
                vector = self._vectors.get(text)
                if vector is None:
                    missing.append(text)
                else:
                    self._vectors.move_to_end(text)
                    out[rows] = vector
            self._hits += len(rows_of) - len(missing)
            self._misses += len(missing)
        if missing:
            fresh = self.encoder.encode(missing, batch_size=batch_size, show_progress=False)
            for text, vector in zip(missing, fresh, strict=True):
                out[rows_of[text]] = vector
            self._store(missing, fresh)
        return out, valid

    def _store(self, texts: list[str], vectors: np.ndarray) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            start = max(0, len(texts) - self.capacity)  # only the last `capacity` can stay
            for text, vector in zip(texts[start:], vectors[start:], strict=True):
                self._vectors[text] = vector.copy()
                self._vectors.move_to_end(text)
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)
