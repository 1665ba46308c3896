"""The one reader of table files: formats by name, text columns as text, NULL against empty, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.tables import read_table, read_table_batches, table_format


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.parquet", "parquet"),
        ("a.PQ", "parquet"),
        ("a.csv", ".csv"),
        ("a.csv.gz", ".csv"),
        ("a.tsv.zst", ".tsv"),
        ("a.txt", "lines"),
        ("dated.2024.csv", ".csv"),
    ],
)
def test_the_format_comes_from_the_name(name: str, kind: str) -> None:
    assert table_format(Path(name)) == kind


@pytest.mark.parametrize("name", ["a.json", "a", "a.gz"])
def test_an_unknown_format_says_which_ones_are_read(name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"use a \.csv, \.tsv, \.parquet or \.txt"):
        table_format(Path(name))


def test_csv_columns_are_text_and_an_empty_cell_is_null_but_quoted_empty_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('id,text\n1,007\n2,\n3,""\n4,plain\n', encoding="utf-8")
    table = read_table(path, ["text"])
    assert table.column("text").type == pa.string()
    assert table.column("text").to_pylist() == ["007", None, "", "plain"]  # "007" stays text


def test_compressed_tsv_reads_like_plain(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("text\tn\nuno, dos\t1\ntres\t2\n")
    assert read_table(path, ["text"]).column("text").to_pylist() == ["uno, dos", "tres"]


def test_a_headerless_file_gets_the_names_given(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text("a cat,un gato,4.5\ndogs,perros,5\n", encoding="utf-8")
    names = ("sentence1", "sentence2", "score")
    table = read_table(path, ("sentence1", "sentence2"), headerless=names)
    assert table.column_names == list(names)
    assert table.column("sentence2").to_pylist() == ["un gato", "perros"]
    headed = tmp_path / "headed.csv"
    headed.write_text("sentence1,sentence2,score\nx,y,1\n", encoding="utf-8")
    assert read_table(headed, ("sentence1",), headerless=names).num_rows == 1  # the header is a header


def test_text_files_give_their_non_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("first line\n\n   \nsecond, with a comma\n", encoding="utf-8")
    assert read_table(path, ["text"]).column("text").to_pylist() == ["first line", "second, with a comma"]


def test_text_files_end_lines_at_newlines_only(tmp_path: Path) -> None:
    # A form feed, U+2028 or U+0085 inside a line is text (str.splitlines would cut there, making
    # rows that wc -l and an editor do not show); CRLF ends a line; a byte order mark is no text.
    path = tmp_path / "t.txt"
    path.write_bytes("\ufefffirst\r\nsecond\u2028still second\nthird\x0cline\nfourth\x85too\n".encode())
    assert read_table(path, ["text"]).column("text").to_pylist() == [
        "first",
        "second\u2028still second",
        "third\x0cline",
        "fourth\x85too",
    ]


def test_a_byte_order_mark_does_not_hide_a_header(tmp_path: Path) -> None:
    names = ("sentence1", "sentence2", "score")
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfsentence1,sentence2,score\nx,y,1\n")
    table = read_table(path, ("sentence1",), headerless=names)
    assert table.column_names == list(names) and table.column("sentence1").to_pylist() == ["x"]


def test_bad_batch_sizes_and_twice_named_columns_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,id\na,1\n")
    for rows in (0, -5):
        with pytest.raises(InvalidInputError, match="rows must be a positive int"):
            read_table_batches(path, ["text"], rows=rows)
    twice = tmp_path / "twice.csv"
    twice.write_text("text,text,id\na,b,1\n")
    with pytest.raises(InvalidInputError, match="2 columns named 'text'"):
        read_table(twice, ["text"])


def test_parquet_streams_in_batches_of_the_rows_asked(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)], "n": list(range(10))}), path)
    schema, total, batches = read_table_batches(path, ["text"], rows=4)
    assert schema.names == ["text", "n"] and total == 10
    assert [batch.num_rows for batch in batches] == [4, 4, 2]


def test_csv_streams_in_batches_of_the_rows_asked(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text\n" + "".join(f"t{i}\n" for i in range(10)), encoding="utf-8")
    _, total, batches = read_table_batches(path, ["text"], rows=3)
    assert total is None  # unknown until read
    assert [batch.num_rows for batch in batches] == [3, 3, 3, 1]


def test_a_missing_column_suggests_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,title\n1,a\n", encoding="utf-8")
    with pytest.raises(ColumnNotFoundError, match="Did you mean 'title'") as caught:
        read_table(path, ["titel"])
    assert caught.value.column == "titel" and caught.value.available == ["id", "title"]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_table(tmp_path / "nope.csv", ["text"])


def test_a_file_that_is_not_its_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="cannot read .* as parquet"):
        read_table(path, ["text"])


def test_a_broken_row_mid_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,n\n" + "a,1\n" * 5 + "b,1,extra\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_table(path, ["text"])
