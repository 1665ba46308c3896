"""oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA): what polyemb chooses from the CPU's flags follows it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import polyemb
from polyemb import _platform, quantize
from polyemb.attention import pays_off
from polyemb.bench.peak import flops_per_cycle
from polyemb.errors import InvalidInputError

# An Intel Xeon with AMX (Sapphire Rapids), as /proc/cpuinfo lists its flags (those that matter).
_XEON = "sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni "
_XEON += "avx512_fp16 amx_tile amx_bf16 amx_int8"


def _forget() -> None:
    """Have polyemb read the cap and the flags afresh (it reads them once, as oneDNN does)."""
    _platform.onednn_cap.cache_clear()
    _platform._flags_under.cache_clear()


def _cap(monkeypatch: pytest.MonkeyPatch, value: str, variable: str = "ONEDNN_MAX_CPU_ISA") -> None:
    """polyemb reads ``value`` as the cap; the environment is then cleared again, before oneDNN reads it.

    oneDNN reads the cap at its first use and keeps it for the process: a cap it saw here would
    stay for every later test (capped kernels under 8-bit weights).
    """
    monkeypatch.setenv(variable, value)
    _forget()
    _platform.onednn_cap()
    monkeypatch.delenv(variable)


@pytest.fixture
def xeon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process reads the Xeon's flags, no cap set; afterwards, this CPU's again."""
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(_platform, "_cpuinfo", lambda: {"model name": "Intel Xeon", "flags": _XEON})
    _forget()
    yield
    monkeypatch.undo()
    _forget()


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
        _cap(monkeypatch, cap)
    flags = _platform.cpu_flags()
    assert left <= flags and not gone & flags
    assert "sse4_2" in flags  # flags below every level stay
    assert _platform.hardware_flags() == frozenset(_XEON.split())
    described = _platform.cpu_description()
    assert ("oneDNN capped at" in described) == bool(gone)  # named where it leaves flags out


