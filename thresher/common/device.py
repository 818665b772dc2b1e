"""Which torch device a `device:` setting means (one rule for scorers, selectors, trainers),
and whether this CPU runs bf16 natively (`cpu_bf16_autocast: auto`)."""

from __future__ import annotations

import os
from typing import Any


class DeviceError(RuntimeError):
    """A device setting that cannot be used here (bad name, or no such GPU)."""


def resolve_device(device: str | None = "auto") -> Any:
    """`auto` (first GPU when one is present, else CPU), `cpu`, `cuda` or `cuda:N` -> torch.device.

    `cuda` means `cuda:0`; asking for a GPU that torch does not see is an error, never a
    silent fall-back to the CPU."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU (use 'auto' or 'cpu')")
        try:
            index = 0 if name == "cuda" else int(name.split(":", 1)[1])
        except ValueError:
            raise DeviceError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N")


# -- CPU bf16 -----------------------------------------------------------------------------------
CPU_BF16_ENV = "THRESHER_CPU_BF16"  # 1/0 overrides the detection (tests; a CPU that lies)
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_from_cpuinfo(text: str) -> bool:
    """Whether a /proc/cpuinfo text names a CPU that runs bf16 natively.

    x86: `avx512_bf16` or `amx_bf16` in a `flags` line; aarch64: `bf16` in a `Features`
    line. Anything else (AVX2-only x86, an older Arm core): False."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, words = key.strip().lower(), set(value.split())
        if key == "flags" and any(f in words for f in _X86_BF16_FLAGS):
            return True
        if key == "features" and "bf16" in words:
            return True
    return False


_NATIVE_BF16: bool | None = None


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 natively (checked once per process; see `native_bf16_from_cpuinfo`).

    On such CPUs bf16 autocast is about 2x faster than fp32; on an AVX2-only CPU it is
    emulated and costs several times the fp32 time. `THRESHER_CPU_BF16=1` / `0` overrides
    the check (read on every call, so tests can set it)."""
    global _NATIVE_BF16
    env = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if env in {"1", "true", "yes", "on"}:
        return True
    if env in {"0", "false", "no", "off"}:
        return False
    if _NATIVE_BF16 is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                _NATIVE_BF16 = native_bf16_from_cpuinfo(fh.read())
        except OSError:  # not Linux: no cheap, reliable check, so no autocast
            _NATIVE_BF16 = False
    return _NATIVE_BF16


def resolve_cpu_bf16_autocast(setting: bool | str | None) -> bool:
    """A `cpu_bf16_autocast` setting (`auto` | true | false) -> whether to autocast on CPU.

    `auto` (and None): only where the CPU runs bf16 natively (`cpu_has_native_bf16`)."""
    if isinstance(setting, bool):
        return setting
    if setting is None or str(setting).strip().lower() == "auto":
        return cpu_has_native_bf16()
    raise DeviceError(f"bad cpu_bf16_autocast {setting!r}; use auto, true or false")
