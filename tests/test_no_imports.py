"""The core never imports an engine: importing polyemb pulls in no pandas, duckdb or pyspark."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_engine() -> None:
    code = (
        "import sys\n"
        "import polyemb, polyemb.arrow, polyemb.similarity, polyemb.tables, polyemb.cli, polyemb.testing\n"
        "print(sorted(m for m in ('pandas', 'duckdb', 'pyspark') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
