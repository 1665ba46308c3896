"""The ivf method's settings, its defaults, and the report of what a run chose (no torch here).

Every engine takes ``method="exact"`` (the default), ``method="ivf"`` (the defaults below), or
``method=Ivf(...)`` with settings of its own, so the names are the same everywhere.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from polyemb.errors import InvalidInputError
from polyemb.options import METHODS, check_choice, check_positive_int

__all__ = [
    "CALIBRATION_ROWS",
    "Ivf",
    "IvfReport",
    "default_nlist",
    "default_nprobe",
    "method_settings",
]

logger = logging.getLogger("polyemb.ivf")

# nlist = LISTS_PER_SQRT_ROW * sqrt(right rows) up to 262,144 rows (lists of about sqrt(rows) / 4
# rows), rows / LIST_ROWS beyond: lists stop growing, so a query's work does not grow with the
# corpus. Measured on MiniLM vectors of paired STS sentences (docs/joins.md): a 1M-row top-10
# self-join at recall=0.9 took 150 s with 7,812 lists, 236 s with 4,000 (one level). Centroids
# are found in two levels from COARSE_FROM lists on (polyemb.ivf.cells), so lists in proportion
# to rows do not make training and probing cost rows x rows.
LISTS_PER_SQRT_ROW = 4.0
LIST_ROWS = 128
# nprobe, whatever nlist: recall@10 of a top-10 join was 0.95, 0.94 and 0.93 at 125k, 250k and
# 500k right rows with 64 lists probed while lists grew as sqrt(rows); with lists of 128 rows it
# drifts down slowly (0.92 at 1M), which recall= corrects (45 lists for 0.9 at 1M, 34 at 250k).
# A share of nlist would make the cost grow as rows squared. Near-duplicate pairs
# at cosine 0.9 are easier: 16 lists found 99.7% to 99.8% of them.
TOP_K_NPROBE = 64
PAIRS_NPROBE = 16
# k-means runs on at most TRAIN_ROWS_PER_LIST rows per list, ITERATIONS times: recall@10 did not
# change with 16, 32 or 64 rows per list, nor with 5, 10 or 20 iterations.
TRAIN_ROWS_PER_LIST = 32
ITERATIONS = 8
# recall=: left rows whose exact top-k the probes are calibrated against, and the one-sided
# confidence (z) the chosen nprobe must reach the target with.
CALIBRATION_ROWS = 1_000
CONFIDENCE_Z = 1.645


@dataclass(frozen=True)
class Ivf:
    """Settings of ``method="ivf"``: inverted lists (k-means cells) of the right side.

    Centroids are trained (spherical k-means, seeded) on a sample of the right rows chosen by a
    hash of each vector and ``seed``, so that every engine trains the same centroids from the
    same vectors, whatever their row order. Each right row goes into the list of its nearest
    centroid; each left row is scored exactly against the rows of its ``nprobe`` nearest lists
    (and of further lists, nearest first, while those hold fewer than ``k`` rows).

    Attributes:
        nlist: Lists; None: ``4 * sqrt(right rows)``, or ``right rows / 128`` where that is more
            (beyond 262,144 rows). Fewer distinct right vectors than lists lower it to their
            number (the report says so).
        nprobe: Lists each left row is scored against; None: 64 for a join, 16 for
            near-duplicates (at most nlist), or calibrated when ``recall`` is given.
        recall: Target recall@k: ``nprobe`` becomes the smallest that reaches it (with a
            one-sided 95% margin) on 1,000 left rows scored exactly; the report gives the estimate.
            For margin and CSLS, recall of that score's top k, calibrated after the cosine's
            and never below its nprobe (that score needs more lists).
        seed: Seeds the training sample and the k-means start.

    Example:
        >>> Ivf(recall=0.95).nprobe is None
        True
    """

    nlist: int | None = None
    nprobe: int | None = None
    recall: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("nlist", "nprobe"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_positive_int(name, value))
        if self.recall is not None:
            if isinstance(self.recall, bool) or not isinstance(self.recall, (int, float)):
                raise InvalidInputError(f"recall must be a number in (0, 1], got {self.recall!r}")
            if not 0 < self.recall <= 1:
                raise InvalidInputError(f"recall must be in (0, 1], got {self.recall!r}")
            if self.nprobe is not None:
                raise InvalidInputError("give nprobe or recall, not both: recall chooses nprobe")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InvalidInputError(f"seed must be an int >= 0, got {self.seed!r}")


def method_settings(method: Any) -> Ivf | None:
    """The ivf settings of ``method`` (``"ivf"``: the defaults), or None for ``"exact"``.

    Raises:
        InvalidInputError: Neither a name of :data:`polyemb.options.METHODS` nor an :class:`Ivf`.

    Example:
        >>> method_settings("ivf")
        Ivf(nlist=None, nprobe=None, recall=None, seed=0)
    """
    if isinstance(method, Ivf):
        return method
    if check_choice("method", method, METHODS) == "exact":
        return None
    return Ivf()


def default_nlist(rows: int) -> int:
    """The lists for ``rows`` right rows: ``4 * sqrt(rows)`` or ``rows / 128``, whichever is more.

    At least 1 and at most ``rows``. Example:

        >>> default_nlist(250_000), default_nlist(1_000_000)
        (2000, 7812)
    """
    lists = max(LISTS_PER_SQRT_ROW * math.sqrt(rows), rows / LIST_ROWS)
    return max(1, min(rows, round(lists)))


def default_nprobe(nlist: int, *, pairs: bool = False) -> int:
    """The lists probed by default: 64 for a top-k join, 16 for near-duplicate pairs, at most ``nlist``."""
    return min(nlist, PAIRS_NPROBE if pairs else TOP_K_NPROBE)


@dataclass
class IvfReport:
    """What an ivf run chose, filled in by the call it is given to (``report=``).

    Attributes:
        nlist: Lists used (after any lowering, see ``notes``).
        nprobe: Lists each left row probed (at least; a row probes more while its lists hold
            fewer than k rows).
        trained_on: Right rows k-means ran on.
        recall_target: ``recall=`` if given.
        recall_estimate: With ``recall=``: recall@k of the chosen nprobe on the calibration rows
            (for margin and CSLS, of that score's own top k).
        calibration_rows: Left rows the calibration scored exactly.
        notes: Why a setting differs from what was asked (fewer distinct vectors than lists, ...).
        seconds: Time spent training and choosing nprobe (for margin and CSLS with ``recall=``,
            the second calibration too, with the neighbourhoods it needs).
    """

    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0
    recall_target: float | None = None
    recall_estimate: float | None = None
    calibration_rows: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, message: str) -> None:
        """Record (and log) why a setting differs from what was asked."""
        self.notes.append(message)
        logger.warning("ivf: %s", message)

    def log(self) -> None:
        """One line of what was chosen, at INFO."""
        estimate = "none" if self.recall_estimate is None else f"{self.recall_estimate:.3f}"  # no pair met
        calibrated = (
            f", calibrated: recall {estimate} on {self.calibration_rows} rows (target {self.recall_target})"
            if self.recall_target is not None
            else ""
        )
        logger.info(
            "ivf: nlist=%d nprobe=%d, trained on %d rows%s",
            self.nlist,
            self.nprobe,
            self.trained_on,
            calibrated,
        )
