"""A patch to pandas' dtype registry so vector columns survive ``to_parquet`` / ``read_parquet``.

This is the one place polyemb touches another library's internals: ``polyemb.pandas`` calls
:func:`install` on import. Remove it once pandas-dev/pandas#59738 is fixed in the pandas
versions polyemb supports.
"""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa

__all__ = ["install"]


class _ListDtypeReader(pd.api.extensions.ExtensionDtype):  # type: ignore[misc]
    """Parses the list dtype strings pandas writes into Parquet metadata but cannot read back.

    ``df.to_parquet()`` records a vector column's dtype as ``"fixed_size_list<item: float>[768]
    [pyarrow]"``, and ``pd.read_parquet()`` then fails on that string (pandas-dev/pandas#59738,
    open). Registered ahead of ``ArrowDtype``, this reader turns list-of-float dtype strings back
    into the ``ArrowDtype`` they came from, so vector columns round-trip; every other string
    falls through to pandas' own parsers. It subclasses ``ExtensionDtype`` (and is never
    instantiated) so that pandas code that walks the registry, such as plotting, finds the
    methods it expects.
    """

    _PATTERN = re.compile(r"(fixed_size_)?list<item: (float|double|halffloat)>(?:\[(\d+)\])?\[pyarrow\]")
    _VALUES = {"float": pa.float32(), "double": pa.float64(), "halffloat": pa.float16()}

    @classmethod
    def construct_from_string(cls, string: str) -> pd.ArrowDtype:
        match = cls._PATTERN.fullmatch(string) if isinstance(string, str) else None
        if match is None or bool(match.group(1)) != (match.group(3) is not None):
            raise TypeError(f"not a vector dtype string: {string!r}")
        values = cls._VALUES[match.group(2)]
        kind = pa.list_(values, int(match.group(3))) if match.group(1) else pa.list_(values)
        return pd.ArrowDtype(kind)


def install() -> None:
    """Register the reader ahead of ``ArrowDtype`` (once; a no-op if pandas moved its registry)."""
    try:
        from pandas.core.dtypes.base import _registry
    except ImportError:  # pragma: no cover - pandas moved its registry; round trips need dtype_backend
        return
    if _ListDtypeReader not in _registry.dtypes:
        _registry.dtypes.insert(0, _ListDtypeReader)
