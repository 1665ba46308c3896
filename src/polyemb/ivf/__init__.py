"""``method="ivf"``: approximate top-k joins and near-duplicates by inverted lists.

The right side's vectors are split into cells by k-means (:mod:`~polyemb.ivf.cells`); each left
row is scored exactly against the rows of its ``nprobe`` nearest cells, list by list
(:mod:`~polyemb.ivf.search`), and ``recall=`` chooses nprobe by measuring against the exact
answer on a sample (:mod:`~polyemb.ivf.calibrate`). :class:`IvfIndex` puts these together in one
process; Spark spreads the same functions over its partitions. No engine types here.
"""

from __future__ import annotations

from polyemb.ivf.index import IvfIndex
from polyemb.ivf.settings import Ivf, IvfReport, default_nlist, default_nprobe, method_settings

__all__ = ["Ivf", "IvfIndex", "IvfReport", "default_nlist", "default_nprobe", "method_settings"]
