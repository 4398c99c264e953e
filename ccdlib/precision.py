"""Arithmetic precision (issue 23): the value ``"auto"`` of ``teacher.dtype`` and ``student.head_dtype``.

``"auto"`` resolves, when the teacher or the trainer is built, to ``"bfloat16"`` where the device runs bfloat16
natively and to ``"float32"`` elsewhere; ``"float32"`` and ``"bfloat16"`` are kept as given. Native bfloat16:

- a CUDA device for which ``torch.cuda.is_bf16_supported()`` holds (without emulation: compute capability 8.0+);
- a CPU whose ``/proc/cpuinfo`` flags include ``avx512_bf16`` or ``amx_bf16`` (on other CPUs bfloat16 is emulated
  and slower than float32; benchmarks/README);
- nothing else (MPS, a system without ``/proc/cpuinfo``): float32.

The resolved value is what the teacher's cache keys and the run's ``result.json`` (``info.precision``) record, so a
run with ``"auto"`` that resolves to bfloat16 reuses the cache entries of an explicit ``"bfloat16"``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "CPUINFO", "BF16_CPU_FLAGS", "cpu_bf16_flags", "bfloat16_support", "resolve_precision"]

#: The values ``teacher.dtype`` and ``student.head_dtype`` accept.
PRECISIONS = ("auto", "float32", "bfloat16")
#: Where the CPU's flags are read (tests point it at a file of their own).
CPUINFO = "/proc/cpuinfo"
#: CPU flags that mean native bfloat16 arithmetic (AVX512-BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=8)
def _cpu_flags(path: str) -> frozenset[str]:
    """The words of every ``flags`` line of ``path`` (x86 ``/proc/cpuinfo``); empty when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_flags(path: str | Path | None = None) -> list[str]:
    """The bfloat16 flags of :data:`BF16_CPU_FLAGS` the CPU reports in ``path`` (default :data:`CPUINFO`)."""
    flags = _cpu_flags(str(path if path is not None else CPUINFO))
    return [f for f in BF16_CPU_FLAGS if f in flags]


def _cuda_bf16(device: torch.device) -> bool:
    import contextlib
    ctx = torch.cuda.device(device.index) if device.index is not None else contextlib.nullcontext()
    with ctx:
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:   # an older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())


def bfloat16_support(device: str | torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bfloat16 natively, and why (``"CPU flag avx512_bf16"``, ``"CUDA bfloat16"``, ...)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = _cuda_bf16(device)
        return ok, "CUDA bfloat16" if ok else "no native bfloat16 on this GPU"
    if device.type == "cpu":
        found = cpu_bf16_flags()
        return (True, "CPU flag " + "+".join(found)) if found else (False, "no avx512_bf16/amx_bf16 CPU flag")
    return False, f"no bfloat16 detection for {device.type}"


def resolve_precision(value: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`bfloat16_support` holds on ``device``, else ``"float32"``; an
    explicit ``"float32"`` or ``"bfloat16"`` is returned as given."""
    if value != "auto":
        return value
    return "bfloat16" if bfloat16_support(device)[0] else "float32"
