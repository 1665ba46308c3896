"""With HF_HUB_OFFLINE=1 nothing touches the network, and a missing model fails fast with the hint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

GUARD = """
import socket
attempts = []
def deny(*args, **kwargs):
    attempts.append(args)
    raise AssertionError(f"network access attempted: {args!r}")
socket.socket.connect = deny
socket.socket.connect_ex = deny
socket.create_connection = deny
socket.getaddrinfo = deny
"""


def test_offline_touches_no_socket(tiny_model_dir: Path, tmp_path: Path) -> None:
    code = (
        GUARD
        + f"""
import polyemb
encoder = polyemb.load({str(tiny_model_dir)!r})
encoder.encode(["offline works"])
try:
    polyemb.load("acme/not-cached-anywhere")
except polyemb.ModelNotFoundError as exc:
    print("MISSING", "offline mode" in str(exc), "POLYEMB_MODEL" in str(exc), "--model" in str(exc))
try:
    polyemb.load()  # the default model, not cached here
except polyemb.ModelNotFoundError as exc:
    print("DEFAULT", polyemb.DEFAULT_MODEL in str(exc))
print("ATTEMPTS", len(attempts))
"""
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "POLYEMB_MODEL": ""}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING True True True" in result.stdout
    assert "DEFAULT True" in result.stdout
    assert "ATTEMPTS 0" in result.stdout
    assert time.perf_counter() - started < 60  # a hang guard: offline failure is immediate
