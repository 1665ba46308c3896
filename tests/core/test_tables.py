"""The one reader of table files: formats by name, text columns as text, NULL against empty, errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.tables import check_output, publishing, read_table, read_table_batches, table_format


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


def test_every_csv_column_reads_as_written_also_past_the_first_block(tmp_path: Path) -> None:
    # Over pyarrow's 16 MiB block: a column that looks numeric in the first block turns into text
    # later (it failed the run), quoted texts hold newlines across blocks (a parse error), and
    # zip codes kept their leading zeros only in the text column.
    path = tmp_path / "big.csv"
    body = "x" * 100_000
    rows = [f'{i if i < 190 else f"A{i}"},0{i:04d},"line one\nline two {i} {body}"' for i in range(200)]
    path.write_text("id,zip,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert path.stat().st_size > 1 << 24
    table = read_table(path, ["text"])
    assert table.schema == pa.schema([("id", pa.string()), ("zip", pa.string()), ("text", pa.string())])
    assert table.column("id").to_pylist() == [str(i) if i < 190 else f"A{i}" for i in range(200)]
    assert table.column("zip").to_pylist()[:2] == ["00000", "00001"]
    assert table.column("text").to_pylist()[199] == f"line one\nline two 199 {body}"


def test_a_header_only_csv_is_an_empty_table_of_text_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,text\n", encoding="utf-8")
    table = read_table(path, ["text"])
    assert table.num_rows == 0 and table.schema == pa.schema([("id", pa.string()), ("text", pa.string())])


def test_a_damaged_parquet_page_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table({"id": list(range(300)), "text": [f"text number {i}" for i in range(300)]})
    pq.write_table(table, path, row_group_size=50, compression="none")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # the footer stays readable
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_table(path, ["text"])


def test_each_writer_publishes_its_own_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with publishing(target) as first, publishing(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        pq.write_table(pa.table({"run": [1] * 1000}), first)
        pq.write_table(pa.table({"run": [2] * 10}), second)
    # The second finished first, then the first replaced it: a whole file either way.
    assert pq.read_table(target).column("run").to_pylist() == [1] * 1000
    with pytest.raises(KeyError), publishing(target) as failed:
        failed.write_bytes(b"half")
        raise KeyError("stop")
    assert pq.read_table(target).num_rows == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_an_output_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.parquet"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="exists and is not a file"):
        check_output(fifo)
    assert check_output(tmp_path / "new.parquet") == tmp_path / "new.parquet"


def test_an_output_link_is_written_through_and_kept(tmp_path: Path) -> None:
    # `-o /dev/stdout` with stdout redirected to a file replaced the /dev/stdout link itself.
    (tmp_path / "runs").mkdir()
    link = tmp_path / "latest.parquet"
    link.symlink_to(tmp_path / "runs" / "v1.parquet")  # not there yet: written as the shell's > writes
    target = check_output(link)
    assert target == tmp_path / "runs" / "v1.parquet"
    with publishing(target) as partial:
        pq.write_table(pa.table({"run": [1]}), partial)
    assert link.is_symlink() and pq.read_table(link).column("run").to_pylist() == [1]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    named = tmp_path / "named.parquet"
    named.symlink_to(fifo)
    with pytest.raises(
        InvalidInputError, match=r"'.*named.parquet' \(a link to '.*pipe'\) exists and is not"
    ):
        check_output(named)
    text = tmp_path / "out.parquet"
    text.symlink_to(tmp_path / "redirected.txt")  # as /dev/stdout with stdout sent to a .txt
    with pytest.raises(InvalidInputError, match=r"\(a link to '.*redirected.txt'\) would be Parquet"):
        check_output(text)
    typed = tmp_path / "out.csv"
    typed.symlink_to(tmp_path / "real.parquet")  # the name the next tool reads says CSV
    with pytest.raises(
        InvalidInputError, match=r"'.*out.csv' \(a link to '.*real.parquet'\) would be Parquet"
    ):
        check_output(typed)


def test_a_folder_that_cannot_take_the_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "out.parquet"
    with pytest.raises(InvalidInputError, match="cannot write"), publishing(target):
        pass


def test_a_header_after_blank_lines_or_with_a_quoted_newline_is_the_header(tmp_path: Path) -> None:
    # Both came back with (part of) the header as a data row.
    for name, content in [
        ("blank.csv", "\r\n\ntext,id\nhello world,1\nbonjour,2\n"),
        ("quoted.csv", '"note\n(free text)",text,id\nx,hello world,1\ny,bonjour,2\n'),
    ]:
        path = tmp_path / name
        path.write_bytes(content.encode())
        table = read_table(path, ["text"])
        assert table.column("text").to_pylist() == ["hello world", "bonjour"], name
        assert table.column("id").to_pylist() == ["1", "2"], name


def test_other_columns_that_are_not_utf8_stay_bytes_and_old_mac_lines_read(tmp_path: Path) -> None:
    # Reading every column as text failed the run on a Latin-1 city name beside the texts.
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,city\nhello world,M\xfcnchen\nbonjour,Paris\n")
    table = read_table(path, ["text"])
    assert table.column("text").to_pylist() == ["hello world", "bonjour"]
    assert table.column("city").to_pylist() == [b"M\xfcnchen", b"Paris"]
    mac = tmp_path / "mac.csv"  # lines ended by \r alone: a raw csv.Error before
    mac.write_bytes(b"sentence1,sentence2,score\rA cat,Un gato,4.5\rDog,Perro,3\r")
    assert read_table(mac, ["sentence1"]).column("sentence2").to_pylist() == ["Un gato", "Perro"]
    assert read_table(mac, ["sentence1"], headerless=("sentence1", "sentence2", "score")).num_rows == 2
