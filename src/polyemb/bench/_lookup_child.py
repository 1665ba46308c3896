"""A child program of ``polyemb bench-store lookup``: one lookup in a fresh process.

Run as ``python -m polyemb.bench._lookup_child STORE SPEC_JSON KEYS_NPY``; prints one JSON line,
``{"keys", "found", "seconds", "peak_rss_mib"}``. The peak is this process's own (``VmHWM``):
``ru_maxrss`` would carry over the parent's at fork.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from polyemb._platform import process_mib
from polyemb.embedder import VectorSpec
from polyemb.store import open_store


def main(argv: list[str]) -> int:
    """Open the store read-only, look the keys up (index built in the same call), report."""
    store, spec_json, keys_file = argv
    spec = VectorSpec(**json.loads(spec_json))
    keys = np.load(keys_file).tolist()
    started = time.perf_counter()
    _, found = open_store(store, read_only=True).lookup(spec, keys)
    seconds = time.perf_counter() - started
    figures = {"keys": len(keys), "found": int(found.sum()), "seconds": seconds}
    print(json.dumps({**figures, "peak_rss_mib": process_mib("VmHWM")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
