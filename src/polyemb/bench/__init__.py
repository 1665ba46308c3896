"""The benchmark commands ``polyemb bench``, ``bench-memory``, ``bench-store`` and ``bench-join``.

Each command's module, and the child programs they start:

- :mod:`~polyemb.bench.texts`: the input texts and scenarios.
- :mod:`~polyemb.bench.encode`: timing sides in turns, and the report (``bench``); the sides
  themselves in :mod:`~polyemb.bench.sides`.
- :mod:`~polyemb.bench.memory`: each precision in a process of its own (``bench-memory``).
- :mod:`~polyemb.bench.store`: the vector store's re-runs and lookups (``bench-store``).
- :mod:`~polyemb.bench.join`: retrieval and semantic joins (``bench-join``).
- ``_peer_child``, ``_footprint_child``, ``_lookup_child``: the programs of other processes.

The names below are imported on first use: the child programs run as
``python -m polyemb.bench._...``, which imports this package first, and
``bench-memory`` measures a child's memory before polyemb loads anything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyemb._platform import cpu_description
    from polyemb.bench.encode import Measured, ScenarioResult, SideResult, run_bench
    from polyemb.bench.texts import SCENARIOS, load_texts, make_scenario, scenario_texts

__all__ = [
    "SCENARIOS",
    "Measured",
    "ScenarioResult",
    "SideResult",
    "cpu_description",
    "load_texts",
    "make_scenario",
    "run_bench",
    "scenario_texts",
]

# Public name -> the module that defines it.
_LAZY = {
    "SCENARIOS": "polyemb.bench.texts",
    "Measured": "polyemb.bench.encode",
    "ScenarioResult": "polyemb.bench.encode",
    "SideResult": "polyemb.bench.encode",
    "cpu_description": "polyemb._platform",
    "load_texts": "polyemb.bench.texts",
    "make_scenario": "polyemb.bench.texts",
    "run_bench": "polyemb.bench.encode",
    "scenario_texts": "polyemb.bench.texts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polyemb.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
