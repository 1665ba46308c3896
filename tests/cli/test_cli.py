"""The polyemb command, run in-process through main(argv)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.arrow import vectors_from_arrow
from polyemb.bench.encode import DEFAULT_ROUNDS
from polyemb.bench.store import ENGINES
from polyemb.cache import DEFAULT_CACHE_MB
from polyemb.cli import build_parser, main
from polyemb.sts import MAX_SPEARMAN_DROP, MIN_MEAN_COSINE
from polyemb.tables import CHUNK_ROWS

COMMANDS = [
    "embed",
    "similarity",
    "dedup",
    "sql",
    "eval-sts",
    "check-precision",
    "bench",
    "bench-memory",
    "bench-store",
    "bench-join",
    "bench-long",
    "store",
]


def test_every_command_is_listed() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == sorted(COMMANDS)


@pytest.mark.parametrize(
    "command", [[], *([name] for name in COMMANDS), ["store", "stats"], ["store", "compact"], ["store", "gc"]]
)
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: polyemb" in capsys.readouterr().out


def test_defaults_come_from_the_modules_that_use_them(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["embed", "in.csv", "-c", "t", "-o", "out.parquet"]).chunk_rows == CHUNK_ROWS
    check = parser.parse_args(["check-precision", "sts.csv"])
    assert (check.max_drop, check.min_mean_cosine) == (MAX_SPEARMAN_DROP, MIN_MEAN_COSINE)
    assert parser.parse_args(["bench"]).rounds == DEFAULT_ROUNDS
    assert parser.parse_args(["bench-store", "lookup"]).engines == list(ENGINES)
    with pytest.raises(SystemExit):
        main(["sql", "--help"])
    assert f"(default {DEFAULT_CACHE_MB:g})" in " ".join(capsys.readouterr().out.split())


def test_similarity(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["similarity", "--model", str(tiny_model_dir), "The cat", "El gato", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b = tiny_encoder.encode(["The cat", "El gato"])
    assert out["similarity"] == pytest.approx(float(a @ b), abs=1e-6)


def test_embed_csv_keeps_columns_and_nulls(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        'id,text,score\n1,hello world,0.5\n2,,0.7\n3,"",0.1\n4,123,0.2\n5,"a, quoted text",0.3\n'
    )
    output = tmp_path / "out.parquet"
    assert main(["embed", str(source), "-c", "text", "-o", str(output), "-m", str(tiny_model_dir)]) == 0
    assert "5 rows (1 NULL texts" in capsys.readouterr().err
    table = pq.read_table(output)
    assert table.column_names == ["id", "text", "score", "embedding"]
    assert table.column("id").to_pylist() == ["1", "2", "3", "4", "5"]  # CSV columns are text, as written
    # An empty unquoted cell is NULL; a quoted "" is the empty string; 123 stays the text "123".
    assert table.column("text").to_pylist() == ["hello world", None, "", "123", "a, quoted text"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), tiny_encoder.dim)
    matrix, valid = vectors_from_arrow(table.column("embedding"))
    assert valid.tolist() == [True, False, True, True, True]
    expected = tiny_encoder.encode(["hello world", "", "123", "a, quoted text"])
    np.testing.assert_allclose(matrix[valid], expected, atol=1e-6)
    meta = json.loads(table.schema.metadata[b"polyemb"])
    assert meta["model"] == tiny_encoder.provenance
    assert meta["dim"] == tiny_encoder.dim


def test_embed_parquet_in_small_chunks(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    texts = [f"row {i} " + "word " * (i % 5) if i % 11 else None for i in range(100)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": list(range(100)), "body": texts}), source)
    output = tmp_path / "out.parquet"
    argv = [
        "embed",
        str(source),
        "-c",
        "body",
        "-o",
        str(output),
        "-m",
        str(tiny_model_dir),
        "--chunk-rows",
        "7",
    ]
    assert main([*argv, "--vector-column", "vec"]) == 0
    table = pq.read_table(output)
    assert table.column("key").to_pylist() == list(range(100))
    matrix, valid = vectors_from_arrow(table.column("vec"))
    expected, expected_valid = tiny_encoder.encode_nullable(texts)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(matrix, expected, atol=1e-5)


def test_embed_errors_are_clear_and_leave_no_output(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,title\n1,hello\n")
    output = tmp_path / "out.parquet"
    model = ["-m", str(tiny_model_dir)]
    assert main(["embed", str(source), "-c", "titel", "-o", str(output), *model]) == 1
    assert "Did you mean 'title'?" in capsys.readouterr().err
    assert (
        main(["embed", str(source), "-c", "title", "-o", str(output), "--vector-column", "id", *model]) == 1
    )
    assert "already has a column 'id'" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "in.xlsx"), "-c", "title", "-o", str(output), *model]) == 1
    assert "does not exist" in capsys.readouterr().err
    numbers = tmp_path / "n.parquet"
    pq.write_table(pa.table({"n": [1, 2]}), numbers)
    assert main(["embed", str(numbers), "-c", "n", "-o", str(output), *model]) == 1
    assert "column 'n' has Arrow type int64" in capsys.readouterr().err
    twice = tmp_path / "twice.csv"
    twice.write_text("id,title,id\n1,hello,2\n")
    for command in ("embed", "dedup"):  # wrote a file pyarrow and pandas cannot read back
        assert main([command, str(twice), "-c", "title", "-o", str(output), *model]) == 1
        assert "several columns named 'id'" in capsys.readouterr().err
    nowhere = tmp_path / "no" / "such" / "out.parquet"
    for command in ("embed", "dedup"):  # told before any text is embedded
        assert main([command, str(source), "-c", "title", "-o", str(nowhere), *model]) == 1
        assert "the output's folder" in capsys.readouterr().err
        assert main([command, str(source), "-c", "title", "-o", str(tmp_path), *model]) == 1
        assert "is a folder; name a file" in capsys.readouterr().err
        for name in ("out.csv", "out.TSV", "out.txt", "out.json", "out.csv.gz"):  # Parquet, misnamed
            assert main([command, str(source), "-c", "title", "-o", str(tmp_path / name), *model]) == 1
            assert "name it .parquet" in capsys.readouterr().err
            assert not (tmp_path / name).exists()
    for rows in ("0", "-5"):  # -5 used to write an empty file and exit 0
        with pytest.raises(SystemExit) as usage:
            main(["embed", str(source), "-c", "title", "-o", str(output), "--chunk-rows", rows, *model])
        assert usage.value.code == 2 and "expected a positive whole number" in capsys.readouterr().err
    assert not output.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_embed_interrupted_leaves_no_output(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"t": [f"text {i}" for i in range(50)]}), source)
    output = tmp_path / "out.parquet"
    calls = {"n": 0}
    original = polyemb.Encoder.encode_nullable

    def interrupt_on_third(self: polyemb.Encoder, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(polyemb.Encoder, "encode_nullable", interrupt_on_third)
    argv = [
        "embed",
        str(source),
        "-c",
        "t",
        "-o",
        str(output),
        "-m",
        str(tiny_model_dir),
        "--chunk-rows",
        "10",
    ]
    assert main(argv) == 130
    assert not output.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["similarity", "-m", str(tmp_path / "nothing"), "a", "b"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "POLYEMB_MODEL" in err


def test_a_store_that_cannot_be_written_can_be_used_read_only(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The error told users to open the store with on_write_error='warn', which no command took.
    from polyemb.store import writer

    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,hello world\n2,another text\n")
    store = str(tmp_path / "store")
    argv = ["embed", str(source), "-c", "text", "--store", store, "-m", str(tiny_model_dir)]

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", store)  # chmod denies root nothing

    monkeypatch.setattr(writer, "write_table", denied)
    assert main([*argv, "-o", str(tmp_path / "a.parquet")]) == 1
    assert "--store-on-write-error warn" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="writes are skipped"):
        assert main([*argv, "-o", str(tmp_path / "b.parquet"), "--store-on-write-error", "warn"]) == 0
    assert "2 embedded, 0 written" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "b.parquet").column("embedding").null_count == 0
    for command in ("sql", "dedup"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--store-on-write-error" in capsys.readouterr().out


def test_embed_with_a_store_and_the_store_commands(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,hello world\n2,\n3,another text\n4,hello world\n")
    model = ["-m", str(tiny_model_dir)]
    store = str(tmp_path / "store")
    assert (
        main(
            ["embed", str(source), "-c", "text", "-o", str(tmp_path / "a.parquet"), "--store", store, *model]
        )
        == 0
    )
    assert "2 texts looked up, 0 found, 2 embedded, 2 written" in capsys.readouterr().err
    source.write_text("id,text\n1,hello world\n2,an edited text\n3,another text\n")
    assert (
        main(
            ["embed", str(source), "-c", "text", "-o", str(tmp_path / "b.parquet"), "--store", store, *model]
        )
        == 0
    )
    assert "3 texts looked up, 2 found, 1 embedded, 1 written" in capsys.readouterr().err
    # Chunk by chunk, a repeated text is looked up again: the message says so (it said 'distinct').
    output, chunked = str(tmp_path / "c.parquet"), ["--chunk-rows", "2"]
    assert main(["embed", str(source), "-c", "text", "-o", output, "--store", store, *chunked, *model]) == 0
    assert (
        "3 texts looked up (distinct within each chunk of 2 rows), 3 found, 0 embedded"
        in capsys.readouterr().err
    )
    table = pq.read_table(tmp_path / "b.parquet")
    matrix, _ = vectors_from_arrow(table.column("embedding"))
    np.testing.assert_allclose(
        matrix, tiny_encoder.encode(["hello world", "an edited text", "another text"]), rtol=0, atol=1e-6
    )
    # The Parquet written records the model: in the schema metadata and in the vector field.
    assert (
        table.schema.field("embedding").type.value_field.metadata[b"polyemb.model"].decode()
        == tiny_encoder.provenance
    )

    assert main(["store", "stats", store]) == 0
    out = capsys.readouterr().out
    assert tiny_encoder.vector_spec().key in out and tiny_encoder.provenance in out
    assert [line.split()[1:4] for line in out.splitlines()[2:]] == [["3", "3", "2"]]  # entries distinct files
    assert main(["store", "compact", store]) == 0
    assert "2 files -> 1" in capsys.readouterr().out
    assert main(["store", "gc", store, "--keep-model", "typo@sha256:0"]) == 1
    assert "nothing dropped" in capsys.readouterr().err
    assert main(["store", "gc", store, "--keep-model", tiny_encoder.provenance]) == 0
    assert "dropped 0" in capsys.readouterr().out
    for action in (["stats"], ["compact"], ["gc", "--keep-model", tiny_encoder.provenance]):
        assert main(["store", action[0], str(tmp_path / "empty"), *action[1:]]) == 1
        err = capsys.readouterr().err  # says how to make one on the command line, not in Python
        assert "is not a polyemb vector store" in err and "--store FOLDER of `polyemb embed`" in err
        assert "create=False" not in err
    assert not (tmp_path / "empty").exists()  # refused, never made into one


def test_store_commands_report_bad_files(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    for text in ("one text", "another text"):
        polyemb.open_store(store).encode([text], encoder=tiny_encoder)
    [first, _] = sorted(store.glob("model=*/run=*/*.parquet"))
    first.write_bytes(b"")
    assert main(["store", "stats", str(store)]) == 0
    assert "compact advised: 1 bad files to set aside" in capsys.readouterr().out
    with pytest.warns(RuntimeWarning, match="set aside"):
        assert main(["store", "compact", str(store)]) == 0
    assert "1 bad files set aside" in capsys.readouterr().out
    assert main(["store", "stats", str(store)]) == 0
    assert "1 files set aside in _quarantine/" in capsys.readouterr().out
