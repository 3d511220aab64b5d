"""Where and in what precision inference runs: ``--device`` and ``--dtype`` checked against this machine.

A device that is not here (``cuda`` without CUDA, ``cuda:7`` with one GPU, ``mps`` off Apple silicon, a
misspelt name) is one ``UserError`` line, said before any model loads.
"""

from __future__ import annotations

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_KINDS = "cpu, cuda, cuda:N or mps"


def default_device() -> torch.device:
    """cuda when available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists on this machine (None: ``default_device``)."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{device}'; give {DEVICE_KINDS}") from None
    kind = resolved.type
    if kind == "cpu":
        return resolved
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}': CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise UserError(f"device '{device}': this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
        return resolved
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device '{device}': MPS (Apple silicon) is not available on this machine; "
                            f"use --device cpu")
        return resolved
    raise UserError(f"device '{device}' is not supported; give {DEVICE_KINDS}")


def dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """The name (float32, bfloat16, float16) of ``dtype``, given as a name or a torch dtype; None stays
    None (the run's own)."""
    if dtype is None:
        return None
    for name, torch_dtype in DTYPES.items():
        if dtype in (name, torch_dtype):
            return name
    raise UserError(f"unknown dtype '{dtype}'; give one of {', '.join(DTYPES)}")
