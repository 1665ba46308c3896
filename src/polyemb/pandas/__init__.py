"""pandas: the ``.emb`` accessor on Series and DataFrames.

``import polyemb.pandas`` registers it. A Series holds either texts (any string or object
dtype) or vectors (what ``.emb.encode()`` returns: a fixed-size list of float32, or any list of
floats). Missing values (None, NaN, pd.NA) are NA in every result, in the same row.

Example:
    >>> import polyemb.pandas
    >>> df["vector"] = df["title"].emb.encode()
    >>> df["title"].emb.search("climate policy", k=5)
    >>> orders.emb.join(products, left_on="description", right_on="name", k=1)
    >>> df["body"].emb.search("refund policy", k=5, chunks=True)   # the best passage's offsets
"""

from __future__ import annotations

from polyemb.errors import MissingDependencyError

try:
    import pandas as pd
except ImportError as exc:  # pragma: no cover - exercised only without pandas
    raise MissingDependencyError("polyemb.pandas needs pandas: pip install 'polyemb[pandas]'") from exc

from polyemb.pandas import _dtypes
from polyemb.pandas._columns import vector_dtype
from polyemb.pandas._frame import EmbDataFrameAccessor
from polyemb.pandas._series import EmbSeriesAccessor

__all__ = ["EmbDataFrameAccessor", "EmbSeriesAccessor", "vector_dtype"]

_dtypes.install()
pd.api.extensions.register_series_accessor("emb")(EmbSeriesAccessor)
pd.api.extensions.register_dataframe_accessor("emb")(EmbDataFrameAccessor)
