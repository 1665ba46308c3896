"""`polyemb sql`: output formats, files, databases and errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.cli import main


def test_table_output(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "-m", str(tiny_model_dir), "SELECT 42 AS answer, embedding_model() AS model"]) == 0
    out = capsys.readouterr().out
    assert "answer" in out and "42" in out and "┌" in out


def test_json_and_csv(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "SELECT 'a cat' AS t, semantic_similarity('a cat', 'a dog') AS s, embed('x')[1:2] AS v"
    assert main(["sql", "--json", "-m", str(tiny_model_dir), query]) == 0
    [row] = json.loads(capsys.readouterr().out)
    a, b = tiny_encoder.encode(["a cat", "a dog"])
    assert row["t"] == "a cat" and row["s"] == pytest.approx(float(a @ b), abs=1e-6) and len(row["v"]) == 2
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "t,s,v" and lines[1].startswith("a cat,")


def test_json_is_strict_and_blobs_read_as_duckdb_writes_them(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # json.dumps wrote NaN and Infinity (not JSON: strict parsers refuse the whole output) and
    # BLOBs as Python's b'...' repr.
    query = (
        "SELECT 'nan'::DOUBLE AS x, ['inf'::DOUBLE, 1.5] AS y, {'z': '-inf'::FLOAT} AS z, "
        "'\\xAAa''\\x00'::BLOB AS b"
    )
    assert main(["sql", "--json", "-m", str(tiny_model_dir), query]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    [row] = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert row == {"x": None, "y": [None, 1.5], "z": {"z": None}, "b": "\\xAAa\\x27\\x00"}
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(",\\xAAa\\x27\\x00")


def test_csv_cells_as_duckdb_writes_them(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # NULL and the empty string were both an empty cell, and booleans Python's True and False.
    import duckdb

    query = (
        "SELECT * FROM (VALUES (1, NULL, true), (2, '', false), (3, 'a,\"b\"', NULL), "
        "(4, e'two\nlines', true), (5, 'a#b', false), (6, ' \tpadded ', true)) t(id, text, flag) ORDER BY id"
    )
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == 0
    out = capsys.readouterr().out
    duckdb.sql(f"COPY ({query}) TO '{tmp_path / 'copy.csv'}'")
    assert out == (tmp_path / "copy.csv").read_text()
    assert out.splitlines()[1:3] == ["1,,true", '2,"",false']
    # And polyemb embed reads them back apart: NULL a NULL vector, "" a text.
    (tmp_path / "out.csv").write_text(out)
    assert main(["embed", str(tmp_path / "out.csv"), "-c", "text", "-o", str(tmp_path / "v.parquet"),
                 "-m", str(tiny_model_dir)]) == 0  # fmt: skip
    vectors = pq.read_table(tmp_path / "v.parquet").column("embedding").to_pylist()
    assert [v is None for v in vectors] == [True, False, False, False, False, False]


def test_a_pivot_without_in_prints_its_rows(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # DuckDB runs it as several statements (type MULTI): it printed nothing and exited 0.
    import duckdb

    pivot = "CREATE TABLE s(k VARCHAR, v INT); INSERT INTO s VALUES ('a', 1), ('b', 2); "
    pivot += "PIVOT s ON k USING sum(v)"
    if int(duckdb.__version__.split(".")[0]) < 2:  # 1.x keeps no text for it: a clear error there
        assert main(["sql", "--csv", "-m", str(tiny_model_dir), f"{pivot}; SELECT 1"]) == 1
        assert "cannot split this SQL into statements (a PIVOT without IN" in capsys.readouterr().err
        return
    assert main(["sql", "--json", "-m", str(tiny_model_dir), pivot]) == 0
    assert json.loads(capsys.readouterr().out) == [{"a": 1, "b": 2}]
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), pivot]) == 0
    assert capsys.readouterr().out == "a,b\n1,2\n"
    assert main(["sql", "-m", str(tiny_model_dir), pivot]) == 0
    assert "│" in capsys.readouterr().out
    # Statements that read such a PIVOT are of that type too: queries print, changes do not.
    for query, printed in (
        ("DESCRIBE PIVOT s ON k USING sum(v)", "column_name,column_type,null,key,default,extra\na,"),
        ("SUMMARIZE (PIVOT s ON k USING sum(v))", "column_name,column_type,min,max"),
        ("/* wide */ PIVOT_WIDER s ON k USING sum(v)", "a,b\n1,2\n"),
        ("CREATE TABLE p AS PIVOT s ON k USING sum(v)", ""),
        ("WITH w AS (PIVOT s ON k USING sum(v)) INSERT INTO q SELECT * FROM w", ""),
        ("INSERT INTO q SELECT * FROM (PIVOT s ON k USING sum(v)) RETURNING a", "a\n1\n"),
    ):
        script = pivot.replace("PIVOT s ON k USING sum(v)", f"CREATE TABLE q(a INT128, b INT128); {query}")
        assert main(["sql", "--csv", "-m", str(tiny_model_dir), script]) == 0
        out = capsys.readouterr().out
        assert out.startswith(printed) and bool(out) == bool(printed), (query, out)


def test_json_and_csv_across_fetched_chunks(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # More rows than one fetch (_CHUNK_ROWS), one statement with no rows, the same text as before.
    from polyemb.cli.sql import _CHUNK_ROWS

    n = 2 * _CHUNK_ROWS + 7
    query = f"SELECT i, 'row ' || i AS t FROM range({n}) r(i) ORDER BY i"
    assert main(["sql", "--json", "-m", str(tiny_model_dir), query]) == 0
    out = capsys.readouterr().out
    rows = [{"i": i, "t": f"row {i}"} for i in range(n)]
    assert out == json.dumps(rows, ensure_ascii=False) + "\n"
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == 0
    assert capsys.readouterr().out.splitlines() == ["i,t", *(f"{i},row {i}" for i in range(n))]
    assert main(["sql", "--json", "-m", str(tiny_model_dir), "SELECT 1 AS i WHERE false"]) == 0
    assert capsys.readouterr().out == "[]\n"


class _Sink(io.TextIOBase):
    """A stdout that keeps no text: how many characters came, and the last few."""

    def __init__(self) -> None:
        self.size, self.tail = 0, ""

    def write(self, text: str) -> int:
        self.size += len(text)
        self.tail = (self.tail + text)[-40:]
        return len(text)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["--csv", "--json"])
def test_a_large_result_is_written_without_holding_it_whole(
    tiny_model_dir: Path, output: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200,000 rows fetched at once (what sql did) held 35 MiB (CSV) and 123 MiB (JSON) of Python
    # objects at the peak; written a chunk of rows at a time, 7 and 13 MiB (4 of them the
    # imports and the model). --cache-mb 0: the embedding cache's slots are Python objects too.
    sink = _Sink()
    monkeypatch.setattr("sys.stdout", sink)
    query = "SELECT i, 'row number ' || i AS t FROM range(200000) r(i) ORDER BY i"
    tracemalloc.start()
    try:
        assert main(["sql", output, "--cache-mb", "0", "-m", str(tiny_model_dir), query]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    last = "199999,row number 199999\n" if output == "--csv" else '"row number 199999"}]\n'
    assert sink.tail.endswith(last)
    assert sink.size > 4_500_000
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB held at once"


def test_help_names_every_function_registered(capsys: pytest.CaptureFixture[str]) -> None:
    from polyemb.duckdb import FUNCTIONS

    with pytest.raises(SystemExit):
        main(["sql", "--help"])
    described = " ".join(capsys.readouterr().out.split())
    assert [name for name in FUNCTIONS if f"{name}(" not in described] == []


def test_file_with_several_statements_and_a_database(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "q.sql"
    script.write_text(
        "CREATE TABLE IF NOT EXISTS notes AS SELECT 'hello' AS t, embed('hello') AS v;\n"
        "SELECT count(*) AS n FROM notes;\nSELECT t FROM notes;\n"
    )
    db = tmp_path / "notes.duckdb"
    assert main(["sql", "--json", "-f", str(script), "--db", str(db), "-m", str(tiny_model_dir)]) == 0
    outputs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert outputs == [[{"n": 1}], [{"t": "hello"}]]
    assert (
        main(
            ["sql", "--json", "--db", str(db), "-m", str(tiny_model_dir), "SELECT typeof(v) AS k FROM notes"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"k": "FLOAT[32]"}]


def test_reads_files_named_in_the_query(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.csv"
    data.write_text("id,text\n1,hello\n2,\n")
    query = f"SELECT id, embed(text) IS NULL AS missing FROM '{data}' ORDER BY id"
    assert main(["sql", "--json", "-m", str(tiny_model_dir), query]) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": 1, "missing": False}, {"id": 2, "missing": True}]


def test_errors(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["-m", str(tiny_model_dir)]
    assert main(["sql", *model, "SELECT * FROM no_such_table"]) == 1
    err = capsys.readouterr().err
    assert "no_such_table" in err and "Traceback" not in err
    assert main(["sql", *model, "SELEC 1"]) == 1
    assert "syntax error" in capsys.readouterr().err.lower()
    assert main(["sql", *model, "-f", str(tmp_path / "missing.sql")]) == 1
    assert "cannot read the SQL file" in capsys.readouterr().err
    assert main(["sql", *model]) == 1
    assert "give a query or -f FILE" in capsys.readouterr().err
    assert main(["sql", *model, "SELECT 1", "--extension", "no_such_ext"]) == 1
    assert "cannot load the DuckDB extension 'no_such_ext'" in capsys.readouterr().err
    # Each of these was a raw traceback: a clear line instead, and exit 1.
    latin1 = tmp_path / "latin1.sql"
    latin1.write_bytes("SELECT 'café' AS t;".encode("latin-1"))
    assert main(["sql", *model, "-f", str(latin1)]) == 1
    assert "is not UTF-8 (at byte 11)" in capsys.readouterr().err
    assert main(["sql", *model, "--db", str(tmp_path / "no" / "such" / "x.db"), "SELECT 1"]) == 1
    assert "cannot open the database" in capsys.readouterr().err
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database\n" * 100)
    assert main(["sql", *model, "--db", str(not_a_db), "SELECT 1"]) == 1
    assert "cannot open the database" in capsys.readouterr().err
    assert main(["sql", *model, "--index", "p", "SELECT nope", "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert "polyemb sql: error: --index p:" in err and '"nope"' in err and "Traceback" not in err
    source = ["--index-score", "margin", "--index-source", "SELECT bogus"]
    assert main(["sql", *model, "--index", "p", "SELECT 1 AS key, 'x' AS text", *source, "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert "polyemb sql: error: --index p:" in err and '"bogus"' in err
    # --index's options named as options (the Python API's queries= meant nothing here), before the
    # model loads (a model path that cannot load shows it).
    index = ["--index", "p", "SELECT 1 AS key, 'x' AS text"]
    for options, message in [
        (
            [*index, "--index-score", "csls"],
            "--index-score csls scores a pair against both sides' neighbourhoods: give --index-source QUERY",
        ),
        (
            [*index, "--index-source", "SELECT 'y'"],
            "--index-source is read by --index-score margin or csls only",
        ),
        (
            ["--index-score", "margin", "--index-source", "SELECT 'y'"],
            "--index-score and --index-source are options of --index",
        ),
    ]:
        assert main(["sql", "-m", str(tmp_path / "no-model"), *options, "SELECT 1"]) == 1
        assert f"polyemb sql: error: {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["sql", *model, "--max-rows", "-1", "SELECT 1"])
    assert usage.value.code == 2 and "--max-rows: expected a positive whole number" in capsys.readouterr().err


def test_changes_with_returning_print_their_rows(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = (
        "CREATE TABLE t(a INT, note TEXT); INSERT INTO t VALUES (1, 'returning'), (2, 'x');"
        "INSERT INTO t VALUES (3, 'y') RETURNING a; UPDATE t SET a = a + 10 WHERE a = 3 RETURNING a;"
        "DELETE FROM t WHERE a = 1 /* RETURNING */; DELETE FROM t WHERE a = 2 RETURNING note;"
        "SELECT a FROM t"
    )
    assert main(["sql", "--json", "-m", str(tiny_model_dir), script]) == 0
    outputs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Changes without RETURNING (the word in a string or a comment does not count) print nothing.
    assert outputs == [[{"a": 3}], [{"a": 13}], [{"note": "x"}], [{"a": 13}]]


def test_merge_with_returning_and_execute_print_their_rows(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both ran and printed nothing: PREPARE and EXECUTE are how a script takes parameters.
    script = (
        "CREATE TABLE t(a INT, b TEXT); INSERT INTO t VALUES (1, 'x');"
        "MERGE INTO t USING (SELECT 1 AS a, 'y' AS b) s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = s.b "
        "RETURNING b; MERGE INTO t USING (SELECT 2 AS a, 'z' AS b) s ON t.a = s.a "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.a, s.b);"
        "PREPARE q AS SELECT $1 + 1 AS r; EXECUTE q(41)"
    )
    assert main(["sql", "--json", "-m", str(tiny_model_dir), script]) == 0
    outputs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert outputs == [[{"b": "y"}], [{"r": 42}]]


def test_json_keeps_columns_of_one_name(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A SELECT * over a join printed the last 'name' only: the first was lost.
    query = (
        "SELECT * FROM (SELECT 1 AS id, 'left' AS name) a "
        "JOIN (SELECT 1 AS id, 'right' AS name, 5 AS name_1) b ON a.id = b.id"
    )
    assert main(["sql", "--json", "-m", str(tiny_model_dir), query]) == 0
    [row] = json.loads(capsys.readouterr().out)
    # As DuckDB names the columns of a table made from this query.
    assert row == {"id": 1, "name": "left", "id_1": 1, "name_1": "right", "name_1_1": 5}


def slow_encoding(monkeypatch: pytest.MonkeyPatch, seconds: float) -> threading.Timer:
    """Encoder.encode made slow, and a Ctrl-C (SIGINT from another thread) after ``seconds`` of it."""
    original = polyemb.Encoder.encode
    ctrl_c = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))

    def slow(self: polyemb.Encoder, *args: object, **kwargs: object) -> object:
        if not ctrl_c.is_alive() and not ctrl_c.finished.is_set():
            ctrl_c.start()
        time.sleep(0.2)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(polyemb.Encoder, "encode", slow)
    return ctrl_c


@pytest.mark.parametrize(
    ("where", "output"),
    [("statement", []), ("statement", ["--csv"]), ("statement", ["--json"]), ("index", [])],
    ids=["statement-table", "statement-csv", "statement-json", "index"],
)
def test_ctrl_c_ends_as_interrupted(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
    output: list[str],
) -> None:
    # DuckDB turned Ctrl-C into "RuntimeError: Query interrupted" (a traceback, exit 1), or into
    # a failed UDF (exit 1); also while an --index was being built. CSV and JSON run the
    # statement on the connection and fetch its rows in chunks; the table, as a relation.
    before = signal.getsignal(signal.SIGINT)
    ctrl_c = slow_encoding(monkeypatch, 0.5)
    # The index's query runs embed() inside DuckDB, as the statement does.
    query = "SELECT i AS key, 'text ' || i AS text FROM range(200000) t(i) WHERE embed(text) IS NOT NULL"
    argv = ["sql", *output, "-m", str(tiny_model_dir)]
    argv += ["--index", "p", query, "SELECT 1"] if where == "index" else [f"SELECT count(*) FROM ({query})"]
    try:
        assert main(argv) == 130
    finally:
        ctrl_c.cancel()
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # put back


class _CtrlCOnFirstWrite(io.StringIO):
    """A stdout that keeps its text and sends this process SIGINT after the first write."""

    sent = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return written


@pytest.mark.parametrize(("output", "begun"), [("--csv", "key,text\n"), ("--json", "[{")])
def test_ctrl_c_while_rows_are_written(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
    begun: str,
) -> None:
    # CSV and JSON are written as the rows are fetched: Ctrl-C between two fetches stops the
    # statement and ends the command as interrupted, as one during the statement does.
    stdout = _CtrlCOnFirstWrite()
    monkeypatch.setattr(sys, "stdout", stdout)
    query = "SELECT i AS key, 'text ' || i AS text FROM range(200000) t(i) WHERE embed(text) IS NOT NULL"
    assert main(["sql", output, "-m", str(tiny_model_dir), query]) == 130
    assert stdout.getvalue().startswith(begun)
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_is_left_alone_where_it_is_ignored(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A shell's background job starts with SIGINT ignored: a Ctrl-C meant for the foreground
    # job stopped it (the handler replaced the ignore).
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctrl_c = slow_encoding(monkeypatch, 0.1)
        query = "SELECT count(embed('text ' || i)) AS n FROM range(5000) t(i)"
        assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == 0
        ctrl_c.join()
        assert capsys.readouterr().out.splitlines() == ["n", "5000"]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_sql_with_an_index_runs_the_semantic_join_recipe(
    minilm_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])
    index = ["--index", "products", "SELECT id AS key, name AS text FROM 'udfs/data/products.csv'"]
    argv = ["sql", "-m", str(minilm_dir), *index, "-f", "udfs/duckdb/semantic_join.sql", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 36  # 18 orders x 2 matches
    best = {row["order_text"]: row["product"] for row in rows[::2]}
    # all-MiniLM-L6-v2 is an English model: it gets the orders that share words with a product
    # (the multilingual default model gets them all).
    assert best["Espressomaschine mit Milchaufschäumer"] == "Espresso machine with milk frother"
    assert best["Bureaulamp met dimmer"] == "LED desk lamp with dimmer"
    assert best["Zaino per portatile con porta USB"] == "Laptop backpack with USB charging port"
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(0, len(rows), 2))


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_command_quietly(tiny_model_dir: Path, tmp_path: Path) -> None:
    # `polyemb sql --csv ... | head` ended in a BrokenPipeError traceback (exit 1). Buffered
    # stdout, as in a shell (no PYTHONUNBUFFERED), so Python's own last flush at exit is tried.
    query = "SELECT i, 'row number ' || i AS t FROM range(1000000) r(i)"
    env = _buffered_environment()
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "polyemb.cli", "sql", "--csv", "-m", str(tiny_model_dir), query],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        first = [process.stdout.readline() for _ in range(2)]
        process.stdout.close()  # as head does after its lines
        status = process.wait(timeout=300)
        stderr.seek(0)
        error = stderr.read()
    assert status == 141, error
    assert first == ["i,t\n", "0,row number 0\n"]
    assert "Traceback" not in error and "Exception ignored" not in error, error


@pytest.mark.parametrize(
    ("query", "status"),
    [("SELECT 1 AS a", 141), ("SELECT 1 AS a; SELECT nosuch", 1)],
    ids=["small-result", "then-an-error"],
)
def test_a_reader_gone_before_anything_is_written(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    query: str,
    status: int,
) -> None:
    # A result smaller than stdout's buffer is written only when it is flushed: main flushes it
    # whatever the status (else Python's last flush at exit failed: "Exception ignored", exit
    # 120), keeps an error's status, and points the broken stdout at /dev/null.
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["sql", "--csv", "-m", str(tiny_model_dir), query]) == status
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
        monkeypatch.undo()  # the capture's stdout back before the file closes (flushing to /dev/null)
    if status == 1:
        assert "nosuch" in capsys.readouterr().err


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Only stdout's reader gone ends the command quietly: a broken pipe to a child process or a
    # socket, with stdout a healthy file, is an error to see.
    def broken(args: object) -> int:
        raise BrokenPipeError("a child's pipe")

    monkeypatch.setattr("polyemb.cli.sql._sql", broken)
    with open(tmp_path / "out", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(BrokenPipeError, match="a child's pipe"):
            main(["sql", "-m", str(tiny_model_dir), "SELECT 1"])


@pytest.mark.parametrize("rows", [1, 200_000], ids=["at-the-last-flush", "while-rows-are-written"])
def test_output_that_cannot_be_written_is_a_one_line_error(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rows: int
) -> None:
    # /dev/full: every write fails with ENOSPC, at the last flush for a small result, inside the
    # command for a large one.
    with open("/dev/full", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["sql", "--csv", "-m", str(tiny_model_dir), f"SELECT i FROM range({rows}) r(i)"]) == 1
        if rows == 1:  # the rows still in the buffer: stdout silenced, or the exit's flush fails again
            assert os.path.samestat(os.fstat(stdout.fileno()), os.stat(os.devnull))
        monkeypatch.undo()
    assert "error: cannot write: No space left on device" in capsys.readouterr().err


def test_a_closed_stdout_discards_the_output(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `>&-` leaves sys.stdout None: print() writes nothing; csv.writer(None) raised a TypeError.
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), "SELECT 1 AS a"]) == 0
    opened = sys.stdout
    monkeypatch.undo()
    assert opened is not None and opened.name == os.devnull
    opened.close()


class _InterruptedFlush(io.StringIO):
    """A stdout whose first flush is where Ctrl-C comes (a pipe nobody reads, full)."""

    interrupted = False

    def flush(self) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt


def test_ctrl_c_while_the_last_output_waits(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # After the command, main flushes stdout; Ctrl-C there ended in a traceback.
    stdout = _InterruptedFlush()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["sql", "--csv", "-m", str(tiny_model_dir), "SELECT 1 AS a"]) == 130
    assert stdout.interrupted and "interrupted" in capsys.readouterr().err


@pytest.mark.slow
def test_an_error_into_a_pipe_whose_reader_is_gone(tiny_model_dir: Path) -> None:
    # `polyemb sql ... 2>&1 | head` where the command fails and head has gone: the error line
    # cannot be written either, and stderr's own last flush at exit failed again (exit 120).
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = _buffered_environment()
    argv = [sys.executable, "-m", "polyemb.cli", "sql", "--csv", "-m", str(tiny_model_dir), "SELECT nosuch"]
    try:
        status = subprocess.run(argv, stdout=write_end, stderr=write_end, env=env, timeout=300).returncode
    finally:
        os.close(write_end)
    assert status == 141


def _buffered_environment() -> dict[str, str]:
    """This environment without PYTHONUNBUFFERED: a child's stdout buffered, as in a shell."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
