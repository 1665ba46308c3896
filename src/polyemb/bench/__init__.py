"""The benchmark commands ``polyemb bench``, ``bench-memory``, ``bench-store`` and ``bench-join``.

Each command's module, and the child programs they start:

- :mod:`~polyemb.bench.texts`: the input texts and scenarios.
- :mod:`~polyemb.bench.encode`: timing sides in turns, and the report (``bench``); the sides
  themselves in :mod:`~polyemb.bench.sides`.
- :mod:`~polyemb.bench.memory`: each precision in a process of its own (``bench-memory``).
- :mod:`~polyemb.bench.store`: the vector store's re-runs and lookups (``bench-store``).
- :mod:`~polyemb.bench.join`: retrieval and semantic joins (``bench-join``).
- ``_peer_child``, ``_footprint_child``, ``_lookup_child``: the programs of other processes.

This package imports nothing itself: the child programs run as ``python -m
polyemb.bench._...``, which imports this package first, and ``bench-memory`` measures a child's
memory before polyemb loads anything. Import the module you need.
"""
