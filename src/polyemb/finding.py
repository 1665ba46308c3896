"""Finding a model: an id or a folder -> its local files, and the id of their content.

A folder is used as it is; a hub id is downloaded (or read from the Hugging Face cache when
offline). :func:`fingerprint` names exactly the files :func:`model_files` lists, which are
what Spark ships. Reading what the files say is :mod:`polyemb.loading`'s.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from polyemb.errors import InvalidInputError, ModelLoadError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "ContentHash",
    "WEIGHT_FILES",
    "ModelFiles",
    "find_model",
    "first_line",
    "fingerprint",
    "model_files",
]

DEFAULT_MODEL = "AIDA-UPM/mstsb-paraphrase-multilingual-mpnet-base-v2"
MODEL_ENV = "POLYEMB_MODEL"

# Files a text-embedding model needs from a hub repository (weights are chosen separately).
_HUB_PATTERNS = [
    "config.json",
    "modules.json",
    "sentence_*_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "*Pooling/config.json",
]
WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]
_HINT = (
    "Point polyemb at a local model folder instead: polyemb.load('/path/to/model'), "
    "`--model /path/to/model` on the command line, or the environment variable "
    f"{MODEL_ENV}=/path/to/model. Any sentence-transformers folder works (one with config.json, "
    "tokenizer.json and weights), e.g. one saved by SentenceTransformer.save() on a machine "
    "that reaches the hub."
)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are, and which model they are."""

    model_id: str
    folder: Path
    revision: str | None  # the hub commit, None for a local folder


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (flag or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")
    )


def find_model(
    model: str | os.PathLike[str] | None,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> ModelFiles:
    """Turn a model argument into a local folder, downloading from the hub when allowed.

    Args:
        model: A local folder, a hub id, or None for ``$POLYEMB_MODEL`` or the default model.
        revision: Hub branch, tag or commit (``refs/pr/3`` works); ignored for folders.
        local_files_only: Never touch the network. None follows ``HF_HUB_OFFLINE``.

    Returns:
        The model's id, local folder and hub commit.

    Raises:
        ModelNotFoundError: The folder does not exist, or the hub id is neither cached nor
            downloadable. The message says how to point at a local folder.
    """
    if model is None:
        model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    model_id = os.fspath(model)
    if not model_id.strip():
        raise InvalidInputError("model is an empty string; give a hub id or a folder path")
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return ModelFiles(model_id=model_id, folder=folder.resolve(), revision=None)
    if folder.exists():
        raise ModelNotFoundError(f"model {model_id!r} is a file, not a folder. {_HINT}")
    if _looks_like_path(model_id):
        raise ModelNotFoundError(f"model folder {model_id!r} does not exist. {_HINT}")
    offline = _offline() if local_files_only is None else local_files_only
    return _from_hub(model_id, revision, offline)


def _from_hub(repo_id: str, revision: str | None, offline: bool) -> ModelFiles:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if offline:
        problem = "offline mode is on (HF_HUB_OFFLINE or local_files_only)"
    else:
        try:
            # One metadata request, no retries: an unreachable hub fails in well under a second.
            info = HfApi().model_info(repo_id, revision=revision)
        except GatedRepoError as exc:
            raise ModelNotFoundError(
                f"model {repo_id!r} is gated on the hub: accept its terms and log in "
                f"(`hf auth login`), or download it elsewhere. {_HINT}"
            ) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            where = f" at revision {revision!r}" if revision else ""
            raise ModelNotFoundError(
                f"model {repo_id!r}{where} is not on the Hugging Face Hub. {_HINT}"
            ) from exc
        except Exception as exc:  # any transport error (httpx, ssl, socket) means "unreachable"
            problem = f"the hub is not reachable ({type(exc).__name__}: {first_line(exc)})"
        else:
            files = [sibling.rfilename for sibling in info.siblings or []]
            patterns = _HUB_PATTERNS + _weight_patterns(repo_id, files)
            path = snapshot_download(repo_id, revision=info.sha or revision, allow_patterns=patterns)
            return _hub_files(repo_id, Path(path))
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder, not in the Hugging Face cache, and {problem}. {_HINT}"
        ) from exc
    return _hub_files(repo_id, Path(path))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (for one-line errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _weight_patterns(repo_id: str, files: list[str]) -> list[str]:
    top = set(files)
    for name in WEIGHT_FILES:
        if name in top:
            return [name]
        if f"{name}.index.json" in top:
            stem = name.split(".")[0]
            return [f"{name}.index.json", f"{stem}-*"]
    raise ModelLoadError(
        f"the hub repository {repo_id!r} has no model.safetensors or pytorch_model.bin at its "
        f"top level; found: {sorted(f for f in files if '/' not in f)}"
    )


def _hub_files(repo_id: str, folder: Path) -> ModelFiles:
    # A hub snapshot folder is named by its commit hash: the exact revision that was loaded.
    return ModelFiles(model_id=repo_id, folder=folder, revision=folder.name)


# What of a model folder determines its vectors: configs, tokenizer files and weights. The
# fingerprint hashes exactly these files and Spark ships exactly these, so a worker never loads
# a file that the fingerprint did not see.
_CONTENT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt")


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that make its vectors, in path order."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix in _CONTENT_SUFFIXES and path.name != "README.md" and path.is_file()
    )


class ContentHash:
    """The sha256 id of a model's files, fed file by file: what :func:`fingerprint` gives a folder.

    For code that reads the files anyway (Spark ships them), so that the id is of the bytes it read.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, relative: str, data: bytes = b"") -> None:
        """Start the next file (its path relative to the model folder), with its first bytes."""
        self._digest.update(relative.encode())
        self._digest.update(data)

    def update(self, data: bytes) -> None:
        """More bytes of the current file."""
        self._digest.update(data)

    def value(self) -> str:
        """``sha256:`` and 16 hex digits."""
        return "sha256:" + self._digest.hexdigest()[:16]


def fingerprint(files: ModelFiles) -> str:
    """A short id of the model's exact content: the hub commit, else a sha256 of its files."""
    if files.revision:
        return files.revision
    digest = ContentHash()
    for path in model_files(files.folder):
        digest.add(path.relative_to(files.folder).as_posix())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.value()
