"""Each layer imports only what it needs: the core no engine, an adapter no other engine, and the
command line no torch until a command needs a model (``polyemb --help`` stays fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINES = ("pandas", "polars", "duckdb", "pyspark")
CORE = (
    "polyemb",
    "polyemb._platform",
    "polyemb.arrow",
    "polyemb.attention",
    "polyemb.batching",
    "polyemb.bench",
    "polyemb.bench.encode",
    "polyemb.bench.ivf",
    "polyemb.bench.join",
    "polyemb.bench.long",
    "polyemb.bench.memory",
    "polyemb.bench.peak",
    "polyemb.bench.sides",
    "polyemb.bench.store",
    "polyemb.bench.texts",
    "polyemb.bench.torture",
    "polyemb.cache",
    "polyemb.chunks",
    "polyemb.dedup",
    "polyemb.defaults",
    "polyemb.encoder",
    "polyemb.finding",
    "polyemb.ivf",
    "polyemb.ivf.calibrate",
    "polyemb.ivf.cells",
    "polyemb.ivf.index",
    "polyemb.ivf.search",
    "polyemb.ivf.settings",
    "polyemb.loading",
    "polyemb.maxsim",
    "polyemb.near_duplicates",
    "polyemb.options",
    "polyemb.prepare",
    "polyemb.progress",
    "polyemb.scores",
    "polyemb.similarity",
    "polyemb.store",
    "polyemb.sts",
    "polyemb.tables",
    "polyemb.testing",
    "polyemb.windows",
)


def imported_after(statement: str) -> set[str]:
    """The top-level modules of interest that ``statement`` imports, in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split()) & {*ENGINES, "torch"}


def test_core_imports_no_engine() -> None:
    assert imported_after("import " + ", ".join(CORE)) == {"torch"}


def test_the_store_and_its_torture_workers_import_no_torch() -> None:
    # The torture starts a process per killed worker: each must start fast.
    statement = "import polyemb.store, polyemb.bench.torture, polyemb.bench._torture_child"
    assert imported_after(statement) == set()


@pytest.mark.parametrize(
    ("adapter", "engines"),
    [
        ("polyemb.pandas", {"pandas"}),
        ("polyemb.polars", {"polars"}),
        ("polyemb.duckdb", {"duckdb"}),
        ("polyemb.spark", {"pyspark", "pandas"}),
    ],
)
def test_an_adapter_imports_no_other_engine(adapter: str, engines: set[str]) -> None:
    assert imported_after(f"import {adapter}") - {"torch"} == engines


def test_the_command_line_needs_no_torch_for_help() -> None:
    statement = (
        "import contextlib, io, polyemb.cli\n"
        "for argv in [['--help'], ['embed', '--help'], ['bench', '--help'], ['bench-long', '--help'],\n"
        "             ['check-precision', '--help']]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        polyemb.cli.main(argv)\n"
    )
    assert imported_after(statement) == set()


def test_the_footprint_child_reads_python_alone_before_any_library() -> None:
    # bench-memory's child (python -m polyemb.bench._footprint_child) takes its "Python alone"
    # reading after these imports: no library may come with them.
    code = "import sys, polyemb._platform, polyemb.bench\nprint(' '.join(sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"numpy", "pyarrow", "torch"} & set(result.stdout.split()) == set()


def test_errors_and_options_need_no_torch() -> None:
    assert imported_after("import polyemb.errors, polyemb.options; from polyemb import PolyembError") == set()


def test_windows_batches_and_chunk_tables_need_no_torch() -> None:
    # The windowing is tokenizer and numpy work; the model runs behind a function handed in.
    assert imported_after("import polyemb.windows, polyemb.batching, polyemb.chunks") == set()


def test_the_table_of_scores_needs_no_torch() -> None:
    # The command line reads it (choices, column names) for --help.
    assert imported_after("import polyemb.scores") == set()


def test_the_store_needs_no_torch() -> None:
    # Opening, reading and maintaining a store needs no model: the default encoder loads lazily.
    assert imported_after("import polyemb.store; polyemb.store.open_store") == set()
