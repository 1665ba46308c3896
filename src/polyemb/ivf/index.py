"""A corpus in inverted lists, in one process: what pandas, DuckDB and the command line search.

Spark builds the same thing from the same functions (:mod:`polyemb.ivf.cells`,
:mod:`polyemb.ivf.search`, :mod:`polyemb.ivf.calibrate`), spread over its partitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from polyemb.ivf.calibrate import (
    calibration_rows,
    choose_nprobe,
    lists_needed,
    pair_lists_needed,
    recall_curve,
)
from polyemb.ivf.cells import list_sizes, nearest_lists, probe, row_keys, train, training_rows
from polyemb.ivf.search import Progress, search_above, search_top_k
from polyemb.ivf.settings import Ivf, IvfReport, default_nlist, default_nprobe
from polyemb.scores import PAIR_COLUMNS, ScoreSpec, score_spec
from polyemb.similarity import NEIGHBOURS, Neighbourhoods, Pairs, normalize_rows, top_k
from polyemb.similarity.ranking import per_query_k

__all__ = ["IvfIndex", "choose_nlist", "fixed_nprobe", "train_centroids", "unique_pairs"]

# Corpus rows scored at once against the calibration rows of near-duplicate search.
_BLOCK_ROWS = 65_536


def choose_nlist(settings: Ivf, rows: int, report: IvfReport) -> int:
    """``settings.nlist`` (or the default for ``rows``), lowered to ``rows`` if above it (noted)."""
    nlist = settings.nlist if settings.nlist is not None else default_nlist(rows)
    if nlist > max(rows, 1):
        report.note(f"nlist lowered from {nlist} to {max(rows, 1)}: the right side has only {rows} rows")
    return min(nlist, max(rows, 1))


def train_centroids(corpus: np.ndarray, settings: Ivf, report: IvfReport) -> np.ndarray:
    """Centroids for unit ``corpus`` rows: k-means on the sample of smallest keys."""
    nlist = choose_nlist(settings, len(corpus), report)
    sample = corpus[training_rows(row_keys(corpus, settings.seed), nlist)]
    centroids = train(sample, nlist, settings.seed, report)
    report.nlist, report.trained_on = len(centroids), len(sample)
    return centroids


def fixed_nprobe(settings: Ivf, nlist: int, report: IvfReport, *, pairs: bool = False) -> int:
    """``settings.nprobe`` (lowered to nlist, noted) or the default (for near-duplicate ``pairs``)."""
    if settings.nprobe is None:
        return default_nprobe(nlist, pairs=pairs)
    if settings.nprobe > nlist:
        report.note(f"nprobe lowered from {settings.nprobe} to nlist ({nlist})")
    return min(settings.nprobe, nlist)


@dataclass(frozen=True)
class IvfIndex:
    """Unit corpus rows in the lists of their nearest centroids.

    Attributes:
        corpus: (m, dim) unit vectors.
        centroids: (nlist, dim) unit centroids.
        lists: (m,) each row's list.
        nprobe: Lists a query row probes (more while they hold fewer than its k rows).
    """

    corpus: np.ndarray
    centroids: np.ndarray
    lists: np.ndarray
    nprobe: int

    @classmethod
    def build(
        cls,
        corpus: np.ndarray,
        settings: Ivf,
        report: IvfReport,
        *,
        queries: np.ndarray | None = None,
        k: int = 1,
        threshold: float | None = None,
    ) -> IvfIndex:
        """Train centroids on ``corpus``, fill the lists, and choose nprobe (filling ``report``).

        Args:
            corpus: (m, dim) unit vectors.
            settings: The ivf settings.
            report: Filled with what was chosen.
            queries: Unit left rows, for ``settings.recall``: nprobe is calibrated on a sample
                of them against their exact top ``k``.
            k: The k the calibration measures recall at.
            threshold: For near-duplicates of the corpus itself: ``settings.recall`` is the
                share of pairs at or above this cosine that are found.
        """
        started = time.perf_counter()
        centroids = train_centroids(corpus, settings, report)
        index = cls(corpus, centroids, nearest_lists(corpus, centroids, 1)[:, 0], 0)
        if settings.recall is not None and threshold is not None:
            nprobe = index.calibrate_pairs(threshold, settings, report)
        elif settings.recall is not None and queries is not None and len(queries):
            nprobe = index.calibrate(queries, k, settings, report)
        else:
            if settings.recall is not None:  # no recall to estimate: the report's estimate stays None
                report.note("recall= needs the left rows to calibrate on; the default nprobe is used")
            nprobe = fixed_nprobe(settings, len(centroids), report, pairs=threshold is not None)
        report.nprobe = nprobe
        report.seconds = round(time.perf_counter() - started, 3)
        report.log()
        return replace(index, nprobe=nprobe)

    @property
    def sizes(self) -> np.ndarray:
        """Rows in each list."""
        return list_sizes(self.lists, len(self.centroids))

    def calibrate(self, queries: np.ndarray, k: int, settings: Ivf, report: IvfReport) -> int:
        """The smallest nprobe reaching ``settings.recall`` on a sample of ``queries`` (into ``report``)."""
        target = float(settings.recall or 1.0)
        sample = queries[calibration_rows(queries, settings.seed)]
        exact, _ = top_k(sample, self.corpus, k)
        needed = lists_needed(sample, self.centroids, self.lists[exact])
        nprobe, estimate = choose_nprobe(*recall_curve(needed, len(self.centroids)), target)
        report.recall_target, report.recall_estimate = target, round(estimate, 4)
        report.calibration_rows = len(sample)
        return nprobe

    def calibrate_pairs(self, threshold: float, settings: Ivf, report: IvfReport) -> int:
        """For near-duplicates of the corpus itself: nprobe reaching ``settings.recall`` of pairs."""
        target = float(settings.recall or 1.0)
        rows = calibration_rows(self.corpus, settings.seed)
        found_left, found_right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for a in range(0, len(self.corpus), _BLOCK_ROWS):
            hit_left, hit_right = np.nonzero(
                self.corpus[rows] @ self.corpus[a : a + _BLOCK_ROWS].T >= threshold
            )
            found_left.append(hit_left)
            found_right.append(hit_right + a)
        left, right = np.concatenate(found_left), np.concatenate(found_right)
        left, right = left[rows[left] != right], right[rows[left] != right]  # not a row with itself
        report.recall_target, report.calibration_rows = target, len(rows)
        if not len(left):
            report.note(
                f"no pair of the {len(rows)} calibration rows reaches {threshold}: the default nprobe is used"
            )
            return default_nprobe(len(self.centroids), pairs=True)
        needed = pair_lists_needed(
            self.corpus[rows[left]],
            self.corpus[right],
            self.lists[rows[left]],
            self.lists[right],
            self.centroids,
        )
        nprobe, estimate = choose_nprobe(*recall_curve(needed, len(self.centroids)), target)
        report.recall_estimate = round(estimate, 4)
        return nprobe

    def calibrate_score(
        self,
        queries: np.ndarray,
        k: int,
        spec: ScoreSpec,
        corpus_r: np.ndarray,
        settings: Ivf,
        report: IvfReport,
        *,
        query_r: np.ndarray | None = None,
        neighbours: int = NEIGHBOURS,
    ) -> IvfIndex:
        """For margin and CSLS with ``settings.recall``: nprobe raised until the score's own top-k reaches it.

        :meth:`calibrate` measures the recall of cosine neighbours. Margin and CSLS rank rows
        relative to their neighbourhoods, so their best rows can lie in lists further from the
        query (a translation far from its source, in a model trained on one language). The
        same calibration rows are ranked by ``spec`` against the whole corpus, with the
        neighbourhoods found at the current nprobe, and nprobe becomes the smallest that
        reaches the target for them, never lower than the current one. The report's
        ``recall_estimate`` becomes that score's recall@k.

        Args:
            queries: Unit left rows (the calibration rows are chosen among them as in :meth:`calibrate`).
            k: The k recall is measured at.
            spec: The join's score (one with neighbourhoods).
            corpus_r: Each corpus row's neighbourhood.
            settings: The ivf settings (``recall`` set).
            report: Updated with the nprobe, the estimate and the seconds this took.
            query_r: Each query row's neighbourhood; None: found here for the calibration rows.
            neighbours: k of the neighbourhoods found here.
        """
        started = time.perf_counter()
        target = float(settings.recall or 1.0)
        rows = calibration_rows(queries, settings.seed)
        sample = queries[rows]
        sample_r = query_r[rows] if query_r is not None else self.neighbourhood(sample, neighbours)
        best, _ = top_k(sample, self.corpus, k, score=spec.name, neighbourhoods=(sample_r, corpus_r))
        needed = lists_needed(sample, self.centroids, self.lists[best])
        mean, error = recall_curve(needed, len(self.centroids))
        nprobe = max(choose_nprobe(mean, error, target)[0], self.nprobe)
        report.nprobe, report.recall_estimate = nprobe, round(float(mean[nprobe - 1]), 4)
        report.seconds = round(report.seconds + time.perf_counter() - started, 3)
        report.log()
        return replace(self, nprobe=nprobe)

    def over(self, corpus: np.ndarray) -> IvfIndex:
        """Another corpus in this index's lists (same centroids and nprobe): the other side of a join."""
        return IvfIndex(corpus, self.centroids, nearest_lists(corpus, self.centroids, 1)[:, 0], self.nprobe)

    def search(
        self,
        queries: np.ndarray,
        k: int | np.ndarray,
        *,
        score: str = "cosine",
        query_r: np.ndarray | None = None,
        corpus_r: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each unit query row's best ``k`` rows (one k, or one per row) among its probed lists.

        Returns:
            ``(indices, scores)`` of width ``min(max k, m)``, best first; -1 beyond a row's k.
        """
        ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(queries),))
        width = int(ks.max(initial=1))
        probes = probe(queries, self.centroids, self.nprobe, self.sizes, ks)
        indices, scores = search_top_k(
            queries, probes, self.corpus, self.lists, width, score=score, query_r=query_r, corpus_r=corpus_r
        )
        beyond = np.arange(indices.shape[1])[None, :] >= ks[:, None]
        return np.where(beyond, -1, indices), np.where(beyond, -np.inf, scores).astype(np.float32)

    def pairs(
        self,
        queries: np.ndarray,
        k: int | np.ndarray,
        *,
        score: str = "cosine",
        neighbourhoods: Neighbourhoods | None = None,
        neighbours: int = NEIGHBOURS,
        settings: Ivf | None = None,
        report: IvfReport | None = None,
    ) -> Pairs:
        """:meth:`search` as the flat pairs of :func:`polyemb.similarity.top_pairs`.

        ``queries`` are normalized here; ``k`` is checked as ``top_pairs`` checks it. For margin
        and CSLS, a neighbourhood not given is found with this index: each query row's among
        the corpus, and each corpus row's among ``queries``; with ``settings.recall``, nprobe is
        calibrated again for the score (:meth:`calibrate_score`, into ``report``) and the
        neighbourhoods are found again if it rose.
        """
        spec = score_spec(score)
        queries = normalize_rows(queries)
        k = per_query_k(k, len(queries))
        query_r, corpus_r = neighbourhoods if neighbourhoods is not None else (None, None)
        index = self
        if spec.neighbourhoods:
            if settings is not None and settings.recall is not None and len(queries):
                # The calibration needs the corpus' neighbourhoods at the cosine's nprobe, and
                # finds the calibration rows' own; the rest are found once, at the final nprobe.
                first_r = (
                    corpus_r
                    if corpus_r is not None
                    else self.over(queries).neighbourhood(self.corpus, neighbours)
                )
                index = self.calibrate_score(
                    queries, int(k.max()), spec, first_r, settings, report or IvfReport(), query_r=query_r
                )
                corpus_r = first_r if index.nprobe == self.nprobe else corpus_r
            if query_r is None:
                query_r = index.neighbourhood(queries, neighbours)
            if corpus_r is None:
                corpus_r = index.over(queries).neighbourhood(index.corpus, neighbours)
        indices, scores = index.search(queries, k, score=score, query_r=query_r, corpus_r=corpus_r)
        rows, slots = np.nonzero(indices >= 0)
        chosen = indices[rows, slots]
        columns = {name: PAIR_COLUMNS[name](queries[rows], self.corpus[chosen]) for name in spec.columns}
        return Pairs(rows.astype(np.int64), chosen, scores[rows, slots], columns)

    def neighbourhood(self, queries: np.ndarray, neighbours: int) -> np.ndarray:
        """Mean cosine of each unit query row with its ``neighbours`` nearest rows found here."""
        if not len(self.corpus):
            return np.zeros(len(queries), np.float32)
        _, scores = self.search(queries, neighbours)
        r: np.ndarray = scores.mean(axis=1).astype(np.float32)
        return r

    def pairs_above(
        self, threshold: float, *, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs of corpus rows ``i < j`` with cosine at least ``threshold``, found in probed lists.

        A pair is found when either row probes the other's list; its score is the higher of the
        (equal up to rounding) two directions'. Best first, then by ``i``, then ``j``.
        """
        probes = probe(self.corpus, self.centroids, self.nprobe, self.sizes)
        q, c, s = search_above(self.corpus, probes, self.corpus, self.lists, threshold, progress=progress)
        return unique_pairs(q, c, s)


def unique_pairs(q: np.ndarray, c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Found (row, row, score) of a self-join as pairs ``i < j``, each once (its best score), best first."""
    keep = q != c
    i, j, s = np.minimum(q, c)[keep], np.maximum(q, c)[keep], s[keep]
    order = np.lexsort((-s, j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    i, j, s = i[first], j[first], s[first]
    best = np.lexsort((j, i, -s))
    return i[best].astype(np.int64), j[best].astype(np.int64), s[best].astype(np.float32)
