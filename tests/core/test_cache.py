"""The bounded LRU cache in front of an Encoder."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import polyemb
from polyemb.cache import EmbeddingCache


def test_hits_misses_and_nulls(tiny_encoder: polyemb.Encoder) -> None:
    cache = EmbeddingCache(tiny_encoder, max_mb=1)
    vectors, valid = cache.encode_nullable(["a", None, "b", "a"])
    np.testing.assert_array_equal(valid, [True, False, True, True])
    expected, _ = tiny_encoder.encode_nullable(["a", None, "b", "a"])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert cache.stats() == polyemb.cache.CacheStats(hits=0, misses=2, entries=2, capacity=cache.capacity)
    again, _ = cache.encode_nullable(["b", "c"])
    np.testing.assert_allclose(again, tiny_encoder.encode(["b", "c"]), atol=1e-6)
    assert (cache.stats().hits, cache.stats().misses) == (1, 3)


def test_least_recently_used_is_evicted(tiny_encoder: polyemb.Encoder) -> None:
    cache = EmbeddingCache(tiny_encoder, max_mb=3 * tiny_encoder.dim * 4 / 2**20)
    assert cache.capacity == 3
    cache.encode_nullable(["a", "b", "c"])
    cache.encode_nullable(["a"])  # a is now the most recent
    cache.encode_nullable(["d"])  # evicts b
    before = cache.stats().misses
    vectors, _ = cache.encode_nullable(["a", "c", "d"])
    assert cache.stats().misses == before  # all three still cached
    np.testing.assert_allclose(vectors, tiny_encoder.encode(["a", "c", "d"]), atol=1e-6)
    cache.encode_nullable(["b"])
    assert cache.stats().misses == before + 1 and cache.stats().entries == 3


def test_more_new_texts_than_capacity_in_one_call(tiny_encoder: polyemb.Encoder) -> None:
    cache = EmbeddingCache(tiny_encoder, max_mb=2 * tiny_encoder.dim * 4 / 2**20)
    texts = [f"text {i}" for i in range(10)]
    vectors, _ = cache.encode_nullable(texts)
    np.testing.assert_allclose(vectors, tiny_encoder.encode(texts), atol=1e-6)
    assert cache.stats().entries == 2
    np.testing.assert_allclose(cache.encode_nullable(texts[-2:])[0], vectors[-2:], atol=1e-6)


def test_resize_and_clear(tiny_encoder: polyemb.Encoder) -> None:
    cache = EmbeddingCache(tiny_encoder, max_mb=1)
    texts = [f"t{i}" for i in range(10)]
    cache.encode_nullable(texts)
    cache.resize(4 * tiny_encoder.dim * 4 / 2**20)
    assert cache.capacity == 4 and cache.stats().entries == 4
    misses = cache.stats().misses
    np.testing.assert_allclose(
        cache.encode_nullable(texts[-4:])[0], tiny_encoder.encode(texts[-4:]), atol=1e-6
    )
    assert cache.stats().misses == misses  # the 4 most recent were kept
    assert cache.clear() == 4 and cache.stats().entries == 0
    zero = EmbeddingCache(tiny_encoder, max_mb=0)
    np.testing.assert_allclose(zero.encode_nullable(["x"])[0], tiny_encoder.encode(["x"]), atol=1e-6)
    assert zero.stats().entries == 0
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(polyemb.InvalidInputError, match="a finite number of MB >= 0"):
            EmbeddingCache(tiny_encoder, max_mb=bad)
    with pytest.raises(polyemb.InvalidInputError, match="cannot be allocated here"):
        EmbeddingCache(tiny_encoder, max_mb=1e30)  # more rows than numpy can index
    with pytest.raises(polyemb.InvalidInputError, match="a finite number of MB >= 0"):
        EmbeddingCache(tiny_encoder, max_mb=1e308)  # finite, but not in bytes


def test_rows_after_growing_clearing_and_evicting_hold_their_own_texts(tiny_encoder: polyemb.Encoder) -> None:
    row_mb = tiny_encoder.dim * 4 / 2**20
    cache = EmbeddingCache(tiny_encoder, max_mb=4 * row_mb)
    texts = [f"text {i}" for i in range(20)]
    expected = dict(zip(texts, tiny_encoder.encode(texts), strict=True))

    def check(held: list[str]) -> None:
        misses = cache.stats().misses
        np.testing.assert_allclose(cache.encode_nullable(held)[0], [expected[t] for t in held], atol=1e-6)
        assert cache.stats().misses == misses  # every one was cached, in a row of its own

    cache.encode_nullable(texts[:6])  # full: text 2 .. text 5 held
    cache.resize(8 * row_mb)  # the four kept, four rows free
    cache.encode_nullable(texts[6:10])
    check(texts[2:10])
    cache.encode_nullable(texts[10:13])  # evicts the three least recently used
    check(texts[5:13])
    cache.clear()
    cache.encode_nullable(texts[13:20])
    check(texts[13:20])


def test_an_empty_cache_holds_nothing_per_row(tiny_encoder: polyemb.Encoder) -> None:
    """Only the vector matrix scales with the capacity (an earlier cache listed its free rows)."""
    tracemalloc.start()
    try:
        cache = EmbeddingCache(tiny_encoder, max_mb=64)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cache.capacity == 64 * 2**20 // (tiny_encoder.dim * 4) > 100_000
    beyond_vectors = held - cache.capacity * tiny_encoder.dim * 4
    assert beyond_vectors < 2**20, f"{beyond_vectors / 2**20:.1f} MiB held beside the vectors"


def test_shared_cache_per_encoder(tiny_encoder: polyemb.Encoder) -> None:
    assert EmbeddingCache.shared(tiny_encoder) is EmbeddingCache.shared(tiny_encoder)


def test_threads(tiny_encoder: polyemb.Encoder, run_threads) -> None:  # type: ignore[no-untyped-def]
    cache = EmbeddingCache(tiny_encoder, max_mb=20 * tiny_encoder.dim * 4 / 2**20)
    texts = [f"shared text {i}" for i in range(60)]
    expected = tiny_encoder.encode(texts)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            rows = rng.choice(60, size=15)
            np.testing.assert_allclose(
                cache.encode_nullable([texts[r] for r in rows])[0], expected[rows], atol=1e-5
            )

    run_threads(work, 6)
    assert cache.stats().entries <= 20
