"""oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA): what polyemb chooses from the CPU's flags follows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from polyemb import _platform, quantize
from polyemb.attention import pays_off

# An Intel Xeon with AMX (Sapphire Rapids), as /proc/cpuinfo lists its flags (those that matter).
_XEON = "sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni "
_XEON += "avx512_fp16 amx_tile amx_bf16 amx_int8"


@pytest.fixture
def xeon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process reads the Xeon's flags, no cap set; the flags read under each cap are read afresh."""
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(_platform, "_cpuinfo", lambda: {"model name": "Intel Xeon", "flags": _XEON})
    _platform._flags_under.cache_clear()
    yield
    _platform._flags_under.cache_clear()


@pytest.mark.parametrize(
    ("cap", "left", "gone"),
    [
        ("", {"amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni"}, set()),
        ("DEFAULT", {"amx_int8", "amx_bf16", "avx512_bf16"}, set()),
        ("AVX2", {"avx2", "fma"}, {"avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8"}),
        ("AVX2_VNNI", {"avx2", "avx_vnni"}, {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}),
        ("AVX512_CORE", {"avx512f", "avx512bw"}, {"avx512_vnni", "avx512_bf16", "amx_bf16"}),
        ("AVX512_CORE_VNNI", {"avx512_vnni"}, {"avx512_bf16", "amx_int8"}),
        # Zen 4's instruction sets, spelt in lower case
        ("avx512_core_bf16", {"avx512_vnni", "avx512_bf16"}, {"avx512_fp16", "amx_int8", "amx_bf16"}),
        ("AVX10_1_512", {"avx512_fp16", "avx_vnni"}, {"amx_tile", "amx_int8", "amx_bf16"}),
        ("AVX512_CORE_AMX", {"amx_int8", "amx_bf16"}, set()),
    ],
)
def test_a_cap_leaves_out_the_flags_above_it(
    xeon: None, monkeypatch: pytest.MonkeyPatch, cap: str, left: set[str], gone: set[str]
) -> None:
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    flags = _platform.cpu_flags()
    assert left <= flags and not gone & flags
    assert "sse4_2" in flags  # flags below every level stay
    described = _platform.cpu_description()
    assert ("oneDNN capped at" in described) == (cap not in ("", "DEFAULT"))


def test_the_older_variable_counts_and_the_newer_wins(xeon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert _platform.onednn_cap() == "AVX2" and "avx512f" not in _platform.cpu_flags()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert _platform.onednn_cap() == "AVX512_CORE_BF16" and "avx512_bf16" in _platform.cpu_flags()


def test_what_polyemb_chooses_follows_the_cap(xeon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert quantize.weight_steps() == 127 and quantize.activation_dtype() == torch.bfloat16
    assert _platform.has_amx() and pays_off(cpu, torch.bfloat16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # Zen 4's instruction sets
    assert quantize.weight_steps() == 127 and quantize.activation_dtype() == torch.bfloat16
    assert not _platform.has_amx() and pays_off(cpu, torch.bfloat16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # kernels that sum u8 x s8 pairs in 16 bits
    assert quantize.weight_steps() == 63 and quantize.activation_dtype() == torch.float32
    assert not _platform.has_amx() and not pays_off(cpu, torch.bfloat16)


# Loads the tiny model in fp32 and int8 in a process whose oneDNN is capped (oneDNN reads the cap
# once, at its first use), and prints the int8 layers' weight steps, the activations' dtype and
# the row cosines to fp32.
_CAPPED_CHILD = """
import json, sys
import numpy as np
import polyemb
from polyemb.quantize import Int8Linear
folder, texts = sys.argv[1], json.loads(sys.stdin.read())
reference = polyemb.load(folder, precision="fp32").encode(texts)
int8 = polyemb.load(folder, precision="int8")
cosines = (int8.encode(texts) * reference).sum(axis=1)
steps = sorted({m.steps for m in int8._model.modules() if isinstance(m, Int8Linear)})
print(json.dumps({"steps": steps, "dtype": str(int8.dtype), "mean": float(np.mean(cosines)),
                  "min": float(np.min(cosines))}))
"""


@pytest.mark.skipif(quantize.weight_steps() is None, reason="int8 needs AVX2, which this CPU lacks")
@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE_BF16"])
def test_int8_runs_with_onednn_capped(
    tiny_model_dir: Path, sts_sentences: list[str], monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    """The kernels the cap leaves are the ones int8 runs on, with the vectors of the uncapped CPU's int8.

    Under AVX2 on a CPU with VNNI, int8 used to round its weights to 8 bits for kernels that
    sum pairs in 16 bits (the probe then refused int8, naming torch); under AVX2_VNNI it wrote
    bf16 from oneDNN's reference kernel (7.7 s a product). AVX512_CORE_BF16 is what AMD Zen 4
    and 5 have. On a CPU with no more than the cap, the child runs as this process does.
    """
    environment = {name: value for name, value in os.environ.items() if name != "DNNL_MAX_CPU_ISA"}
    child = subprocess.run(
        [sys.executable, "-c", _CAPPED_CHILD, str(tiny_model_dir)],
        input=json.dumps(sts_sentences[:200]),
        env={**environment, "ONEDNN_MAX_CPU_ISA": cap},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    printed = json.loads(child.stdout.strip().splitlines()[-1])
    flags = _platform._flags_under(cap)
    assert printed["steps"] == [quantize.weight_steps(flags)]
    assert printed["dtype"] == str(quantize.activation_dtype(flags))
    # The tiny model's int8 against its fp32, as test_int8 holds it uncapped.
    assert printed["mean"] > 0.99 and printed["min"] > 0.95
