"""Parity with sentence-transformers, the reference, on real multilingual sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import polyemb


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


def reference_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(
    minilm_dir: Path, minilm_encoder: polyemb.Encoder, sts_sentences: list[str]
) -> None:
    assert len(sts_sentences) >= 1000
    ours = minilm_encoder.encode(sts_sentences)
    theirs = reference_vectors(minilm_dir, sts_sentences)
    cosines = row_cosines(ours, theirs)
    print(f"MiniLM parity: {len(sts_sentences)} sentences, min row cosine {cosines.min():.8f}")
    assert cosines.min() >= 0.99999


def test_tiny_model_matches_sentence_transformers(
    tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, sts_sentences: list[str]
) -> None:
    # The tiny model truncates at 32 tokens: this also checks truncation matches.
    texts = sts_sentences[:300]
    cosines = row_cosines(tiny_encoder.encode(texts), reference_vectors(tiny_model_dir, texts))
    assert cosines.min() >= 0.99999


@pytest.mark.parametrize("kind", ["mpnet", "deberta-v2"])
def test_models_whose_class_refuses_sdpa_load_with_eager_attention(
    tiny_model_dir: Path,
    tmp_path: Path,
    sts_sentences: list[str],
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # transformers 5 refuses SDPA for MPNet (all-mpnet-base-v2 and its kin) and DeBERTa-v2 with
    # a message that names "scaled_dot_product_attention", not "sdpa"; polyemb takes eager then.
    import json
    import shutil

    import torch
    from transformers import DebertaV2Config, DebertaV2Model, MPNetConfig, MPNetModel

    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    shape = {
        "vocab_size": tiny["vocab_size"],
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "pad_token_id": tiny["pad_token_id"],
    }
    torch.manual_seed(0)
    model: torch.nn.Module
    if kind == "mpnet":
        model = MPNetModel(MPNetConfig(max_position_embeddings=514, **shape), add_pooling_layer=False)
    else:
        model = DebertaV2Model(DebertaV2Config(max_position_embeddings=512, relative_attention=True, **shape))
    folder = tmp_path / kind
    shutil.copytree(tiny_model_dir, folder)  # the tokenizer and sentence-transformers' files
    model.save_pretrained(folder)
    with caplog.at_level("INFO", logger="polyemb.loading"):
        encoder = polyemb.load(folder)
    assert "takes no sdpa attention in transformers; using eager" in caplog.text
    assert encoder._model.config._attn_implementation == "eager"
    texts = sts_sentences[:100]
    cosines = row_cosines(encoder.encode(texts), reference_vectors(folder, texts))
    assert cosines.min() >= 0.99999
