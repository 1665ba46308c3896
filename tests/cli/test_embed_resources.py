"""`polyemb embed` streams: memory does not grow with the rows; a killed run leaves no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

RUN_AND_REPORT_PEAK = """
import sys
from polyemb.cli import main
status = main(sys.argv[1:])
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print("PEAK_KIB", peak)
sys.exit(status)
"""


def write_rows(path: Path, rows: int) -> Path:
    pq.write_table(
        pa.table({"id": pa.array(range(rows)), "text": [f"short text number {i}" for i in range(rows)]}), path
    )
    return path


def embed_peak_mib(source: Path, output: Path, model: Path) -> float:
    argv = ["embed", str(source), "-c", "text", "-o", str(output), "-m", str(model), "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT_PEAK, *argv], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split("PEAK_KIB")[1].split()[0]) / 1024


@pytest.mark.slow
def test_memory_does_not_grow_with_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    small = embed_peak_mib(
        write_rows(tmp_path / "small.parquet", 50_000), tmp_path / "small_out.parquet", tiny_model_dir
    )
    large = embed_peak_mib(
        write_rows(tmp_path / "large.parquet", 200_000), tmp_path / "large_out.parquet", tiny_model_dir
    )
    print(f"polyemb embed peak RSS: 50k rows {small:.0f} MiB, 200k rows {large:.0f} MiB")
    assert pq.read_metadata(tmp_path / "large_out.parquet").num_rows == 200_000
    assert large < small + 100  # 4x the rows, (nearly) the same memory


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_run_leaves_no_output_that_looks_complete(
    tiny_model_dir: Path, tmp_path: Path, sig: int
) -> None:
    source = write_rows(tmp_path / "in.parquet", 300_000)
    output = tmp_path / "out.parquet"
    argv = [
        "embed",
        str(source),
        "-c",
        "text",
        "-o",
        str(output),
        "-m",
        str(tiny_model_dir),
        "--no-progress",
        "--chunk-rows",
        "2000",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "polyemb.cli", *argv], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while (
        not any(p.stat().st_size > 0 for p in tmp_path.glob("out.parquet.*.partial"))
        and time.monotonic() < deadline
        and process.poll() is None
    ):
        time.sleep(0.05)
    assert list(tmp_path.glob("out.parquet.*.partial")), "the run never started writing"
    os.kill(process.pid, sig)
    process.wait(timeout=60)
    assert not output.exists()
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert not list(tmp_path.glob("*.partial"))  # cleaned up on interrupt
    # After SIGKILL only the .partial file can remain: its name says it is not the output.
