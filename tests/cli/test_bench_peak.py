"""`polyemb bench`'s tokens/s and fraction of the CPU's peak: the formulas, and the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import polyemb
from polyemb.bench import peak
from polyemb.cli import main

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
XLMR_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}


def test_flops_per_token_of_known_shapes() -> None:
    # MiniLM-L6: 2 * 6 * (4 * 384^2 + 2 * 384 * 1536) = 21.23 MFLOP, plus attention's
    # 2 * 6 * 2 * 384 for each token of the text.
    assert peak.flops_per_token(MINILM, 0) == pytest.approx(21_233_664)
    assert peak.flops_per_token(MINILM, 15) - peak.flops_per_token(MINILM, 0) == pytest.approx(
        12 * 2 * 384 * 15
    )
    # XLM-R base (the default model's shape): 12 layers of 768: about 170 MFLOP a token.
    assert peak.flops_per_token(XLMR_BASE, 0) == pytest.approx(169_869_312)
    with pytest.raises(KeyError):
        peak.flops_per_token({"hidden_size": 8}, 4)


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "expected"),
    [
        # Intel with AMX (Sapphire Rapids and later).
        (
            {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"},
            "GenuineIntel",
            "6",
            {"fp32": 64, "bf16": 1024, "int8": 2048, "fp16": 64},
        ),
        # AMD Zen 4: AVX-512 in two halves, bf16 and VNNI on it, no AMX.
        (
            {"avx512f", "avx512_bf16", "avx512_vnni"},
            "AuthenticAMD",
            "25",
            {"fp32": 32, "bf16": 64, "int8": 128, "fp16": 32},
        ),
        # AMD Zen 5: full-width AVX-512.
        (
            {"avx512f", "avx512_bf16", "avx512_vnni"},
            "AuthenticAMD",
            "26",
            {"fp32": 64, "bf16": 128, "int8": 256, "fp16": 64},
        ),
        # An AVX2 CPU without bf16 or VNNI: every precision falls back to the vector units.
        ({"avx2"}, "GenuineIntel", "6", {"fp32": 32, "bf16": 32, "int8": 64, "fp16": 32}),
        (set(), "", "", {"fp32": 8, "bf16": 8, "int8": 16, "fp16": 8}),
    ],
)
def test_flops_per_cycle_by_cpu_kind(
    flags: set[str], vendor: str, family: str, expected: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {"vendor_id": vendor, "cpu family": family}
    monkeypatch.setattr(peak, "cpuinfo_field", lambda name: fields.get(name, ""))
    assert {p: peak.flops_per_cycle(p, frozenset(flags)) for p in expected} == expected


def test_an_unknown_clock_gives_no_fraction(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = peak.PeakReport(tiny_model_dir)
    monkeypatch.setattr(peak, "clock_ghz", lambda: 0.0)
    assert report.fraction(100.0, 12.0, "fp32") is None
    monkeypatch.setattr(peak, "clock_ghz", lambda: 2.0)
    monkeypatch.setattr(peak, "physical_cores", lambda: 2)
    monkeypatch.setattr(peak, "flops_per_cycle", lambda precision, flags=None: 64)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    expected = 100.0 * 12.0 * peak.flops_per_token(config, 12.0) / (2 * 2.0e9 * 64)
    assert report.fraction(100.0, 12.0, "fp32") == pytest.approx(expected)
    assert peak.PeakReport(tiny_model_dir / "missing").fraction(100.0, 12.0, "fp32") is None


def test_the_report_gives_tokens_and_the_fraction_of_the_peak(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peak, "clock_ghz", lambda: 2.5)  # some machines report no clock
    argv = [
        "bench",
        "-m",
        str(tiny_model_dir),
        "--size",
        "30",
        "--rounds",
        "1",
        "--scenarios",
        "a,b",
        "--json",
    ]
    assert main([*argv, "--against", "sentence-transformers,polyemb-bf16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["peak"]["ghz"] == 2.5 and report["peak"]["physical_cores"] >= 1
    encoder = polyemb.load(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    from polyemb.bench.texts import make_scenario

    for name in ("a", "b"):  # b repeats each text 10 times: the work is the distinct texts'
        scenario = report["scenarios"][name]
        texts = make_scenario(name, None, None, 30)
        distinct = list(dict.fromkeys(texts))
        assert len(distinct) == (len(texts) if name == "a" else len(texts) // 10)
        assert scenario["mean_tokens"] == pytest.approx(encoder.token_counts(distinct).mean())
        for side_name, side in scenario["sides"].items():
            useful = side["median_per_s"] * len(distinct) / len(texts)  # distinct texts/s
            assert side["tokens_per_s"] == pytest.approx(useful * scenario["mean_tokens"])
            precision = "bf16" if side_name == "polyemb-bf16" else "fp32"
            work = side["tokens_per_s"] * peak.flops_per_token(config, scenario["mean_tokens"])
            assert side["peak_fraction"] == pytest.approx(work / peak.peak_flops(precision))
    assert main([*argv[:-1], "--against", "sentence-transformers"]) == 0
    assert "of peak" in capsys.readouterr().out


def test_token_counts_are_the_tokens_the_model_reads(tiny_model_dir: Path) -> None:
    encoder = polyemb.load(tiny_model_dir)
    counts = encoder.token_counts(["", "a cat", "word " * 500])
    assert counts[0] == 2  # the special tokens alone
    assert counts[0] < counts[1] < counts[2] == encoder.max_seq_length  # cut where encode cuts
    with pytest.raises(polyemb.InvalidInputError):
        encoder.token_counts(["fine", None])  # type: ignore[list-item]
