"""Loading: finding the model, reading the sentence-transformers files, errors, safety."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import polyemb
from polyemb import loading
from polyemb.batching import padded_lengths


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------- what the config says


def test_reads_max_seq_length_from_sentence_bert_config(tiny_encoder: polyemb.Encoder) -> None:
    # The tiny model's tokenizer allows 128 tokens but its sentence_bert_config says 32, as the
    # default model's tokenizer says 512 while its config says 128.
    assert tiny_encoder.max_seq_length == 32
    assert tiny_encoder.dim == 32
    assert not tiny_encoder.normalizes


def test_minilm_settings(minilm_encoder: polyemb.Encoder) -> None:
    assert minilm_encoder.max_seq_length == 256
    assert minilm_encoder.dim == 384
    assert minilm_encoder.normalizes  # its modules.json ends in Normalize


def test_the_pooler_is_not_built(tiny_encoder: polyemb.Encoder, minilm_encoder: polyemb.Encoder) -> None:
    # Mean pooling reads the last hidden states only; XLM-RoBERTa's and BERT's pooler (a dense
    # layer over the first token) would run on every batch and be thrown away.
    for encoder in (tiny_encoder, minilm_encoder):
        model = encoder._model
        assert hasattr(model, "pooler") and model.pooler is None, type(model).__name__
        assert not any("pooler" in name for name, _ in model.named_parameters())


def test_which_classes_are_asked_to_build_no_pooler() -> None:
    from transformers import BertConfig, DistilBertConfig, FunnelConfig, XLMRobertaConfig

    assert loading._takes_pooling_argument(BertConfig())
    assert loading._takes_pooling_argument(XLMRobertaConfig())
    # DistilBERT has no pooler and its class takes no such argument: passing one would fail
    # (DeBERTa-v2, another such class, loads end to end in test_parity). Funnel maps to two
    # classes.
    assert not loading._takes_pooling_argument(DistilBertConfig())
    assert loading._model_class(FunnelConfig()) is None
    assert not loading._takes_pooling_argument(FunnelConfig())


def test_max_seq_length_override_and_limit(tiny_model_dir: Path) -> None:
    assert polyemb.load(tiny_model_dir, max_seq_length=16).max_seq_length == 16
    assert polyemb.load(tiny_model_dir, max_seq_length=128).max_seq_length == 128
    with pytest.raises(polyemb.InvalidInputError, match="exceeds"):
        polyemb.load(tiny_model_dir, max_seq_length=129)
    with pytest.raises(polyemb.InvalidInputError, match="max_seq_length"):
        polyemb.load(tiny_model_dir, max_seq_length=0)


def test_a_roberta_like_model_reads_no_more_tokens_than_its_positions_hold(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # With no tokenizer or sentence-transformers limit, the config's 130 positions less
    # XLM-RoBERTa's padding offset (pad_token_id + 1 = 2) are the limit: 129 or 130 tokens index
    # past the position table (a raw torch error on any long text).
    folder = copy_model(tiny_model_dir, tmp_path / "no-limits")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("model_max_length", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    sentence_config = json.loads((folder / "sentence_bert_config.json").read_text())
    sentence_config.pop("max_seq_length", None)
    (folder / "sentence_bert_config.json").write_text(json.dumps(sentence_config))
    encoder = polyemb.load(folder)
    assert encoder.max_seq_length == 128
    assert encoder.encode(["a long text " * 200]).shape == (1, 32)
    with pytest.raises(polyemb.InvalidInputError, match="exceeds what this model takes \\(128 tokens\\)"):
        polyemb.load(folder, max_seq_length=129)


def test_without_modules_json_is_plain_mean_pooling(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "plain")
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    shutil.rmtree(folder / "1_Pooling")
    encoder = polyemb.load(folder)
    assert encoder.max_seq_length == 128  # the tokenizer's own limit
    reference = polyemb.load(tiny_model_dir, max_seq_length=128)
    texts = ["plain transformers folder", "mean pooling all the same"]
    np.testing.assert_allclose(encoder.encode(texts), reference.encode(texts), atol=1e-6)


def test_the_tiny_model_is_the_same_in_every_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Tests in different processes (and users' fixtures) must see one model: the tokenizer's
    # trainer orders and scores its pieces differently from run to run, and other token ids
    # would mean other vectors. Three fresh processes build it; every file matches this one's.
    build = "import sys; from polyemb.testing import build_tiny_model; build_tiny_model(sys.argv[1])"
    folders = [tmp_path / f"run{i}" for i in range(3)]
    workers = [subprocess.Popen([sys.executable, "-c", build, str(folder)]) for folder in folders]
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0, 0]
    expected = _files(tiny_model_dir)
    assert Path("tokenizer.json") in expected and Path("model.safetensors") in expected
    for folder in folders:
        assert _files(folder) == expected, folder


def _files(folder: Path) -> dict[Path, bytes]:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_normalize_module_makes_unit_vectors(tmp_path: Path) -> None:
    from polyemb.testing import build_tiny_model

    encoder = polyemb.load(build_tiny_model(tmp_path / "norm", normalize=True))
    assert encoder.normalizes
    vectors = encoder.encode(["one", "two words"], normalize=False)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_do_lower_case_lowercases(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "lower")
    edit_json(folder / "sentence_bert_config.json", do_lower_case=True)
    lower = polyemb.load(folder)
    plain = polyemb.load(tiny_model_dir)
    np.testing.assert_allclose(
        lower.encode(["The CAT Sits"]), plain.encode(["the cat sits"]), rtol=0, atol=1e-6
    )
    assert not np.allclose(plain.encode(["The CAT Sits"]), plain.encode(["the cat sits"]), atol=1e-3)


@pytest.mark.parametrize(
    "pooling",
    [
        {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
        {"pooling_mode": "lasttoken"},
    ],
)
def test_unsupported_pooling_is_an_error(
    tiny_model_dir: Path, tmp_path: Path, pooling: dict[str, object]
) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "pool")
    edit_json(folder / "1_Pooling" / "config.json", **pooling)
    with pytest.raises(polyemb.UnsupportedModelError, match="mean pooling only"):
        polyemb.load(folder)


def test_new_style_pooling_config_is_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "newpool")
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True})
    )
    assert polyemb.load(folder).dim == 32


def test_extra_module_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "dense")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(polyemb.UnsupportedModelError, match="Dense"):
        polyemb.load(folder)


def test_pooling_dimension_must_match(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "dim")
    edit_json(folder / "1_Pooling" / "config.json", word_embedding_dimension=64)
    with pytest.raises(polyemb.ModelLoadError, match="dimension 64"):
        polyemb.load(folder)


# ----------------------------------------------------------------- finding the model


def test_missing_folder_says_how_to_point_at_a_local_model(tmp_path: Path) -> None:
    with pytest.raises(polyemb.ModelNotFoundError, match="POLYEMB_MODEL") as info:
        polyemb.load(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    assert "--model" in str(info.value)


def test_env_var_chooses_the_model(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYEMB_MODEL", str(tiny_model_dir))
    assert polyemb.load().model_id == str(tiny_model_dir)


def test_default_model_offline_fails_fast_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("POLYEMB_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(polyemb.ModelNotFoundError, match="offline mode") as info:
        polyemb.load()
    assert time.perf_counter() - started < 10  # a hang guard, not a speed target
    assert polyemb.DEFAULT_MODEL in str(info.value)
    assert "POLYEMB_MODEL" in str(info.value)


def test_unreachable_hub_fails_fast_with_hint(tmp_path: Path) -> None:
    # A fresh interpreter whose hub endpoint refuses connections: the real network code runs.
    # Both offline switches are set here, whatever the caller's shell has (offline clusters
    # often export TRANSFORMERS_OFFLINE=1, which polyemb honours too).
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_CACHE": str(tmp_path),
        "POLYEMB_MODEL": "",
    }
    code = (
        "import polyemb\n"
        "try:\n"
        "    polyemb.load('someone/some-model')\n"
        "except polyemb.ModelNotFoundError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.perf_counter() - started
    assert "ERROR model 'someone/some-model'" in result.stdout, result.stderr
    assert "not reachable" in result.stdout
    assert "--model /path/to/model" in result.stdout
    assert elapsed < 60  # a hang guard: the hub client must not retry for minutes


def test_hub_id_resolves_from_the_local_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lay the tiny model out as huggingface_hub caches a download: snapshots/<commit>/ + refs/main.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    encoder = polyemb.load("acme/tiny", local_files_only=True)
    assert encoder.model_id == "acme/tiny"
    assert encoder.revision == commit
    assert encoder.provenance == f"acme/tiny@{commit}"


def test_fingerprint_follows_content(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = copy_model(tiny_model_dir, tmp_path / "copy")
    original = polyemb.load(tiny_model_dir)
    same = polyemb.load(copy)
    assert original.fingerprint == same.fingerprint
    assert original.fingerprint.startswith("sha256:")
    assert same.provenance == f"{copy}@{same.fingerprint}"
    edit_json(copy / "sentence_bert_config.json", max_seq_length=16)
    assert polyemb.load(copy).fingerprint != original.fingerprint


# ----------------------------------------------------------------- broken or hostile folders


def test_corrupt_weights_name_the_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(polyemb.ModelLoadError, match="model.safetensors"):
        polyemb.load(folder)


def test_missing_weights_is_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(polyemb.ModelLoadError, match="no model.safetensors or pytorch_model.bin"):
        polyemb.load(folder)


def test_missing_tokenizer_names_the_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(polyemb.ModelLoadError, match="tokenizer"):
        polyemb.load(folder)


def test_wrong_shape_config_is_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "shape")
    edit_json(folder / "config.json", hidden_size=48, num_attention_heads=4)
    # The configs are checked against each other before any weights are read.
    with pytest.raises(polyemb.ModelLoadError, match="dimension 32, but the transformer's hidden size is 48"):
        polyemb.load(folder)
    edit_json(folder / "1_Pooling" / "config.json", word_embedding_dimension=48)
    with pytest.raises(polyemb.ModelLoadError, match="model.safetensors"):
        polyemb.load(folder)


def test_pickle_weights_load_without_running_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "pickle")
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    texts = ["pickled weights", "same vectors"]
    np.testing.assert_allclose(
        polyemb.load(folder).encode(texts), polyemb.load(tiny_model_dir).encode(texts), rtol=0, atol=1e-6
    )


class _Payload:
    """Unpickling this would create a file: proof that code from the weights ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "evil")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": _Payload(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(polyemb.ModelLoadError, match="pytorch_model.bin"):
        polyemb.load(folder)
    assert not marker.exists()


