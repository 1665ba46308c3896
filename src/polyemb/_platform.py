"""What this machine is: its CPU (model, flags, the CPUs this process may use) and memory figures.

Also the C heap's settings: :func:`keep_heap_between_batches`, which stops glibc from handing
memory back to the system between one batch and the next, and :func:`release_free_memory`, which
hands the free pages back after a call.

Standard library only, and no torch: the pytest header, the benchmarks' child processes and the
int8 check all read it, and a child that measures memory must not pay for an import it does not
need. Every reader here reads Linux's ``/proc`` and ``/sys``; elsewhere it says so by giving an
empty or unknown answer, never by raising.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "available_cpus",
    "cpu_description",
    "cpu_flags",
    "cpuinfo_field",
    "hardware_flags",
    "has_bf16_units",
    "keep_heap_between_batches",
    "onednn_cap",
    "process_mib",
    "release_free_memory",
    "reset_peak_memory",
]

# CPU flags that decide which precisions are fast: bf16 and int8 matrix units, wide vectors.
_SPEED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
# The variables that cap the instruction sets torch's oneDNN kernels use, as oneDNN reads them
# (the first set wins), and per cap the prefixes of the CPU flags above it. A kernel asked for
# what the cap leaves out falls back to oneDNN's reference code: under AVX2_VNNI on an Intel
# Xeon with AMX, an int8 product with a bf16 output (chosen from the avx512_bf16 flag) took
# 7.7 s for 1,980 x 384 x 384, and under AVX2 8-bit weights saturated (the int8 probe refused
# them). Levels not named here (DEFAULT, the AMX-FP16 ones) leave every flag.
_ONEDNN_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_ABOVE_ONEDNN_CAP: dict[str, tuple[str, ...]] = {
    "SSE41": ("avx2", "avx_vnni", "avx512", "amx"),
    "AVX": ("avx2", "avx_vnni", "avx512", "amx"),
    "AVX2": ("avx_vnni", "avx512", "amx"),
    "AVX2_VNNI": ("avx512", "amx"),
    "AVX2_VNNI_2": ("avx512", "amx"),
    "AVX512_CORE": ("avx_vnni", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx"),
    "AVX512_CORE_VNNI": ("avx_vnni", "avx512_bf16", "avx512_fp16", "amx"),
    "AVX512_CORE_BF16": ("avx_vnni", "avx512_fp16", "amx"),
    "AVX10_1_512": ("amx",),
    "AVX512_CORE_FP16": ("amx",),
    "AVX10_1_512_AMX": ("amx_fp16",),
    "AVX512_CORE_AMX": ("amx_fp16",),
}


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (``{}`` where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":  # the first processor's block is enough: they agree
                break
    except OSError:
        pass
    return fields


def cpuinfo_field(name: str) -> str:
    """A field of the first processor in ``/proc/cpuinfo`` (``"vendor_id"``, ``"cpu MHz"``), else ``""``."""
    return _cpuinfo().get(name, "")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (``avx512_vnni``, ``amx_bf16``, ...) torch's kernels may use; empty if unknown.

    An instruction-set cap for oneDNN in the environment (``ONEDNN_MAX_CPU_ISA=AVX2``, or
    ``DNNL_MAX_CPU_ISA``; see :func:`onednn_cap`) removes the flags above it, so that what
    polyemb chooses from them (int8's weight steps, bf16 activations, AMX's attention) is what
    the kernels can run. The CPU's own flags: :func:`hardware_flags`.
    """
    return _flags_under(onednn_cap())


def hardware_flags() -> frozenset[str]:
    """The CPU's own feature flags, as ``/proc/cpuinfo`` lists them, whatever oneDNN's cap; or empty."""
    return _flags_under("")


@functools.cache
def onednn_cap() -> str:
    """The level the environment caps oneDNN's instruction sets at (``"AVX2"``), upper case.

    ``""`` where none is set, or where the level leaves out none of the flags polyemb reads
    (``DEFAULT``, the AMX-FP16 levels, a name oneDNN does not know). Read once per process, as
    oneDNN reads it once (at its first use): set it before the process starts.
    """
    for variable in _ONEDNN_CAP_VARIABLES:
        value = os.environ.get(variable, "").upper()
        if value:
            return value if value in _ABOVE_ONEDNN_CAP else ""
    return ""


