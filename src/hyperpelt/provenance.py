"""Where a result comes from: the code, the machine and the day, so that a report can name them.

Float results differ between CPUs (oneDNN picks other kernels where AVX512-BF16 or AMX are present) and
with the thread count, so a run keeps the CPU model, its bf16 units and its torch threads beside the commit.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from functools import cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def code_version() -> str:
    """The commit the library runs from (``git describe --always --dirty``) when it runs from a git
    checkout, else its package version: results.json keeps it, so a report can name what made its runs.
    Asked once per process, so a process that trains many runs names the code it loaded for each."""
    from . import __version__

    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                                   cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        described = None
    if described is not None and described.returncode == 0 and described.stdout.strip():
        return f"git {described.stdout.strip()}"
    return f"hyperpelt {__version__}"


@cache
def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform says)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


@cache
def bf16_units() -> list[str]:
    """The CPU's bfloat16 instruction sets among ``BF16_FLAGS`` (empty where there are none or unknown)."""
    info = Path("/proc/cpuinfo")
    flags = next((line.split(":", 1)[1].split() for line in
                  (info.read_text().splitlines() if info.exists() else []) if line.startswith("flags")), [])
    return [flag for flag in BF16_FLAGS if flag in flags]


def describe_bf16(units: list[str]) -> str:
    """'AVX512-BF16/AMX-BF16', or 'no bf16 units'."""
    return "/".join(u.upper().replace("_", "-") for u in units) or "no bf16 units"


def machine() -> dict:
    """The facts of this machine that move float results: CPU model and count, bf16 units, torch threads
    and version."""
    import torch

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "bf16_units": bf16_units(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def describe_machine(facts: dict) -> str:
    """One line for a report: 'Intel(R) Xeon(R) Processor (2 CPUs, AMX/AVX512-BF16), 2 torch threads'."""
    return (f"{facts.get('cpu', 'unknown CPU')} ({facts.get('cpus', '?')} CPUs, "
            f"{describe_bf16(facts.get('bf16_units', []))}), "
            f"{facts.get('torch_threads', '?')} torch threads, torch {facts.get('torch', '?')}")


def today() -> str:
    return time.strftime("%Y-%m-%d")
