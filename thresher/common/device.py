"""Which torch device a `device:` setting means (one rule for scorers, selectors, trainers)."""

from __future__ import annotations

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
