"""A child program of ``polyemb bench-memory``: one precision in a fresh process.

A Spark Python worker holds one model; so does this process. Run as
``python -m polyemb.bench._footprint_child MODEL PRECISION TEXTS_JSON``; prints one JSON line,
``{"load_s", "per_s", "python_mib", "loaded_mib", "peak_mib"}`` (MiB: resident before polyemb
loads anything, resident after loading, and the peak while encoding), or ``{"error"}`` when the
precision cannot load here.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, cast

# Only the standard library and polyemb's own small package come before the first reading.
from polyemb._platform import process_mib

if TYPE_CHECKING:
    from polyemb.options import Precision

# Texts encoded, untimed, before the timed encoding.
_WARM_UP = 32


def main(argv: list[str]) -> int:
    """Measure, load, encode; print the figures."""
    python_mib = process_mib("VmRSS")
    from polyemb.encoder import load
    from polyemb.errors import PolyembError

    model, precision, texts_file = argv
    with open(texts_file, encoding="utf-8") as handle:
        texts: list[str] = json.load(handle)
    started = time.perf_counter()
    try:
        # load() checks the precision: a bad one is an error answer like any other.
        encoder = load(model, precision=cast("Precision", precision), device="cpu")
    except PolyembError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    load_s = time.perf_counter() - started
    loaded_mib = process_mib("VmRSS")
    encoder.encode(texts[:_WARM_UP])
    started = time.perf_counter()
    encoder.encode(texts)
    per_s = len(texts) / (time.perf_counter() - started)
    figures = {
        "load_s": load_s,
        "per_s": per_s,
        "python_mib": python_mib,
        "loaded_mib": loaded_mib,
        "peak_mib": process_mib("VmHWM"),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