def test_the_older_variable_counts_and_the_newer_wins(xeon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _cap(monkeypatch, "AVX2", "DNNL_MAX_CPU_ISA")
    assert _platform.onednn_cap() == "AVX2" and "avx512f" not in _platform.cpu_flags()
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    _cap(monkeypatch, "AVX512_CORE_BF16")
    assert _platform.onednn_cap() == "AVX512_CORE_BF16" and "avx512_bf16" in _platform.cpu_flags()


def test_the_cap_is_read_once_as_onednn_reads_it(xeon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _platform.onednn_cap() == ""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # too late: oneDNN would not see it either
    assert _platform.onednn_cap() == "" and "amx_int8" in _platform.cpu_flags()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")  # before anything here starts oneDNN
    _cap(monkeypatch, " AVX2")  # oneDNN takes no spaces
    assert _platform.onednn_cap() == "" and "amx_int8" in _platform.cpu_flags()


def test_what_polyemb_chooses_follows_the_cap(xeon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert quantize.weight_steps() == 127 and quantize.activation_dtype() == torch.bfloat16
    assert _platform.has_amx() and pays_off(cpu, torch.bfloat16)
    _cap(monkeypatch, "AVX512_CORE_BF16")  # Zen 4's instruction sets
    assert quantize.weight_steps() == 127 and quantize.activation_dtype() == torch.bfloat16
    assert not _platform.has_amx() and pays_off(cpu, torch.bfloat16)
    _cap(monkeypatch, "AVX2_VNNI")  # 256-bit VNNI sums u8 x s8 into 32 bits too
    assert quantize.weight_steps() == 127 and quantize.activation_dtype() == torch.float32
    _cap(monkeypatch, "AVX2")  # kernels that sum u8 x s8 pairs in 16 bits
    assert quantize.weight_steps() == 63 and quantize.activation_dtype() == torch.float32
    assert not _platform.has_amx() and not pays_off(cpu, torch.bfloat16)
    # The bench's peak is the CPU's: the peers' kernels (MKL, ONNX Runtime, OpenVINO) are not capped.
    assert flops_per_cycle("int8") == 2048 and flops_per_cycle("bf16") == 1024


def test_refusals_and_warnings_name_the_cap_where_it_is_the_cause(
    xeon: None, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _cap(monkeypatch, "AVX")
    with pytest.raises(InvalidInputError, match="oneDNN is capped below it here .*AVX.*Lift the cap"):
        quantize.check_int8_supported(torch.device("cpu"))
    _cap(monkeypatch, "AVX2")
    with caplog.at_level(logging.WARNING, logger="polyemb.loading"):
        polyemb.load(tiny_model_dir, precision="bf16")
    assert "with oneDNN capped at AVX2, below this CPU's bfloat16 units" in caplog.text
    # A CPU without the instructions, no cap: the warning and the refusal say the CPU lacks them.
    monkeypatch.setattr(_platform, "_cpuinfo", lambda: {"flags": "sse4_2 avx"})
    _cap(monkeypatch, "DEFAULT")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polyemb.loading"):
        polyemb.load(tiny_model_dir, precision="bf16")
    assert "on a CPU without bfloat16 units" in caplog.text and "capped" not in caplog.text
    with pytest.raises(InvalidInputError, match="this CPU has neither"):
        quantize.check_int8_supported(torch.device("cpu"))


def _run_capped(cap: str, program: str, *args: str, stdin: str | None = None) -> Any:
    """Run ``program`` in a child process whose oneDNN is capped at ``cap``; its last output line, as JSON."""
    environment = {name: value for name, value in os.environ.items() if name != "DNNL_MAX_CPU_ISA"}
    child = subprocess.run(
        [sys.executable, "-c", program, *args],
        input=stdin,
        env={**environment, "ONEDNN_MAX_CPU_ISA": cap},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


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
@pytest.mark.parametrize("cap", ["AVX2", "AVX2_VNNI", "AVX512_CORE_BF16"])
def test_int8_runs_with_onednn_capped(
    tiny_model_dir: Path, sts_sentences: list[str], monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    """The kernels the cap leaves are the ones int8 runs on, with the vectors of the uncapped CPU's int8.

    Under AVX2 on a CPU with VNNI, int8 used to round its weights to 8 bits for kernels that
    sum pairs in 16 bits (the probe then refused int8, naming torch); under AVX2_VNNI it wrote
    bf16 from oneDNN's reference kernel (7.7 s a product for MiniLM's shapes). AVX512_CORE_BF16
    is what AMD Zen 4 and 5 have. On a CPU with no more than the cap, the child runs as this
    process does.
    """
    printed = _run_capped(cap, _CAPPED_CHILD, str(tiny_model_dir), stdin=json.dumps(sts_sentences[:200]))
    flags = _platform._flags_under(cap)  # this CPU's flags under the cap the child ran with
    assert printed["steps"] == [quantize.weight_steps(flags)]
    assert printed["dtype"] == str(quantize.activation_dtype(flags))
    # The tiny model's int8 against its fp32, as test_int8 holds it uncapped.
    assert printed["mean"] > 0.99 and printed["min"] > 0.95


# Runs int8's saturation probe in a process whose oneDNN is capped at AVX2 (kernels that sum each
# pair of u8 x s8 products in 16 bits), with the weight steps polyemb chooses, then with 8-bit
# ones as if it could not see the cap; prints each product's error and whether int8 is allowed.
_SATURATION_CHILD = """
import json
import torch
from polyemb.quantize import linear
with torch.inference_mode():
    errors = {}
    for seen in ("cap", "no cap"):
        if seen == "no cap":  # a cap set where polyemb cannot read it: the CPU's own flags
            linear.cpu_flags = lambda: frozenset({"avx2", "avx512f", "avx512_vnni"})
        got, expected = linear._saturation_probe()
        errors[seen] = [linear.weight_steps(), float((got - expected).abs().max() / expected.abs().max())]
    passes = linear._close(*linear._saturation_probe())  # the probe alone, as _supported() reads it
    print(json.dumps({"errors": errors, "probe passes": passes, "supported": linear._supported()}))
"""


@pytest.mark.skipif(quantize.weight_steps() is None, reason="int8 needs AVX2, which this CPU lacks")
def test_the_probe_refuses_int8_where_products_saturate_and_polyemb_cannot_see_why() -> None:
    """8-bit weights on kernels that sum pairs in 16 bits: the probe's product is off far past its tolerance.

    polyemb chooses 7-bit weights for such kernels from the flags under oneDNN's cap; a cap set
    where it cannot see it (in oneDNN's API, by another library in the process) would leave it
    8-bit weights. The saturation probe then must refuse int8 by itself, with room to spare: off
    by about 0.2 against a tolerance of 0.05 (its earlier product, absolute values of normal
    draws, was off by 0.005 and passed; another probe caught it), while the 7-bit weights
    polyemb chooses there are within 0.01.
    """
    printed = _run_capped("AVX2", _SATURATION_CHILD)
    (steps, error), (unseen_steps, unseen_error) = printed["errors"]["cap"], printed["errors"]["no cap"]
    assert steps == 63 and error < 0.01
    assert unseen_steps == 127 and unseen_error > 0.15
    assert printed["probe passes"] is False and printed["supported"] is False
