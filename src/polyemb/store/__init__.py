"""A persistent vector store: each text is embedded once per model, ever.

An on-disk, content-addressed map from (model key, text hash) to a float32 vector, laid out as a
folder of Parquet files that DuckDB, Spark and pandas read with their own readers::

    STORE/
      _polyemb_store.json                 marks the folder as a store (format and version)
      model=<key>/                        one folder per model key (VectorSpec.key)
        _model.json                       what the key stands for: provenance, dim, settings
        run=<run>/part-<n>.parquet        text_hash STRING, vector LIST<FLOAT>

- The **model key** is 16 hex digits of a SHA-256 over everything that decides a vector: the
  model's content (hub commit or a hash of its files), max_seq_length, precision, normalization,
  pooling and polyemb's vector format (:class:`polyemb.embedder.VectorSpec`). Change any of them
  and the vectors land under another key: a store is never read for another model.
- The **text hash** is the first 32 hex digits (128 bits) of the SHA-256 of the text's UTF-8
  bytes, lone surrogates read as U+FFFD as the encoder reads them. The same in SQL: DuckDB
  ``left(sha256(text), 32)``, Spark ``substr(sha2(text, 256), 1, 32)``.
- Every writer (a process, or a Spark job) writes its own ``run=`` folder, and every file
  appears by an atomic rename when complete. So concurrent writers never touch each other's
  files, a killed writer leaves every file it had finished (and at most a hidden ``.tmp``), and
  readers see whole files only. The same text written twice is harmless: readers take either
  copy (they are the same vector) and ``compact`` keeps one.

The modules: :mod:`~polyemb.store.layout` (the folder layout, which Spark's writer imports too),
:mod:`~polyemb.store.keys` (text hashes), :mod:`~polyemb.store.index` (the in-memory index),
:mod:`~polyemb.store.writer` (atomic writes), :mod:`~polyemb.store.stats` (what counts, when to
compact), :mod:`~polyemb.store.maintenance` (compact, gc), :mod:`~polyemb.store.stored` (an
encoder behind a store) and
:mod:`~polyemb.store.vector_store` (the store object). None imports torch.

Example:
    >>> store = polyemb.open_store("vectors/")
    >>> vectors = store.encode(["a text", "another"], encoder=encoder)   # embeds only what is new
    >>> store.stats()
"""

from __future__ import annotations

from polyemb.errors import StoreError
from polyemb.store.keys import text_hashes
from polyemb.store.layout import MARKER, QUARANTINE, is_store
from polyemb.store.maintenance import CompactReport, GcReport
from polyemb.store.stats import ModelStats, StoreStats
from polyemb.store.stored import RunStats, StoredEncoder, embedder_for
from polyemb.store.vector_store import VectorStore, open_store

__all__ = [
    "MARKER",
    "CompactReport",
    "GcReport",
    "ModelStats",
    "QUARANTINE",
    "RunStats",
    "StoreError",
    "StoreStats",
    "StoredEncoder",
    "VectorStore",
    "embedder_for",
    "is_store",
    "open_store",
    "text_hashes",
]
