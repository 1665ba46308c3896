"""The process-wide default Encoder: what the adapters encode with when given none.

Apart from :mod:`polyemb.encoder` (which re-exports both functions) so that the encoder module
holds the encoder alone; the Encoder is imported when first needed.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from polyemb.errors import InvalidInputError

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = ["default_encoder", "set_default_encoder"]

_default_lock = threading.Lock()
_default: Encoder | None = None


def _new_lock_after_fork() -> None:  # a parent's thread may have been loading the default model
    global _default_lock
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def default_encoder() -> Encoder:
    """The process-wide Encoder the adapters use when given none.

    Made on first use by :func:`polyemb.load` with no arguments (so ``$POLYEMB_MODEL`` applies),
    or whatever :func:`set_default_encoder` set.
    """
    from polyemb.encoder import load

    global _default
    with _default_lock:
        if _default is None:
            _default = load()
        return _default


def set_default_encoder(encoder: Encoder | None) -> None:
    """Make ``encoder`` the process-wide default; None forgets it (the next use loads again)."""
    from polyemb.encoder import Encoder

    global _default
    if encoder is not None and not isinstance(encoder, Encoder):
        raise InvalidInputError(f"set_default_encoder takes an Encoder or None, got {type(encoder).__name__}")
    with _default_lock:
        _default = encoder
