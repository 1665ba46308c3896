"""Progress bars that can never hold up the work they describe.

tqdm's bars share one write lock: a thread lock and a multiprocessing semaphore, which every
process forked from the one that made it shares. A process killed while it draws a bar, or a fork
taken while another thread (tqdm's own monitor thread, every 10 s) holds the lock, leaves that
lock held for good, and the next bar in a process that shares it waits forever. polyemb's bars
use a lock of their own: a thread lock, local to the process, made anew in every forked child;
and no monitor thread. Bars in one process still draw one at a time.
"""

from __future__ import annotations

import os
import threading
import weakref

from tqdm.auto import tqdm


class ProgressBar(tqdm):  # type: ignore[misc]  # tqdm.auto is untyped
    """A tqdm bar with a process-local lock and no monitor thread.

    Its open bars are its own, apart from plain tqdm's (which another library's thread may change
    under tqdm's lock, not this one).
    """

    monitor_interval = 0
    _instances: weakref.WeakSet[tqdm] = weakref.WeakSet()


def _new_lock() -> None:
    ProgressBar.set_lock(threading.RLock())


_new_lock()
os.register_at_fork(after_in_child=_new_lock)


def progress_bar(
    *, desc: str, unit: str, total: int | None = None, show: bool | None = None, quiet_below: int = 0
) -> ProgressBar:
    """A progress bar.

    Args:
        desc: What is being done.
        unit: What is counted.
        total: How many there are; None: unknown.
        show: True draws it, False never; None draws it where stderr is a terminal (tqdm's
            choice) and ``total`` is at least ``quiet_below``.
        quiet_below: See ``show``.

    Returns:
        The bar, to use as a context manager.
    """
    disable: bool | None
    if show is None:
        disable = None if total is None or total >= quiet_below else True
    else:
        disable = not show
    return ProgressBar(desc=desc, unit=unit, total=total, disable=disable)