def test_remote_code_is_never_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "remote")
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    edit_json(
        folder / "config.json", auto_map={"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    )
    try:
        polyemb.load(folder)
    except polyemb.PolyembError:
        pass  # refusing is fine; running the code is not
    assert not marker.exists()


# ----------------------------------------------------------------- devices and precision


def test_device_and_precision_errors(tiny_model_dir: Path) -> None:
    with pytest.raises(polyemb.InvalidInputError, match="precision"):
        polyemb.load(tiny_model_dir, precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="device"):
        polyemb.load(tiny_model_dir, device="tpu9")
    for elsewhere in ("meta", "xla"):  # torch devices polyemb does not run on (a RuntimeError later)
        with pytest.raises(polyemb.InvalidInputError, match="not one polyemb runs on"):
            polyemb.load(tiny_model_dir, device=elsewhere)
    if not torch.cuda.is_available():
        with pytest.raises(polyemb.InvalidInputError, match="no CUDA"):
            polyemb.load(tiny_model_dir, device="cuda")


def test_auto_device_on_this_machine() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert loading.resolve_device("auto").type == expected
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_bf16_on_cpu_pools_in_float32(tiny_model_dir: Path) -> None:
    encoder = polyemb.load(tiny_model_dir, precision="bf16")
    assert encoder.dtype == torch.bfloat16
    vectors = encoder.encode(["bfloat16 weights", "float32 output"])
    assert vectors.dtype == np.float32
    full = polyemb.load(tiny_model_dir).encode(["bfloat16 weights", "float32 output"])
    cos = (vectors * full).sum(1)
    assert cos.min() > 0.97


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "none"])
def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_slow(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, units: bool
) -> None:
    monkeypatch.setattr(polyemb.loading, "has_bf16_units", lambda flags=None: units)
    with caplog.at_level(logging.WARNING, logger="polyemb"):
        encoder = polyemb.load(tiny_model_dir, precision="bf16")
        polyemb.load(tiny_model_dir, precision="fp32")
    warned = [r.getMessage() for r in caplog.records if "bfloat16 units" in r.getMessage()]
    assert encoder.dtype == torch.bfloat16  # loaded as asked, only slower
    assert len(warned) == (0 if units else 1)  # for bf16 only, where the CPU lacks the units
    assert all("far slower than fp32" in w and "use 'fp32'" in w for w in warned)


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_cpu_batches_padded_to_the_multiple_of_their_precision(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, amx: bool
) -> None:
    """Few batch shapes: oneDNN builds and keeps a primitive per shape (batching.PADDED)."""
    import polyemb._platform

    flags = frozenset({"avx512f", "amx_bf16"} if amx else {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(polyemb._platform, "cpu_flags", lambda: flags)
    texts = [" ".join(["of"] * n) for n in (1, 2, 3, 4, 5, 7, 9)]  # 5 to 29 tokens
    widths: dict[str, set[int]] = {}
    vectors = {}
    for precision in ("int8", "fp32", "bf16"):
        encoder = polyemb.load(tiny_model_dir, precision=precision)
        seen = widths.setdefault(precision, set())
        encoder._model.register_forward_pre_hook(
            lambda _module, args, kwargs, seen=seen: seen.add(kwargs["input_ids"].shape[1]),
            with_kwargs=True,
        )
        vectors[precision] = encoder.encode(texts, batch_size=1)
    lengths = widths["int8"]  # int8 pads to the longest row only: each text's own length
    assert len(lengths) == len(texts) and max(lengths) > 16
    limit = encoder.max_seq_length
    for precision, multiple in (("fp32", 8), ("bf16", 1)):
        expected = padded_lengths(np.array(sorted(lengths)), multiple if amx else 1, limit)
        assert widths[precision] == set(expected.tolist()), precision
    # bf16 by eighths on every CPU: only lengths past 16 move, by less than an eighth.
    assert widths["bf16"] != lengths and {n for n in lengths if n <= 16} <= widths["bf16"]
    if amx:  # fp32 to multiples of 8
        assert widths["fp32"] == {min(limit, -(-n // 8) * 8) for n in lengths}
        assert len(widths["fp32"]) > 1 and widths["fp32"] != widths["bf16"]
    else:
        assert widths["fp32"] == widths["bf16"]
    # Padding is masked: fp32 is the unpadded forward pass within float rounding.
    monkeypatch.setattr(polyemb.encoder, "pad_multiple", lambda device_type, precision: None)
    unpadded = polyemb.load(tiny_model_dir, precision="fp32").encode(texts, batch_size=1)
    assert np.abs(unpadded - vectors["fp32"]).max() < 1e-5
    assert (vectors["bf16"] * vectors["fp32"]).sum(1).min() > 0.97


def test_tokenizer_larger_than_the_embedding_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy_model(tiny_model_dir, tmp_path / "vocab")
    state = load_file(folder / "model.safetensors")
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    state[key] = state[key][:100].clone()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    edit_json(folder / "config.json", vocab_size=100)
    with pytest.raises(polyemb.ModelLoadError, match="do not belong together"):
        polyemb.load(folder)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoder_names_its_precision(tiny_model_dir: Path, precision: str) -> None:
    encoder = polyemb.load(tiny_model_dir, device="cpu", precision=precision)  # type: ignore[arg-type]
    assert encoder.precision == precision
