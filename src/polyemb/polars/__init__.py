"""Polars: the ``.emb`` namespace on expressions, Series and DataFrames.

``import polyemb.polars`` registers it:

- ``Expr.emb``: ``encode`` and ``similarity`` as expressions, which stream in lazy queries
  (Polars' streaming engine runs them batch by batch);
- ``Series.emb``: ``encode``, ``similarity``, ``search``, ``near_duplicates``, ``to_numpy``;
- ``DataFrame.emb``: ``join``.

The same options and answers as :mod:`polyemb.pandas`. Vectors are ``pl.Array(pl.Float32, dim)``;
NULL texts give NULL vectors and NULL scores. A LazyFrame has no ``.emb``: its expressions
do, and search, near-duplicates and joins need every row at once (``.collect()`` first).

Polars keeps no Arrow field metadata, so a vector column does not carry the provenance of its
model as it does in pandas: two models' vectors are refused only where polyemb encodes one side.

Example:
    >>> import polars as pl, polyemb.polars
    >>> df.with_columns(pl.col("title").emb.encode().alias("vector"))
    >>> df["title"].emb.search("climate policy", k=5)
    >>> orders.emb.join(products, left_on="description", right_on="name", k=1)
"""

from __future__ import annotations

from polyemb.errors import MissingDependencyError

try:
    import polars as pl
except ImportError as exc:  # pragma: no cover - exercised only without polars
    raise MissingDependencyError("polyemb.polars needs polars: pip install 'polyemb[polars]'") from exc

from polyemb.polars._columns import EncodeOptions
from polyemb.polars._expr import EmbExprNamespace
from polyemb.polars._frame import EmbFrameNamespace
from polyemb.polars._series import EmbSeriesNamespace

__all__ = ["EmbExprNamespace", "EmbFrameNamespace", "EmbSeriesNamespace", "EncodeOptions"]

pl.api.register_expr_namespace("emb")(EmbExprNamespace)
pl.api.register_series_namespace("emb")(EmbSeriesNamespace)
pl.api.register_dataframe_namespace("emb")(EmbFrameNamespace)
