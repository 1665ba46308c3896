"""What a child forked from a process that loaded a model must renew: Encoder locks, torch's threads.

gunicorn ``--preload`` and ``multiprocessing``'s fork copy the parent, held locks included, but
not its threads. So a forked child gets a fresh lock for every Encoder (a parent's thread may
have been encoding), and, where the parent had loaded a model, runs torch on one thread: loading
runs torch's threads, which are GNU OpenMP's, and a child forked after that waits forever in its
first parallel step. One thread runs no parallel step, as in PyTorch's own DataLoader workers.
A process that made no Encoder keeps its threads: what torch work it ran itself is torch's matter.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

import torch

from polyemb._platform import available_cpus

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = ["register", "warn_if_one_thread"]

logger = logging.getLogger(__name__)

# Every Encoder, so that a forked child gets fresh locks (a parent's thread may have held them).
_encoders: weakref.WeakSet[Encoder] = weakref.WeakSet()
# Whether this process made an Encoder (torch's threads then run, even once it is gone).
_made_one = False
# Set in a child forked from a process that made an Encoder, until its first forward says so.
_forked_to_one_thread = False


def register(encoder: Encoder) -> None:
    """Renew ``encoder``'s lock in forked children, which run torch on one thread from now on."""
    global _made_one
    _made_one = True
    _encoders.add(encoder)


def _after_fork_in_child() -> None:
    global _forked_to_one_thread
    for encoder in list(_encoders):
        encoder._lock = threading.Lock()
    if _made_one and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        _forked_to_one_thread = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def warn_if_one_thread() -> None:
    """Say once, in a forked child put on one thread, why and how to get every core."""
    global _forked_to_one_thread
    if not _forked_to_one_thread:
        return
    _forked_to_one_thread = False
    logger.warning(
        "polyemb: torch runs on one thread in this process, forked from one that had loaded a model "
        "(torch's threads would wait forever here in their first parallel step); for %d threads a "
        "worker, start workers with multiprocessing's 'spawn' or 'forkserver' and load the model in "
        "each",
        available_cpus(),
    )
