"""Cosine similarity, top-k search and join pairs on float32 matrices (no engine types here).

- :mod:`~polyemb.similarity.vectors`: unit rows and cosines (:func:`normalize_rows`, :func:`cosine`,
  :func:`query_row`);
- :mod:`~polyemb.similarity.ranking`: each query row's best corpus rows, block by block
  (:func:`top_k`, :func:`top_pairs`, :func:`neighbourhood` for margin and CSLS);
- :mod:`~polyemb.similarity.joins`: a join's pairs as row positions (:func:`check_join`,
  :func:`join_rows`).

How a pair is scored comes from the table in :mod:`polyemb.scores`.
"""

from polyemb.similarity.joins import JoinRows, check_join, join_rows
from polyemb.similarity.ranking import (
    BLOCK_ROWS,
    NEIGHBOURS,
    Neighbourhoods,
    Pairs,
    neighbourhood,
    top_k,
    top_pairs,
)
from polyemb.similarity.vectors import cosine, cosine_of_valid, normalize_rows, paired_cosines, query_row

__all__ = [
    "BLOCK_ROWS",
    "NEIGHBOURS",
    "JoinRows",
    "Neighbourhoods",
    "Pairs",
    "check_join",
    "cosine",
    "cosine_of_valid",
    "join_rows",
    "neighbourhood",
    "normalize_rows",
    "paired_cosines",
    "query_row",
    "top_k",
    "top_pairs",
]
