"""A child program of ``polyemb bench``: one sentence-transformers backend, timed where it runs.

It runs in the peer Python (sentence-transformers with its onnx / openvino extras, and no
polyemb), started by its path: ``python _peer_child.py MODEL_FOLDER BACKEND PRECISION``.

stdin: one JSON line of calibration texts, then one JSON line per request ``{"texts", "out"}``.
stdout: one JSON line per answer: the versions once the model is ready, then per request
``{"seconds", "peak_mib"}`` with the vectors saved to ``out`` (.npy). Everything the libraries
print goes to stderr. Nothing here may import polyemb.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import IO, Any, Literal

import numpy as np

# The backends sentence-transformers takes, by the names the parent passes.
_BACKENDS: dict[str, Literal["onnx", "openvino"]] = {"onnx": "onnx", "openvino": "openvino"}
# Texts per calibration batch of the OpenVINO int8 export.
_CALIBRATION_BATCH = 32


# The next two read /proc as polyemb._platform does; the peer Python has no polyemb to import.
def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _load(folder: str, backend_name: str, precision: str, calibration: list[str], work: str) -> Any:
    """The model on a backend, exported to int8 if asked, from a copy of ``folder`` in ``work``."""
    from sentence_transformers import SentenceTransformer

    backend = _BACKENDS[backend_name]
    copy = os.path.join(work, "model")
    shutil.copytree(folder, copy)  # exports are written into the copy, never into the user's folder
    model = SentenceTransformer(copy, backend=backend, device="cpu")
    if precision != "int8":
        return model
    if backend == "onnx":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(model, "avx512_vnni", copy)
        file_name = "onnx/model_qint8_avx512_vnni.onnx"
    else:
        _quantize_openvino(model, calibration, copy)
        file_name = "openvino/openvino_model_qint8.xml"
    return SentenceTransformer(copy, backend=backend, device="cpu", model_kwargs={"file_name": file_name})


def _quantize_openvino(model: Any, calibration: list[str], copy: str) -> None:
    """Static int8 as sentence-transformers' ``export_static_quantized_openvino_model`` makes it.

    NNCF, as there, but calibrated on the texts given here: its own calibration set comes from
    the hub.
    """
    import nncf
    import openvino

    ov = model.transformers_model
    batches = []
    for start in range(0, len(calibration), _CALIBRATION_BATCH):
        tokens = model.tokenizer(
            calibration[start : start + _CALIBRATION_BATCH],
            padding=True,
            truncation=True,
            max_length=model.max_seq_length,
            return_tensors="np",
        )
        batches.append({name: tokens[name] for name in ov.input_names if name in tokens})
    quantized = nncf.quantize(
        ov.model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )
    openvino.save_model(quantized, os.path.join(copy, "openvino", "openvino_model_qint8.xml"))


def _answer(answers: IO[str], value: dict[str, Any]) -> None:
    answers.write(json.dumps(value) + "\n")
    answers.flush()


def _computes_in(model: Any, precision: str) -> str:
    """The precision the backend computes in: OpenVINO picks bf16 on CPUs with bf16 units by itself."""
    request: Any = getattr(getattr(model[0], "auto_model", None), "request", None)
    if precision == "int8" or not hasattr(request, "get_property"):
        return precision
    try:
        hint = request.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # a diagnostic: an OpenVINO without the property keeps the asked precision
        return precision
    return {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}.get(hint, precision)


def _serve(model: Any, answers: IO[str]) -> None:
    """Encode each request of stdin, timing the encoding alone."""
    for line in sys.stdin:
        request = json.loads(line)
        _reset_peak()
        started = time.perf_counter()
        vectors = model.encode(request["texts"], convert_to_numpy=True, normalize_embeddings=True)
        seconds = time.perf_counter() - started
        np.save(request["out"], np.asarray(vectors, dtype=np.float32))
        _answer(answers, {"seconds": seconds, "peak_mib": _peak_mib()})


def main(argv: list[str]) -> int:
    """Load, answer with the versions, then serve requests until stdin closes."""
    folder, backend, precision = argv
    # Started by its path, Python put this folder first on sys.path, where the bench's own
    # modules (store.py, memory.py, ...) would shadow any top-level module of those names.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    # The answers keep the real stdout; what the libraries print joins stderr, the parent's log.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    calibration = json.loads(sys.stdin.readline())
    import sentence_transformers

    work = tempfile.mkdtemp(prefix="polyemb-peer-")
    try:
        model = _load(folder, backend, precision, calibration, work)
        _answer(
            answers,
            {
                "sentence_transformers": sentence_transformers.__version__,
                "computes_in": _computes_in(model, precision),
            },
        )
        _serve(model, answers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
