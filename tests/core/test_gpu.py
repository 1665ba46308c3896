"""The GPU path: half-precision weights, float32 pooling. Skipped where torch sees no CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import polyemb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here"),
]


@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16"])
def test_gpu_half_precision_matches_cpu(
    minilm_dir: Path, minilm_encoder: polyemb.Encoder, sts_sentences: list[str], precision: str
) -> None:
    gpu = polyemb.load(minilm_dir, device="auto", precision=precision)  # type: ignore[arg-type]
    assert gpu.device.type == "cuda"
    assert gpu.dtype in (torch.float16, torch.bfloat16)
    ours = gpu.encode(sts_sentences)
    assert ours.dtype == np.float32
    cosines = (ours * minilm_encoder.encode(sts_sentences)).sum(1)
    assert cosines.min() > 0.999


def test_gpu_threads_and_nulls(tiny_model_dir: Path) -> None:
    gpu = polyemb.load(tiny_model_dir, device="cuda")
    cpu = polyemb.load(tiny_model_dir, device="cpu", precision="fp32")
    texts = [None, "a", "b", None, "a"]
    vectors, valid = gpu.encode_nullable(texts)
    expected, expected_valid = cpu.encode_nullable(texts)
    np.testing.assert_array_equal(valid, expected_valid)
    assert ((vectors[valid] * expected[valid]).sum(1) > 0.999).all()
