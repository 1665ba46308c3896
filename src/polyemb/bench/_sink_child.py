"""A child program of ``polyemb bench-memory --polars-sink``: one streamed Polars query in a fresh process.

Runs ``pl.scan_parquet(PARQUET).head(ROWS).with_columns(pl.col(COLUMN).emb.encode())
.sink_parquet(OUT)`` with the model at PRECISION, as a user's job would. Run as
``python -m polyemb.bench._sink_child MODEL PRECISION PARQUET COLUMN ROWS CHUNK OUT``: ROWS 0
reads every row; CHUNK 0 keeps Polars' defaults, else it is both the streaming engine's rows per
batch (``pl.Config.set_streaming_chunk_size``) and the output's rows per row group. Prints one
JSON line, ``{"rows", "load_s", "seconds", "per_s", "python_mib", "loaded_mib", "peak_mib"}``
(MiB: resident before polyemb loads anything, after loading the model, and the peak of the
whole run), or ``{"error"}`` when the precision cannot load here.
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


def main(argv: list[str]) -> int:
    """Measure, load, stream the file through the query; print the figures."""
    python_mib = process_mib("VmRSS")
    import polars as pl

    from polyemb.encoder import load
    from polyemb.errors import PolyembError
    from polyemb.polars import EmbExprNamespace  # what Expr.emb is, as the type checker sees it

    model, precision, parquet, column, rows, chunk, out = argv
    started = time.perf_counter()
    try:
        encoder = load(model, precision=cast("Precision", precision), device="cpu")
    except PolyembError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    load_s = time.perf_counter() - started
    loaded_mib = process_mib("VmRSS")
    query = pl.scan_parquet(parquet)
    if int(rows):
        query = query.head(int(rows))
    vectors = EmbExprNamespace(pl.col(column)).encode(encoder=encoder, show_progress=False)
    if int(chunk):
        pl.Config.set_streaming_chunk_size(int(chunk))
    started = time.perf_counter()
    query.with_columns(vectors.alias(f"{column}_vector")).sink_parquet(out, row_group_size=int(chunk) or None)
    seconds = time.perf_counter() - started
    written = pl.scan_parquet(out).select(pl.len()).collect().item()
    figures = {
        "rows": written,
        "load_s": load_s,
        "seconds": seconds,
        "per_s": written / seconds,
        "python_mib": python_mib,
        "loaded_mib": loaded_mib,
        "peak_mib": process_mib("VmHWM"),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