@functools.cache
def _flags_under(cap: str) -> frozenset[str]:
    above = _ABOVE_ONEDNN_CAP.get(cap, ())
    return frozenset(flag for flag in _cpuinfo().get("flags", "").split() if not flag.startswith(above))


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has AMX tiles (``amx_*`` among ``flags``; this CPU's when None)."""
    return any(flag.startswith("amx") for flag in (cpu_flags() if flags is None else flags))


def has_bf16_units(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively: AVX512-BF16 or AMX-BF16 (this CPU's flags when None)."""
    flags = cpu_flags() if flags is None else flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def cpu_description() -> str:
    """The CPU every speed figure was measured on, e.g. ``"AMD EPYC (family 26, model 2), 2 CPUs: ..."``.

    Names the model, family and model numbers (``lscpu`` shows the same), the CPUs this process
    may use, and the flags among ``amx_*``, ``avx512_bf16``, ``avx512_vnni``, ``avx_vnni``,
    ``avx512f`` and ``avx2`` that the CPU has, and oneDNN's cap where it leaves some out (they
    are not shown: :func:`cpu_flags`). Never fails: unknown parts are left out.
    """
    import platform

    fields = _cpuinfo()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    flags = cpu_flags()
    present = [flag for flag in _SPEED_FLAGS if flag in flags]
    amx = "AMX" if has_amx(flags) else "no AMX"
    shown = ", ".join(present) if present else "flags unknown"
    capped = f"; oneDNN capped at {onednn_cap()}" if flags != hardware_flags() else ""
    return f"{name}, {available_cpus()} CPUs: {shown}; {amx}{capped}"


def process_mib(field: str = "VmHWM", pid: int | str = "self") -> float:
    """One memory figure of a process in MiB, from ``/proc/<pid>/status``; NaN where unknown.

    Args:
        field: ``"VmHWM"`` (peak resident memory) or ``"VmRSS"`` (resident now).
        pid: The process; ``"self"`` for this one.
    """
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def reset_peak_memory() -> None:
    """Start this process's peak resident memory (``VmHWM``) afresh, where Linux allows it."""
    # Writing 5 to clear_refs resets the peak to the current resident size.
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where it has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); elsewhere nothing.

    glibc keeps freed blocks of the sizes a forward pass allocates on its heap, and that heap
    grows with every call: all-MiniLM-L6-v2 in bf16 streamed 300,000 texts in calls of 10,000
    to a 1.5 GiB peak, where trimming after each call held the process at about 690 MiB
    (docs/performance.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# mallopt's parameters (glibc's malloc.h) and the values keep_heap_between_batches sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks from this size on are mapped from the system and unmapped when freed (glibc's default
moves between 128 KiB and this same 32 MiB)."""
TRIM_THRESHOLD = 64 << 20
"""Free memory at the heap's top beyond this goes back to the system when a block is freed."""
# Settings that mean the user chose the allocator or its thresholds: then nothing is changed.
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@functools.cache
def keep_heap_between_batches() -> bool:
    """Keep freed activations' memory on the C heap for the next batch (glibc), once per process.

    A forward pass allocates its activations (up to 12 MiB each for all-MiniLM-L6-v2's batches of
    2,048 tokens) and frees them before the next batch. glibc's default thresholds follow the
    sizes freed (blocks are mapped from the system from 128 KiB up to 32 MiB, and the heap's top
    goes back once twice that is free), so with batches of changing shapes many blocks are
    mapped afresh or handed back, and the next batch faults their pages in again: 31,000 to
    78,000 page faults per 1,500 English sentences in int8 (AMD EPYC Zen 4, 2 CPUs), and 9,000 to
    13,000 with the fixed thresholds :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD` set here
    (docs/performance.md has the speed). Peak memory stayed about the same there (578 and 584 MiB);
    after a call of 1,000 texts or more the encoder still hands free pages back
    (:func:`release_free_memory`).

    The settings are the process's: they are left alone where the user chose them
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a
    ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``), where another allocator is preloaded
    (jemalloc, tcmalloc, mimalloc in ``LD_PRELOAD``), where ``POLYEMB_KEEP_HEAP=0``, and off
    glibc. Returns whether they were set.
    """
    if os.environ.get("POLYEMB_KEEP_HEAP", "1").strip() == "0":
        return False
    if any(name in os.environ for name in _USER_MALLOC_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(allocator in preloaded for allocator in _OTHER_ALLOCATORS):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success; a failed second call leaves the first harmlessly in place.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """The C library's ``mallopt`` (glibc), or None off glibc (macOS, musl)."""
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
