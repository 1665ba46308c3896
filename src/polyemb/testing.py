"""A tiny, randomly initialised XLM-RoBERTa sentence-transformers model, built offline in seconds.

The suite's fixture, and a tool for users' own tests: the folder it writes has the same files
as a real sentence-transformers model (config, tokenizer, safetensors weights, ``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json``), so it exercises the real loading
code. Its vectors mean nothing. For a given seed it is the same model in every process: the
weights are seeded, and the tokenizer's vocabulary (trained by the `tokenizers` library, whose
Unigram trainer orders and scores its pieces a little differently from one process to the next)
is put in one order with rounded scores.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

__all__ = ["SAMPLE_SENTENCES", "build_tiny_model"]

# Real sentences in many scripts: the tokenizer's training text, and handy test input.
SAMPLE_SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of snow.",
    "El gato está sentado en la alfombra.",
    "Un hombre toca la guitarra en la calle.",
    "Die Katze sitzt auf der Matte.",
    "Ein Mann spielt auf der Straße Gitarre.",
    "Le chat est assis sur le tapis.",
    "Un homme joue de la guitare dans la rue.",
    "Il gatto è seduto sul tappeto.",
    "O gato está sentado no tapete.",
    "De kat zit op de mat.",
    "Kot siedzi na macie.",
    "Кошка сидит на коврике.",
    "Мужчина играет на гитаре на улице.",
    "猫がマットの上に座っている。",
    "男性が通りでギターを弾いている。",
    "猫坐在垫子上。",
    "一个男人在街上弹吉他。",
    "القطة تجلس على السجادة.",
    "החתול יושב על השטיח.",
    "고양이가 매트 위에 앉아 있다.",
    "Η γάτα κάθεται στο χαλί.",
    "Kedi paspasın üzerinde oturuyor.",
    "Con mèo ngồi trên tấm thảm.",
    "बिल्ली चटाई पर बैठी है।",
    "Stock prices rose sharply after the announcement.",
    "The weather will be sunny tomorrow with light winds.",
    "Please send the quarterly report by Friday!",
    "I love this phone 😀👍 the battery lasts for days",
    "Order #12345 shipped on 2024-03-01 to 221B Baker Street.",
]


def _training_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [word for sentence in SAMPLE_SENTENCES for word in sentence.split()]
    corpus = list(SAMPLE_SENTENCES)
    for _ in range(2_000):
        corpus.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return corpus


def build_tiny_model(
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1_000,
    max_seq_length: int = 32,
    normalize: bool = False,
    embedding_rows: int | None = None,
    intermediate_size: int | None = None,
) -> Path:
    """Write a tiny sentence-transformers model (XLM-RoBERTa, mean pooling) to ``folder``.

    Args:
        folder: Where to write; created if missing.
        seed: Seeds the tokenizer's training text and the weights.
        hidden_size: Vector dimension.
        num_layers: Transformer layers.
        num_heads: Attention heads (must divide hidden_size).
        vocab_size: Upper bound for the trained Unigram vocabulary.
        max_seq_length: The ``sentence_bert_config.json`` max length; the tokenizer itself
            allows 128 tokens, as the real model's tokenizer allows more than its config.
        normalize: Add a Normalize module after pooling.
        embedding_rows: Rows of the embedding table, if more than the trained vocabulary
            (250,002 for XLM-RoBERTa's shape; the rows past the vocabulary are never looked up).
        intermediate_size: The feed-forward width; None: 4 x hidden_size.

    Returns:
        The folder, ready for :func:`polyemb.load`.

    Example:
        >>> from polyemb.testing import build_tiny_model
        >>> encoder = polyemb.load(build_tiny_model(tmp_path / "tiny"))
        >>> # The default model's shape (XLM-RoBERTa base), random weights, 1.1 GB:
        >>> build_tiny_model(tmp_path / "xlmr-base-shape", hidden_size=768, num_layers=12,
        ...                  num_heads=12, embedding_rows=250_002, max_seq_length=128)
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    from polyemb.loading import quiet_transformers

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainee = Tokenizer(models.Unigram())
    trainee.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    trainee.train_from_iterator(_training_corpus(seed), trainer)
    trained = [entry for entry in json.loads(trainee.to_str())["model"]["vocab"] if entry[0] not in specials]
    vocab = [(piece, 0.0) for piece in specials] + _settled(trained)
    tokenizer = XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)])
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(out)

    config = XLMRobertaConfig(
        vocab_size=max(len(tokenizer), embedding_rows or 0),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or hidden_size * 4,
        max_position_embeddings=130,  # 128 tokens after RoBERTa's padding-index offset of 2
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config).eval()
    quiet_transformers(lambda: model.save_pretrained(out, safe_serialization=True))

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "modules.json", modules)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    _write_json(out / "config_sentence_transformers.json", {"similarity_fn_name": "cosine"})
    return out


def _settled(trained: list[list[object]]) -> list[tuple[str, float]]:
    """The trained pieces in one order, with scores that are the same in every process.

    From one process to the next the Unigram trainer's scores differ in their last bits, and
    pieces with equal scores come out in another order: other token ids, other vectors. Rounded
    to 8 decimals (far above those bits, far below the gaps that decide a segmentation) and
    sorted by score then piece, the vocabulary is the same in every process.
    """
    pieces = [(str(piece), round(float(score), 8)) for piece, score in trained]  # type: ignore[arg-type]
    return sorted(pieces, key=lambda entry: (-entry[1], entry[0]))


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
