"""Text hashes, the store's keys: 128 bits of SHA-256, as hex, bytes or two uint64 words.

The same hash in SQL: DuckDB ``left(sha256(text), 32)``, Spark ``substr(sha2(text, 256), 1, 32)``.
Lookups compare the two words of each hash, vectorized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from polyemb.embedder import replace_surrogates
from polyemb.errors import StoreError
from polyemb.store.layout import HASH_COLUMN

__all__ = ["digest_words", "hash_words", "text_digests", "text_hashes"]


def text_hashes(texts: Iterable[str]) -> list[str]:
    """The store key of each text: 32 hex digits (128 bits) of the SHA-256 of its UTF-8 bytes.

    Lone surrogates (which UTF-8 cannot hold) are read as U+FFFD, as the encoder reads them.

    Args:
        texts: The texts.

    Returns:
        One hash per text, in order.

    Example:
        >>> text_hashes(["hello"])
        ['2cf24dba5fb0a30e26e83b2ac5b9e29e']
    """
    return [digest.hex() for digest in text_digests(texts)]


def text_digests(texts: Iterable[str]) -> list[bytes]:
    """The first 16 bytes of each text's SHA-256: :func:`text_hashes` before the hex."""
    out = []
    for text in texts:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            data = replace_surrogates(text).encode("utf-8")
        out.append(hashlib.sha256(data).digest()[:16])
    return out


def digest_words(digests: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """16-byte digests as (high, low) uint64 words, as :func:`hash_words` reads their hex."""
    return _words(b"".join(digests), len(digests))


def hash_words(
    hashes: pa.Array | pa.ChunkedArray | Sequence[str], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """32-hex-digit hashes as two uint64 words each (high, low), vectorized.

    Raises:
        StoreError: A hash is NULL or not 32 hex digits (``source`` says where it came from).
    """
    array = pa.array(hashes, pa.string()) if not isinstance(hashes, (pa.Array, pa.ChunkedArray)) else hashes
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type != pa.string():
        array = array.cast(pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=n + 1, offset=array.offset * 4)
    if array.null_count or not np.array_equal(np.diff(offsets), np.full(n, 32, dtype=np.int32)):
        raise StoreError(f"{source}: the {HASH_COLUMN} column must hold 32 hex digits in every row")
    raw = array.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[0]) + 32 * n]
    try:
        packed = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        packed = b""
    if len(packed) != 16 * n:  # fromhex skips whitespace: a short result is a malformed hash
        raise StoreError(f"{source}: the {HASH_COLUMN} column holds a value that is not 32 hex digits")
    return _words(packed, n)


def _words(packed: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.frombuffer(packed, dtype=">u8").reshape(n, 2).astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy()
